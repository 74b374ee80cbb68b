# The report: tables, figures and a flat metrics summary of every evaluation, read back from the
# Sacred run records (`reflowma report`; missing or failed grid points stay visible as rows).
# `snakemake --report report.html` collects the figures marked with report() below, with the
# captions in workflow/report/.
from reflowma.report import layout as rlayout


report: "../report/workflow.rst"


REPORT = f"{RESULTS}/report"


# The report's PNG figures, flagged for `snakemake --report` (the local-audit figure only where
# the evaluate stage runs the audit); reflowma.report.layout names them. report_figure
# (common.smk) flags each: a line of a .smk that starts with `report(` is taken for the
# `report:` directive by snakefmt 2.1.0, which then cannot parse its own output.
_AUDIT = {
    key[0]
    for (stage, key), cfg in CONFIGS.items()
    if stage == "evaluate" and cfg["audit"]["enabled"]
}
REPORT_FIGURES = [
    report_figure(REPORT, f)
    for f in rlayout.expected_figures(
        [f"evaluate/{p.dataset}/seed~{p.seed}/{p.name}" for p in POINTS]
    )
    if f["kind"] != "local" or f["dataset"] in _AUDIT
]


rule report:
    """Tables (Markdown, LaTeX, CSV), figures, metrics.json (every number), summary.json (the
    headline numbers: DVC's metrics) and missing.json from the run records of every
    evaluation."""
    input:
        rules.evaluations.output,
    output:
        metrics=f"{REPORT}/metrics.json",
        summary=f"{REPORT}/summary.json",
        tables=report(f"{REPORT}/tables/all.md", caption="../report/tables.rst", category="Tables"),
        plots=f"{REPORT}/plots/nfe.csv",
        claims=f"{REPORT}/claims.md",
        figures=REPORT_FIGURES,
    log:
        f"{REPORT}/logs/report.log",  # next to the report it logs
    conda:
        "../../environment.yml"
    threads: res("report", "threads", 1)
    resources:
        **slurm_resources("report"),
    params:
        runs=RUNS,
        out=lambda wc, output: str(Path(output.metrics).parent),
        grid=config["grid"],
        preset=config["preset"],
    shell:
        '"$REFLOWMA_PY" -m reflowma report --runs {params.runs} --out {params.out}'
        " --grid {params.grid} --preset {params.preset} > {log} 2>&1"
