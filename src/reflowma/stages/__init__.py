"""Pipeline stages: each is ``run(cfg, ...paths) -> dict of metrics``, knowing nothing of
Snakemake or Sacred."""
