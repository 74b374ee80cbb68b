"""The Snakemake workflow: job counts from the grid, exact reruns after a grid edit, and params
errors stopping snakemake at parse time."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def snakemake(workdir: Path, *args, timeout=300) -> subprocess.CompletedProcess:
    cmd = ["timeout", "-k", "10", str(timeout), SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)


def job_stats(out: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run (rule -> count), {} when nothing is to be done."""
    m = re.search(r"Job stats:\njob\s+count\n-+\s+-+\n(.*?)\n\n", out, re.S)
    if not m:
        return {}
    rows = [line.split() for line in m.group(1).splitlines()]
    return {r[0]: int(r[1]) for r in rows if r[0] != "total"}


def test_paper_grid_job_count(tmp_path):
    grid = yaml.safe_load((REPO / "params/grids/paper.yaml").read_text())
    axes = list(grid["axes"].items())
    points = [dict(zip([k for k, _ in axes], vals, strict=True))
              for vals in itertools.product(*[v for _, v in axes])]
    points = [p for p in points
              if not any(all(p[k] == v for k, v in e.items()) for e in grid.get("exclude", []))]
    pairs = len(grid["datasets"]) * len(grid["seeds"])
    res = snakemake(tmp_path, "-n", "--config", "grid=paper")
    assert res.returncode == 0, res.stderr[-3000:]
    stats = job_stats(res.stdout + res.stderr)
    print(f"paper grid: {pairs} (dataset, seed) pairs x {len(points)} points -> {stats}")
    # a dry run writes no config: those a real run would write show as resolved_config jobs (one
    # per stage, dataset and seed)
    assert stats == {"resolved_config": 4 * pairs, "teacher": pairs,
                     "couplings": pairs, "reflow": pairs * len(points),
                     "evaluate": pairs * len(points), "evaluations_seed": pairs,
                     "evaluations": 1, "report": 1, "all": 1}
    assert stats["teacher"] + stats["couplings"] + stats["reflow"] + stats["evaluate"] == 396
    assert not (tmp_path / "results").exists()
    # no line lists every evaluation (the report's input used to be one 40 kB line)
    longest = max(map(len, (res.stdout + res.stderr).splitlines()))
    assert longest < 3000, longest


def configs_snapshot(workdir: Path) -> dict:
    return {p: (p.read_text(), p.stat().st_mtime_ns)
            for p in sorted((workdir / "results").glob("*/configs/**/*.yaml"))}


