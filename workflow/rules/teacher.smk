rule teacher:
    """Flow-matching teacher, one per dataset and seed."""
    input:
        params=config_input("teacher"),
    output:
        model=f"{RESULTS}/teacher/{{dataset}}/seed~{{seed}}/teacher.pt",
        metrics=f"{RESULTS}/teacher/{{dataset}}/seed~{{seed}}/metrics.json",
    log:
        f"{RESULTS}/logs/teacher/{{dataset}}/seed~{{seed}}.log",
    params:
        runs=RUNS,
        out=lambda wc, output: str(Path(output.model).parent),
    conda:
        "../../environment.yml"
    threads: res("teacher", "threads", 1)
    resources:
        **slurm_resources("teacher"),
    shell:
        "OMP_NUM_THREADS={threads} \"$REFLOWMA_PY\" -m reflowma teacher"
        " --params {input.params} --out {params.out}"
        " --runs {params.runs} --job teacher/{wildcards.dataset}/seed~{wildcards.seed} > {log} 2>&1"
