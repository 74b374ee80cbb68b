# reflowma workflow: teacher -> couplings -> reflow students over an ablation grid -> evaluation.
#   snakemake --cores 2                                  (default: preset toy, grid toy)
#   snakemake --cores 2 --config preset=smoke grid=smoke
#   snakemake --profile workflow/profiles/slurm --config preset=cluster grid=paper
# Params and grids are validated at parse time (workflow/schemas/): nothing is submitted
# when one is wrong.
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "params/config.yaml")


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
