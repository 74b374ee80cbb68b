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
        **input_option("--time-of", "time_of", bool(EQUAL_TIME)),
    shell:
        job_cmd("reflow") + " --params {input.params} --couplings {input.couplings}"
        " --teacher {input.teacher} --out $(dirname {output.model})"
        + option_arg("time_of", bool(EQUAL_TIME))
        + " --job reflow/{wildcards.dataset}/seed~{wildcards.seed}/{wildcards.point}"
