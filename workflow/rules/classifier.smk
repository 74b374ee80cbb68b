rule classifier:
    """LeNet-like classifier on the dataset's labels (features of evaluate's fd_classifier;
    test accuracy in metrics.json). A job only for datasets and seeds whose evaluate config
    sets fd_classifier: true; trained once and reused by every evaluation of its seed."""
    input:
        params=config_input("classifier"),
    output:
        model=f"{RESULTS}/classifier/{{dataset}}/seed~{{seed}}/classifier.pt",
        metrics=f"{RESULTS}/classifier/{{dataset}}/seed~{{seed}}/metrics.json",
    log:
        f"{RESULTS}/logs/classifier/{{dataset}}/seed~{{seed}}.log",
    threads: job_threads("classifier", rule_nproc=1)
    resources:
        **slurm_resources("classifier"),
    shell:
        job_cmd("classifier", rule_nproc=1)
        + " --params {input.params} --out $(dirname {output.model})"
        " --job classifier/{wildcards.dataset}/seed~{wildcards.seed}"
