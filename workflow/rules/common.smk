# Helpers shared by the rules: the plan (grid points, resolved configs, paths, resources).
import logging
import os
import sys
from pathlib import Path

from snakemake.logging import logger

from reflowma.infra import config as rcfg
from reflowma.infra import grid as rgrid

# Jobs run `reflowma` with this workflow's own interpreter. It reaches them through the
# environment (exported to local and Slurm jobs alike) and not as a param of the jobs, since a
# changed param makes Snakemake rerun a job: every job, after a move to a fresh clone's venv.
PY = sys.executable
# The Snakefile's folder is the project: its params/ are the ones every job reads (set before
# anything reads params; jobs inherit it), whichever clone the package was installed from.
os.environ.update(REFLOWMA_PY=PY, REFLOWMA_ROOT=str(Path(workflow.basedir).resolve()))


class DryRunStatsOnce(logging.Filter):
    """Snakemake 9.27 logs a dry run's job-stats table twice, before the job list and again in
    the closing summary, so `snakemake -n --quiet rules` (no job list) printed it twice in a
    row. This keeps the summary's: it drops a dry run's first table."""

    seen = False

    def filter(self, record):
        if self.seen or not workflow.dryrun or not str(record.msg).startswith("Job stats:"):
            return True
        self.seen = True
        return False


for _f in [f for f in logger.filters if type(f).__name__ == "DryRunStatsOnce"]:
    logger.removeFilter(_f)  # one filter per process, however often a Snakefile is parsed
logger.addFilter(DryRunStatsOnce())
# Bad params: one line `reflowma: error: ...` and exit 2 before anything is scheduled.
with rcfg.exit_on_bad_params():  # workflow/schemas/workflow.schema.yaml
    rgrid.check_schema("workflow", dict(config), "config")
PRESET_NAME = Path(str(config["preset"])).stem
RESULTS = f"{config['results']}/{PRESET_NAME}"
RUNS = f"{RESULTS}/runs"  # Sacred FileStorageObserver records, one per job

with rcfg.exit_on_bad_params():
    PRESET = rgrid.load_preset(config["preset"])
    GRID = rgrid.load_grid(config["grid"])
    POINTS = rgrid.expand(GRID)
    CONFIGS = rgrid.stage_configs(PRESET, GRID, POINTS)


def _cfg_path(stage, key):
    if stage == "reflow":
        dataset, seed, name = key
        return f"{RESULTS}/configs/reflow/{dataset}/seed~{seed}/{name}.yaml"
    dataset, seed = key
    return f"{RESULTS}/configs/{stage}/{dataset}/seed~{seed}.yaml"


# Resolved per-job configs are the jobs' inputs, rewritten only when their content changes, so
# an edit of the preset or grid reruns exactly the jobs it affects. They are written when the DAG
# is built (input functions run after Snakemake knows whether this is a dry run), never in a dry
# run: there a missing or stale config is shown as a `resolved_config` job to run (its output is a
# placeholder under configs/.dryrun/, one per stage, dataset and seed, that nothing writes), so
# the job that reads it shows as to run too, and nothing is written.
DRYRUN_CONFIGS = f"{RESULTS}/configs/.dryrun"


def config_input(stage):
    """Input function: the resolved config of a `stage` job (see above)."""

    def inp(wc):
        key = (wc.dataset, int(wc.seed)) + ((wc.point,) if stage == "reflow" else ())
        path = _cfg_path(stage, key)
        if (stage, key) not in CONFIGS:  # not a job of this grid: missing input as usual
            return path
        obj = rgrid.as_preset(stage, CONFIGS[(stage, key)])
        if not workflow.dryrun:
            rgrid.write_if_changed(Path(path), obj)
        elif not rgrid.is_current(Path(path), obj):  # one placeholder per stage, dataset, seed
            return f"{DRYRUN_CONFIGS}/{stage}/{wc.dataset}/seed~{wc.seed}.yaml"
        return path

    return inp


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    seed=r"\d+",
    point=r"[^/~]+~[^/~]+(/[^/~]+~[^/~]+)*",


def res(rule_name, key, default=None):
    """A resource of a rule from the preset's `resources` section (default section first)."""
    return rgrid.rule_resources(PRESET, rule_name).get(key, default)


def nproc(rule_name):
    """Processes (torchrun ranks) per job of a rule: the preset's `nproc`, default 1."""
    return int(res(rule_name, "nproc", 1))


