rule teacher:
    """Flow-matching teacher, one per dataset and seed."""
    input:
        params=config_input("teacher"),
    output:
        model=f"{RESULTS}/teacher/{{dataset}}/seed~{{seed}}/teacher.pt",
        metrics=f"{RESULTS}/teacher/{{dataset}}/seed~{{seed}}/metrics.json",
    log:
        f"{RESULTS}/logs/teacher/{{dataset}}/seed~{{seed}}.log",
    threads: job_threads("teacher")
    resources:
        **slurm_resources("teacher"),
    shell:
        job_cmd("teacher") + " --params {input.params} --out $(dirname {output.model})"
        " --job teacher/{wildcards.dataset}/seed~{wildcards.seed}"