@pytest.fixture
def grid_run(tmp_path):
    grid = {"datasets": ["8gaussians"], "seeds": [0],
            "axes": {"K": [1, 2], "regularizer.weight": [0.0, 0.1],
                     "window_start_weight": [1.0]}}
    gpath = tmp_path / "grid.yaml"
    gpath.write_text(yaml.safe_dump(grid, sort_keys=False))
    cfg = ["--config", "preset=smoke", f"grid={gpath}"]
    res = snakemake(tmp_path, "--cores", "2", *cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp_path, gpath, grid, cfg


@pytest.mark.slow  # two workflow runs; test_user_datasets reruns exactly its jobs by default
def test_grid_edit_reruns_only_affected_points(grid_run):
    workdir, gpath, grid, cfg = grid_run
    res = snakemake(workdir, "-n", *cfg)
    assert res.returncode == 0 and job_stats(res.stdout) == {}, res.stdout[-2000:]
    before = configs_snapshot(workdir)
    grid["axes"]["regularizer.weight"] = [0.0, 0.2]  # edit one lambda value
    gpath.write_text(yaml.safe_dump(grid, sort_keys=False))
    res = snakemake(workdir, "-n", *cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    stats = job_stats(res.stdout)
    assert stats == {"resolved_config": 1, "reflow": 2, "evaluate": 2, "evaluations_seed": 1,
                     "evaluations": 1, "report": 1, "all": 1}, res.stdout[-3000:]
    wanted = set(re.findall(r"wildcards: dataset=\S+, seed=\d+, point=(\S+)", res.stdout))
    assert wanted == {"K~1/lam~0.2/ws~1.0", "K~2/lam~0.2/ws~1.0"}
    assert configs_snapshot(workdir) == before  # the dry run wrote nothing
    # A stale config (edited by hand, or left by another version) shows its job as to run, and
    # stays as it is until a real run.
    stale = workdir / "results/smoke/configs/evaluate/8gaussians/seed~0.yaml"
    stale.write_text(stale.read_text() + "# stale\n")
    before = configs_snapshot(workdir)
    stats = job_stats(snakemake(workdir, "-n", *cfg).stdout)
    assert stats == {"resolved_config": 2, "reflow": 2, "evaluate": 4, "evaluations_seed": 1,
                     "evaluations": 1, "report": 1, "all": 1}
    assert configs_snapshot(workdir) == before
    # Editing a teacher field reruns the whole chain below that teacher.
    preset = yaml.safe_load((REPO / "params/presets/smoke.yaml").read_text())
    preset["teacher"]["train"]["steps"] += 1
    ppath = workdir / "preset.yaml"
    ppath.write_text(yaml.safe_dump(preset))
    res = snakemake(workdir, "-n", "--config", f"preset={ppath}", f"grid={gpath}")
    stats = job_stats(res.stdout)
    assert stats["teacher"] == 1 and stats["couplings"] == 1 and stats["reflow"] == 4


BAD = [  # (what is edited, where, the field the message must name)
    ("grid", {"axes": {"K": [1], "regularizer.lamda": [0.1]}}, "reflow.regularizer.lamda"),
    ("grid", {"datasets": ["cifar100"]}, "grid.datasets.0"),  # not a dataset (mnist is now)
    ("grid", {"seeds": []}, "grid.seeds"),
    ("grid", {"axes": {"K": [0]}}, "reflow.K"),
    ("grid", {"axes": {"regularizer.eps": [0.7]}}, "reflow.regularizer.eps"),
    ("grid", {"axes": {"loss.name": ["l3"]}}, "reflow.loss.name"),
    ("preset", {"teacher": {"train": {"steps": "many"}}}, "teacher.train.steps"),
    ("preset", {"couplings": {"solver": "rk5"}}, "couplings.solver"),
    ("preset", {"resources": {"teacher": {"memory": 3}}}, "preset.resources.teacher.memory"),
    ("preset", {"evaluat": {}}, "preset.evaluat"),
    ("grid", {"equal_time": True}, "grid.equal_time"),  # no regularized point to time
]


@pytest.mark.parametrize("kind,edit,field", BAD, ids=[b[2] for b in BAD])
def test_bad_params_stop_at_parse_time(tmp_path, kind, edit, field):
    grid = {"datasets": ["8gaussians"], "seeds": [0], "axes": {"K": [1]}}
    preset = yaml.safe_load((REPO / "params/presets/smoke.yaml").read_text())
    (grid if kind == "grid" else preset).update(edit)
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(preset))
    res = snakemake(tmp_path, "--cores", "1", "--config", f"grid={tmp_path / 'g.yaml'}",
                    f"preset={tmp_path / 'p.yaml'}")
    assert res.returncode == 2  # as the reflowma command: one line, exit 2
    msg = [ln for ln in res.stderr.splitlines() if ln.startswith("reflowma:")]
    assert len(msg) == 1 and msg[0].startswith(f"reflowma: error: {field}"), res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "Error in" not in res.stderr, res.stderr[-2000:]
    assert "rule teacher" not in res.stdout + res.stderr  # nothing was scheduled
    assert not (tmp_path / "results").exists()  # nothing was written


def test_a_dry_run_prints_its_job_stats_once(tmp_path):
    """Snakemake 9.27 logs a dry run's table twice (common.smk keeps the closing one)."""
    for quiet in ([], ["--quiet", "rules"]):
        res = snakemake(tmp_path, "-n", *quiet, "--config", "preset=smoke", "grid=smoke")
        assert res.returncode == 0, res.stderr[-2000:]
        out = res.stdout + res.stderr
        assert out.count("Job stats:") == 1, out[-3000:]
        assert job_stats(out)["reflow"] == 2
        if not quiet:  # the closing summary's: after the job list
            assert out.index("Job stats:") > out.rindex("rule ")


def test_unknown_workflow_config_key(tmp_path):
    res = snakemake(tmp_path, "-n", "--config", "grdi=paper")
    assert res.returncode != 0 and "config.grdi: unknown key" in res.stdout + res.stderr


def test_slurm_profile_gives_each_job_its_presets_threads(tmp_path):
    """preset=cluster asks for 2 threads a job: the Slurm profile's dry run must request 2 CPUs
    (it used to show cpus_per_task=1 unless --cores was given)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    snakemake = Path(sys.executable).with_name("snakemake")
    res = subprocess.run([str(snakemake), "-n", "--profile", "workflow/profiles/slurm",
                          "--config", "preset=cluster", "grid=smoke",
                          f"results={tmp_path}/results"],
                         cwd=repo, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    text = res.stdout + res.stderr
    import re

    cpus = re.findall(r"cpus_per_task=(\d+)", text)
    omp = re.findall(r"OMP_NUM_THREADS=(\d+)", text)
    assert cpus and omp
    assert set(omp) == {"2"}, omp
    assert cpus.count("2") >= len(omp), cpus  # every job that runs the CLI gets 2 CPUs


def test_single_process_rules_reserve_one_ranks_threads(tmp_path):
    """`nproc` ranks of `threads` each: a torchrun job reserves nproc x threads cores, and the
    rules that run one process whatever `nproc` says (evaluate, classifier) reserve one rank's
    threads, not cores they never use."""
    preset = yaml.safe_load((REPO / "params/presets/toy.yaml").read_text())
    preset["resources"] = {"default": {"nproc": 2, "threads": 3}}
    (tmp_path / "np2.yaml").write_text(yaml.safe_dump(preset))
    res = snakemake(tmp_path, "-n", "--cores", "16", "--config",
                    f"preset={tmp_path / 'np2.yaml'}", f"results={tmp_path}/results")
    assert res.returncode == 0, res.stderr[-2000:]
    threads, rule = {}, None
    for line in res.stdout.splitlines():
        if line.startswith("rule "):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("threads:"):
            threads.setdefault(rule, set()).add(int(line.split()[1]))
    assert threads["teacher"] == threads["reflow"] == {6}, threads
    assert threads["evaluate"] == {3}, threads


def test_lint_accepts_only_the_lint_of_the_one_environment(tmp_path):
    """`make lint`'s `snakemake --lint` (workflow/scripts/lint.py) passes on the workflow, whose
    rules declare no conda environment (they run Snakemake's own interpreter), and fails on any
    other lint: here a shell command that reads an input by index."""
    import shutil

    for name in ("Snakefile", "workflow", "params"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    assert "conda:" not in "".join(p.read_text() for p in (tmp_path / "workflow").rglob("*.smk"))
    lint = [sys.executable, str(REPO / "workflow/scripts/lint.py")]
    ok = subprocess.run(lint, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Specify a conda environment" in ok.stdout
    with open(tmp_path / "workflow/rules/report.smk", "a") as f:
        f.write('\n\nrule planted:\n    input:\n        "a",\n    output:\n        "b",\n'
                '    shell:\n        "cp {input[0]} {output}"\n')
    bad = subprocess.run(lint, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert "Do not access input and output files individually by index" in bad.stderr
