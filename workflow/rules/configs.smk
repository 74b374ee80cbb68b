# Dry runs: the placeholder job for a resolved config a real run would (re)write (common.smk).


rule resolved_config:
    """Dry runs only: stands for a resolved config that a real run would (re)write."""
    output:
        f"{DRYRUN_CONFIGS}/{{path}}.yaml",
    log:
        f"{DRYRUN_CONFIGS}/{{path}}.log",  # never written either
    localrule: True
    run:
        raise WorkflowError("resolved configs are written when the DAG is built, not by a job")
