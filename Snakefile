# reflowma workflow: teacher -> couplings -> reflow students over an ablation grid -> evaluation.
#   snakemake --cores 2                                  (default: preset toy, grid toy)
#   snakemake --cores 2 --config preset=smoke grid=smoke
#   snakemake --profile workflow/profiles/slurm --config preset=cluster grid=paper
# Params and grids are validated at parse time (workflow/schemas/): nothing is submitted
# when one is wrong (one line `reflowma: error: ...`, exit 2).
import os

from snakemake.utils import min_version

from reflowma.infra import config as rcfg

min_version("9.0")
CONFIG_FILE = os.path.join(workflow.basedir, "params/config.yaml")
with rcfg.exit_on_bad_params():  # a YAML error names the file and line in one line
    rcfg.load_yaml(CONFIG_FILE, "config")


configfile: CONFIG_FILE


include: "workflow/rules/common.smk"
include: "workflow/rules/configs.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/couplings.smk"
include: "workflow/rules/reflow.smk"
include: "workflow/rules/classifier.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.report.output.metrics,
