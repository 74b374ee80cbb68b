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
    params:
        runs=RUNS,
        nproc=nproc("teacher"),
        omp=res("teacher", "threads", 1),
        out=lambda wc, output: str(Path(output.model).parent),
    shell:
        job_cmd("teacher") + " --params {input.params} --out {params.out}"
        " --runs {params.runs} --job teacher/{wildcards.dataset}/seed~{wildcards.seed}"
