rule couplings:
    """Teacher ODE z -> x with the window-end states of every K in the grid (HDF5)."""
    input:
        params=config_input("couplings"),
        teacher=rules.teacher.output.model,
    output:
        f"{RESULTS}/couplings/{{dataset}}/seed~{{seed}}.h5",
    log:
        f"{RESULTS}/logs/couplings/{{dataset}}/seed~{{seed}}.log",
    threads: job_threads("couplings")
    resources:
        **slurm_resources("couplings"),
    shell:
        job_cmd("couplings") + " --params {input.params} --teacher {input.teacher}"
        " --out {output}"
        " --job couplings/{wildcards.dataset}/seed~{wildcards.seed}"