def job_threads(rule_name, rule_nproc=None):
    """Cores of one job: `threads` per rank times its ranks (--cpus-per-task on Slurm); a rule
    that runs one process whatever `nproc` says passes `rule_nproc=1`, as to job_cmd."""
    ranks = nproc(rule_name) if rule_nproc is None else rule_nproc
    return res(rule_name, "threads", 1) * ranks


def slurm_resources(rule_name):
    r = rgrid.rule_resources(PRESET, rule_name)
    return {k: v for k, v in r.items() if k not in ("threads", "nproc")}


# Every stage job runs through this script: NPROC ranks under torchrun when > 1, and a
# preempted job (state saved, exit 143/130) is requeued inside Slurm (docs/slurm.md).
# The trap keeps Snakemake's own shell alive when Slurm signals every process of the job, so
# the script can requeue the job before the job step ends.
# job.sh writes the rule's log itself (appending after a requeue), so rules do not redirect.
# A rule's constants (ranks, threads per rank, the records folder) are in the command's text:
# nothing is evaluated per job, and Snakemake's code trigger reruns the rule's jobs when one
# changes (it compares the command's text).
def job_cmd(stage, rule_nproc=None):
    ranks = nproc(stage) if rule_nproc is None else rule_nproc
    return (
        f"trap true TERM INT; OMP_NUM_THREADS={res(stage, 'threads', 1)}"
        f' "$REFLOWMA_ROOT/workflow/scripts/job.sh" {ranks} {{log}} {stage} --runs {RUNS}'
    )


def seed_evaluations(dataset, seed):
    return [
        f"{RESULTS}/eval/{p.dataset}/seed~{p.seed}/{p.name}/eval.json"
        for p in POINTS
        if (p.dataset, p.seed) == (dataset, seed)
    ]


def all_evaluation_flags():
    pairs = dict.fromkeys((p.dataset, p.seed) for p in POINTS)
    return [f"{RESULTS}/eval/{d}/seed~{s}/done.flag" for d, s in pairs]


def input_option(option, name, used):
    """Params of an optional input `name`: `{name: "option <path>"}` for a job that has that
    input, '' for one that has none; no param at all when no job of the grid has it (`used`
    false: then `option_arg` adds nothing to the command either)."""
    if not used:
        return {}
    return {
        name: lambda wc, input: (f"{option} {getattr(input, name)}" if getattr(input, name) else "")
    }


def option_arg(name, used):
    """The command's placeholder of an `input_option` param (nothing when it is not used)."""
    return f" {{params.{name}}}" if used else ""


# Whether any evaluate job of this grid reads a classifier (fd_classifier: true): if none,
# the evaluate rule has no classifier input function at all (one call per job saved).
USES_CLASSIFIER = any(
    cfg.get("fd_classifier") for (stage, _), cfg in CONFIGS.items() if stage == "evaluate"
)


def classifier_input(wc):
    """Input function: the classifier model of an evaluate job whose config sets
    fd_classifier: true (none otherwise)."""
    cfg = CONFIGS.get(("evaluate", (wc.dataset, int(wc.seed))))
    if cfg is None or not cfg.get("fd_classifier"):
        return []
    return f"{RESULTS}/classifier/{wc.dataset}/seed~{wc.seed}/classifier.pt"


def report_figure(folder, f):
    """The PNG of one figure of reflowma.report.layout.expected_figures under the report
    `folder`, flagged for `snakemake --report` (captions in workflow/report/)."""
    return report(
        f"{folder}/figures/{f['stem']}.png",
        caption=f"../report/{f['kind']}.rst",
        category="Figures",
        subcategory=f["dataset"],
        labels={"dataset": f["dataset"], "figure": f["stem"]},
    )


def report_page(folder, path, caption, category):
    """A web page of the report `folder` (its tables or claims, rendered from the Markdown),
    flagged for `snakemake --report`, which shows HTML on its page."""
    return report(f"{folder}/{path}", caption=f"../report/{caption}.rst", category=category)


# Equal-time controls (grid `equal_time: true`): the reflow job of one reads the record of the
# regularized student it is timed against, so that student trains first.
EQUAL_TIME = {(p.dataset, p.seed, p.name): p.equal_time[0] for p in POINTS if p.equal_time}


def equal_time_input(wc):
    """Input function: the metrics.json of the regularized student that an equal-time
    control's reflow job is timed against (none for other points)."""
    reg = EQUAL_TIME.get((wc.dataset, int(wc.seed), wc.point))
    if reg is None:
        return []
    return f"{RESULTS}/students/{wc.dataset}/seed~{wc.seed}/{reg}/metrics.json"
