rule reflow:
    """A reflow student at one grid point (vanilla or piecewise, +/- window-start term and
    marginal-alignment regularizer)."""
    input:
        params=config_input("reflow"),
        teacher=rules.teacher.output.model,
        couplings=rules.couplings.output[0],
        # equal-time controls only (grid equal_time: true); no function at all without them
        time_of=equal_time_input if EQUAL_TIME else [],
    output:
        model=f"{RESULTS}/students/{{dataset}}/seed~{{seed}}/{{point}}/student.pt",
        metrics=f"{RESULTS}/students/{{dataset}}/seed~{{seed}}/{{point}}/metrics.json",
    log:
        f"{RESULTS}/logs/reflow/{{dataset}}/seed~{{seed}}/{{point}}.log",
    threads: job_threads("reflow")
    resources:
        **slurm_resources("reflow"),
    params:
        runs=RUNS,
        nproc=nproc("reflow"),
        omp=res("reflow", "threads", 1),
        out=f"{RESULTS}/students/{{dataset}}/seed~{{seed}}/{{point}}",  # the outputs' folder
        equal_time=input_option("--time-of", "time_of", bool(EQUAL_TIME)),
    shell:
        job_cmd("reflow") + " --params {input.params} --couplings {input.couplings}"
        " --teacher {input.teacher} --out {params.out} {params.equal_time}"
        " --runs {params.runs}"
        " --job reflow/{wildcards.dataset}/seed~{wildcards.seed}/{wildcards.point}"
