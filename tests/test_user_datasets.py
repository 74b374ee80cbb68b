"""User datasets in grids (params/datasets.yaml): parse-time checks, the content hash in the
resolved configs and run records, and exact reruns after the data file changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from reflowma.infra import config, grid

REPO = Path(__file__).resolve().parents[1]


def make_project(root: Path, entries: dict) -> Path:
    """A project folder with the repository's params/ and the given params/datasets.yaml."""
    shutil.copytree(REPO / "params", root / "params")
    (root / "params/datasets.yaml").write_text(yaml.safe_dump(entries))
    return root


def labelled_images(path: Path, n: int = 2000, classes: int = 4, size: int = 16,
                    seed: int = 0) -> Path:
    """An npz a user would bring: ``images`` uint8 [N, H, W, 3] and ``labels`` [N], each class
    a blob of its own colour at a random place on a dark noisy background."""
    r = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    colours = r.integers(60, 256, (classes, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    centres = r.integers(size // 4, size - size // 4, (n, 2))
    blob = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2)
                  / (2 * (size / 6) ** 2))[..., None]
    x = 30 + blob * (colours[labels][:, None, None] - 30) + r.normal(0, 10, (n, size, size, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=np.clip(x, 0, 255).astype(np.uint8), labels=labels)
    return path


def points(path: Path, seed: int = 0, n: int = 300) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.random.default_rng(seed).normal(size=(n, 2)).astype(np.float32))
    return path


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = make_project(tmp_path / "proj", {"pts": {"name": "file", "path": "data/pts.npy"}})
    points(root / "data/pts.npy")
    monkeypatch.setenv("REFLOWMA_ROOT", str(root))
    monkeypatch.chdir(root)
    g = {"datasets": ["pts", "8gaussians"], "seeds": [0], "axes": {"K": [1, 2]}}
    (root / "g.yaml").write_text(yaml.safe_dump(g))
    return root


def configs(root: Path) -> dict:
    pre = grid.load_preset("smoke")
    g = grid.load_grid(str(root / "g.yaml"))
    return grid.stage_configs(pre, g, grid.expand(g))


def test_user_dataset_configs_carry_the_hash(project):
    from reflowma.infra.storage.atomic import sha256

    cfgs = configs(project)
    h = sha256(project / "data/pts.npy")
    for (stage, key), cfg in cfgs.items():
        if key[0] == "pts":
            assert cfg["data"] == {"name": "file", "path": "data/pts.npy", "key": "data",
                                   "sha256": h}, (stage, key)
        else:
            assert cfg["data"]["name"] == "8gaussians" and not cfg["data"].get("sha256")
    points(project / "data/pts.npy", seed=1)  # new content: only pts configs change
    after = configs(project)
    changed = {k for k in cfgs if cfgs[k] != after[k]}
    assert changed == {k for k in cfgs if k[1][0] == "pts"} and len(changed) == 5


@pytest.mark.parametrize("case", ["missing", "malformed", "not_a_section", "bad_field"])
def test_bad_user_dataset_fails_at_parse_time(project, case):
    entry = {"name": "file", "path": "data/pts.npy"}
    if case == "missing":
        entry["path"] = "data/nothere.npy"
    elif case == "malformed":
        (project / "data/bad.npy").write_text("not an array")
        entry["path"] = "data/bad.npy"
    elif case == "not_a_section":
        entry = "data/pts.npy"
    else:
        entry["layout"] = "round"
    (project / "params/datasets.yaml").write_text(yaml.safe_dump({"pts": entry}))
    with pytest.raises(config.ConfigError) as e:
        grid.load_grid(str(project / "g.yaml"))
    msg = str(e.value)
    assert msg.startswith("datasets.pts") and "\n" not in msg, msg
    if case in ("missing", "malformed"):
        assert entry["path"] in msg, msg


def test_teacher_refuses_changed_file_and_records_hash(project, tmp_path):
    from reflowma.stages import teacher
    from reflowma.stages.common import data_key

    cfg = configs(project)[("teacher", ("pts", 0))]
    cfg["train"]["steps"] = 2
    points(project / "data/pts.npy", seed=2)  # changed after planning
    with pytest.raises(Exception, match="sha256"):
        teacher.run(cfg, tmp_path / "t")
    cfg = configs(project)[("teacher", ("pts", 0))]
    cfg["train"]["steps"] = 2
    res = teacher.run(cfg, tmp_path / "t")
    assert res["data_sha256"] == cfg["data"]["sha256"]
    meta = __import__("torch").load(tmp_path / "t/teacher.pt", weights_only=False)["meta"]
    assert cfg["data"]["sha256"] in meta["data"] == data_key(cfg["data"])
    assert json.loads(meta["data"])["sha256"] == meta["data_sha256"]


def test_user_dataset_grid_runs_and_reruns_exactly_its_jobs(tmp_path):
    """A temp project (Snakefile, workflow/, params/) with a user dataset next to a bundled one:
    the smoke workflow runs; a changed data file reruns that dataset's jobs only."""
    import subprocess
    import sys

    from tests.test_workflow import job_stats

    root = make_project(tmp_path / "proj", {"pts": {"name": "file", "path": "data/pts.npy"}})
    shutil.copy(REPO / "Snakefile", root)
    shutil.copy(REPO / "environment.yml", root)  # the rules name it (conda:)
    shutil.copytree(REPO / "workflow", root / "workflow", symlinks=False)
    points(root / "data/pts.npy")
    g = {"datasets": ["pts", "8gaussians"], "seeds": [0], "axes": {"K": [1]}}
    (root / "params/grids/user.yaml").write_text(yaml.safe_dump(g))
    pre = yaml.safe_load((REPO / "params/presets/smoke.yaml").read_text())
    pre["teacher"]["train"]["steps"] = 20
    pre["reflow"]["train"]["steps"] = 10
    (root / "params/presets/tiny.yaml").write_text(yaml.safe_dump(pre))
    smk = str(Path(sys.executable).parent / "snakemake")

    def run(*args):
        return subprocess.run(["timeout", "-k", "10", "400", smk, "--directory", str(root),
                               "--config", "preset=tiny", "grid=user", *args],
                              capture_output=True, text=True, cwd=root)

    res = run("--cores", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert job_stats(run("-n").stdout) == {}
    runs = [json.loads(p.read_text()) for p in root.glob("results/tiny/runs/*/info.json")]
    from reflowma.infra.storage.atomic import sha256

    h = sha256(root / "data/pts.npy")
    assert {r["job"] for r in runs if r.get("data_sha256") == h} == {
        "teacher/pts/seed~0", "couplings/pts/seed~0", "reflow/pts/seed~0/K~1",
        "evaluate/pts/seed~0/K~1"}
    points(root / "data/pts.npy", seed=5)
    res = run("-n")
    stats = job_stats(res.stdout)
    assert stats == {"resolved_config": 4, "teacher": 1, "couplings": 1, "reflow": 1,
                     "evaluate": 1, "evaluations_seed": 1, "evaluations": 1, "report": 1,
                     "all": 1}, res.stdout[-3000:]
    assert "dataset=8gaussians" not in res.stdout.split("Job stats")[0].replace(
        "rule report", "")


def test_bad_labels_of_a_user_dataset_fail_at_parse_time(project):
    """A label array of the wrong length, read while the workflow parses: one line naming the
    entry's field and the file, before any job."""
    labelled_images(project / "data/imgs.npz", n=40)
    with np.load(project / "data/imgs.npz") as z:
        np.savez(project / "data/imgs.npz", images=z["images"], labels=z["labels"][:-1])
    entry = {"name": "images", "path": "data/imgs.npz", "key": "images", "labels_key": "labels"}
    (project / "params/datasets.yaml").write_text(yaml.safe_dump({"imgs": entry}))
    (project / "g.yaml").write_text(yaml.safe_dump({"datasets": ["imgs"], "seeds": [0],
                                                    "axes": {"K": [1]}}))
    with pytest.raises(config.ConfigError) as e:
        grid.load_grid(str(project / "g.yaml"))
    msg = str(e.value)
    assert msg.startswith("datasets.imgs.labels_key: ") and "imgs.npz':labels" in msg, msg
    assert "needs one label per image: [40]" in msg and "\n" not in msg, msg


def test_user_images_with_labels_through_the_workflow(tmp_path):
    """A user's labelled npz (2,000 RGB 16x16 images, 4 classes) named in params/datasets.yaml
    with key and labels_key: the mnist_smoke preset's K x lambda study runs through Snakemake
    with fd_classifier (the classifier trains on the user's labels), and a second dry run has
    nothing to do."""
    import subprocess
    import sys
    import time

    from tests.test_workflow import job_stats

    entry = {"name": "images", "path": "data/faces.npz", "key": "images",
             "labels_key": "labels"}
    root = make_project(tmp_path / "proj", {"faces": entry})
    shutil.copy(REPO / "Snakefile", root)
    shutil.copy(REPO / "environment.yml", root)  # the rules name it (conda:)
    shutil.copytree(REPO / "workflow", root / "workflow", symlinks=False)
    labelled_images(root / "data/faces.npz")
    g = {"datasets": ["faces"], "seeds": [0],
         "axes": {"K": [1], "window_start_weight": [1.0], "regularizer.weight": [0.0, 0.1]}}
    (root / "params/grids/faces.yaml").write_text(yaml.safe_dump(g, sort_keys=False))
    smk = str(Path(sys.executable).parent / "snakemake")

    def run(*args):
        return subprocess.run(["timeout", "-k", "10", "900", smk, "--directory", str(root),
                               "--config", "preset=mnist_smoke", "grid=faces", *args],
                              capture_output=True, text=True, cwd=root)

    plan = job_stats(run("-n").stdout)
    assert {k: plan[k] for k in ("classifier", "teacher", "couplings", "reflow", "evaluate")} \
        == {"classifier": 1, "teacher": 1, "couplings": 1, "reflow": 2, "evaluate": 2}, plan
    t0 = time.perf_counter()
    res = run("--cores", "2")
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    out = root / "results/mnist_smoke"
    clf = json.loads((out / "classifier/faces/seed~0/metrics.json").read_text())["metrics"]
    # every 5th image is held out: 400 test images; the classes differ in colour, so a
    # classifier that read the labels separates them (chance: 0.25)
    assert clf["n_test"] == 400 and clf["n_train"] == 1600 and clf["test_accuracy"] > 0.9, clf
    jobs = sum(v for k, v in plan.items() if k != "resolved_config")
    print(f"user images study: {jobs} jobs, {wall:.0f} s wall; classifier test "
          f"accuracy {clf['test_accuracy']:.3f}")
    for lam in ("0.0", "0.1"):
        ev = json.loads((out / f"eval/faces/seed~0/K~1/ws~1.0/lam~{lam}/eval.json").read_text())
        assert ev["classifier"]["sha256"] == clf["sha256"]
        fds = {f"student nfe{n}": ev["nfe"][n]["fd_classifier"] for n in ("1", "2")}
        fds |= {"teacher ceiling": ev["teacher_ceiling"]["fd_classifier"],
                "data floor": ev["data_floor"]["fd_classifier"]}
        assert all(np.isfinite(v) and v >= 0 for v in fds.values()), fds
        # the data floor (a data draw against the held-out images) is below the 30-step
        # smoke teacher's samples
        assert fds["data floor"] < fds["teacher ceiling"], fds
        print(f"lam {lam}: fd_classifier", {k: round(v, 3) for k, v in fds.items()})
    assert job_stats(run("-n").stdout) == {}


def test_checking_user_images_at_parse_time_imports_no_torch(project):
    """The workflow's parse reads a user dataset's file (labels included) through
    data/readers.py and asks data/catalog.py about it: neither imports torch."""
    import subprocess
    import sys

    labelled_images(project / "data/imgs.npz", n=40)
    entry = {"name": "images", "path": "data/imgs.npz", "key": "images", "labels_key": "labels"}
    (project / "params/datasets.yaml").write_text(yaml.safe_dump({"imgs": entry}))
    (project / "g.yaml").write_text(yaml.safe_dump({"datasets": ["imgs"], "seeds": [0],
                                                    "axes": {"K": [1]}}))
    code = ("import sys; from reflowma.infra import grid; g = grid.load_grid('g.yaml'); "
            "c = grid.stage_configs(grid.load_preset('mnist_smoke'), g, grid.expand(g)); "
            "print(sorted(k[0] for k in c), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True,
                         text=True, check=True).stdout.split("]")
    assert out[0].count("classifier") == 1 and out[1].strip() == "False", out
