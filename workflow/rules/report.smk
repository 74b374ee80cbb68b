# The report: tables, figures and a flat metrics summary of every evaluation, read back from the
# Sacred run records (`reflowma report`; missing or failed grid points stay visible as rows).
# `snakemake --report report.html` collects the figures and the two web pages (all tables,
# the claims) marked with report() below, with the captions in workflow/report/.
from reflowma.report import layout as report_layout


report: "../report/workflow.rst"


REPORT = f"{RESULTS}/report"


# The report's PNG figures, flagged for `snakemake --report`: reflowma.report.layout names
# them from the job names and each dataset's evaluate config (its data section, whatever the
# grid calls the dataset, and whether the audit runs). report_figure (common.smk) flags each:
# a line of a .smk that starts with `report(` is taken for the `report:` directive by
# snakefmt 2.1.0, which then cannot parse its own output.
EVALUATE_CONFIGS = {key[0]: cfg for (stage, key), cfg in CONFIGS.items() if stage == "evaluate"}
REPORT_FIGURES = [
    report_figure(REPORT, f)
    for f in report_layout.expected_figures(
        [f"evaluate/{p.dataset}/seed~{p.seed}/{p.name}" for p in POINTS], EVALUATE_CONFIGS
    )
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
        tables=f"{REPORT}/tables/all.md",
        tables_page=report_page(REPORT, "tables/all.html", "tables", "Tables"),
        plots=f"{REPORT}/plots/nfe.csv",
        claims=f"{REPORT}/claims.md",
        claims_page=report_page(REPORT, "claims.html", "claims", "Claims"),
        figures=REPORT_FIGURES,
    log:
        f"{REPORT}/logs/report.log",  # next to the report it logs
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
