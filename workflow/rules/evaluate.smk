rule evaluate:
    """Few-step NFE sweep of one student against the teacher and the data."""
    input:
        params=config_input("evaluate"),
        student=rules.reflow.output.model,
        teacher=rules.teacher.output.model,
        couplings=rules.couplings.output[0],
        classifier=classifier_input if USES_CLASSIFIER else [],  # fd_classifier: true only
    output:
        eval=f"{RESULTS}/eval/{{dataset}}/seed~{{seed}}/{{point}}/eval.json",
        # the sample sets the report's figures show (d <= 16; attached to the run record)
        samples=f"{RESULTS}/eval/{{dataset}}/seed~{{seed}}/{{point}}/samples.npz",
    log:
        f"{RESULTS}/logs/evaluate/{{dataset}}/seed~{{seed}}/{{point}}.log",
    threads: job_threads("evaluate", rule_nproc=1)
    resources:
        **slurm_resources("evaluate"),
    params:
        **input_option("--classifier", "classifier", USES_CLASSIFIER),
    shell:
        job_cmd("evaluate", rule_nproc=1) + " --params {input.params} --student {input.student}"
        " --teacher {input.teacher} --couplings {input.couplings}"
        + option_arg("classifier", USES_CLASSIFIER)
        + " --out {output.eval}"
        " --job evaluate/{wildcards.dataset}/seed~{wildcards.seed}/{wildcards.point}"


rule evaluations_seed:
    """Flag: every evaluation of one dataset and seed is done (keeps dry-run lines short)."""
    input:
        lambda wc: seed_evaluations(wc.dataset, int(wc.seed)),
    output:
        touch(f"{RESULTS}/eval/{{dataset}}/seed~{{seed}}/done.flag"),
    localrule: True


rule evaluations:
    """Every evaluation of the grid, through one flag per dataset and seed (the report's
    input; `snakemake evaluations` runs them without the report)."""
    input:
        all_evaluation_flags(),
    output:
        touch(f"{RESULTS}/eval/done.flag"),
    localrule: True
