"""Bad params are refused before any work: exit 2, one ``reflowma: error:`` line naming the
field (and the bad value and the allowed values where there are such), nothing written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reflowma import cli

PARAMS = Path(__file__).resolve().parents[1] / "params"
T, C, S = "/nonexistent/teacher.pt", "/nonexistent/couplings.h5", "/nonexistent/student.pt"
INPUTS = {"teacher": [], "couplings": ["--teacher", T],
          "reflow": ["--teacher", T, "--couplings", C],
          "evaluate": ["--teacher", T, "--couplings", C, "--student", S]}

# (id, stage, overrides, preset, substrings the error line must contain: field first)
CASES = [
    ("unknown-key", "teacher", ["foo=1"], "smoke",
     ["teacher.foo", "unknown key", "net", "train"]),
    ("unknown-nested-key", "teacher", ["net.foo=3"], "smoke",
     ["teacher.net.foo", "unknown key", "width", "activation"]),
    ("unknown-nested-key-reflow", "reflow", ["regularizer.lamda=1"], "smoke",
     ["reflow.regularizer.lamda", "unknown key", "weight"]),
    ("wrong-type-str", "teacher", ["train.lr=abc"], "smoke",
     ["teacher.train.lr", "'abc'", "wrong type", "number"]),
    ("wrong-type-float-for-int", "teacher", ["train.batch_size=1.5"], "smoke",
     ["teacher.train.batch_size", "1.5", "integer"]),
    ("wrong-type-section", "teacher", ["train=3"], "smoke",
     ["teacher.train", "3", "object"]),
    ("not-a-mapping", "teacher", ["net.width.x=3"], "smoke",
     ["teacher.net.width", "not a mapping", "net.width.x"]),
    ("unknown-dataset", "teacher", ["data.name=blobs"], "smoke",
     ["teacher.data.name", "'blobs'", "8gaussians", "moons", "file"]),
    ("unknown-solver", "couplings", ["solver=midpoint"], "smoke",
     ["couplings.solver", "'midpoint'", "euler", "heun", "rk4", "dopri5"]),
    ("unknown-teacher-solver", "evaluate", ["teacher_solver=rk45"], "smoke",
     ["evaluate.teacher_solver", "'rk45'", "dopri5"]),
    ("unknown-loss", "reflow", ["loss.name=l1"], "smoke",
     ["reflow.loss.name", "'l1'", "l2", "pseudo_huber"]),
    ("unknown-time-sampler", "teacher", ["time_sampler.name=beta"], "smoke",
     ["teacher.time_sampler.name", "'beta'", "uniform", "u_shaped", "logit_normal"]),
    ("unknown-activation", "reflow", ["net.activation=swish"], "smoke",
     ["reflow.net.activation", "'swish'", "silu", "relu", "gelu", "tanh", "elu"]),
    ("K-0", "reflow", ["K=0"], "smoke", ["reflow.K", "0", ">= 1"]),
    ("steps-0", "teacher", ["train.steps=0"], "smoke", ["teacher.train.steps", "0", ">= 1"]),
    ("n-train-negative", "couplings", ["n_train=-1"], "smoke",
     ["couplings.n_train", "-1", ">= 1"]),
    ("nfe-0", "evaluate", ["nfe=[1,0]"], "smoke", ["evaluate.nfe.1", "0", ">= 1"]),
    ("odd-time-embed", "teacher", ["net.time_embed_dim=7"], "smoke",
     ["teacher.net.time_embed_dim", "7", "multiple of 2"]),
    ("missing-data-file", "teacher", ["data.name=file", "data.path=/nope.npy"], "smoke",
     ["teacher.data.path", "'/nope.npy'", "does not exist"]),
    ("path-with-bundled-dataset", "teacher", ["data.path=/nope.npy"], "smoke",
     ["teacher.data.path", "'/nope.npy' is set but data.name is '8gaussians'", "data.name"]),
    ("eps-0.5", "reflow", ["regularizer.eps=0.5"], "smoke",
     ["reflow.regularizer.eps", "0.5", "< 0.5"]),
    ("eps-0", "reflow", ["regularizer.eps=0"], "smoke", ["reflow.regularizer.eps", "0", "> 0"]),
    ("unknown-discrepancy", "reflow", ["regularizer.discrepancy=energy"], "smoke",
     ["reflow.regularizer.discrepancy", "'energy'", "reverse_kl", "mmd", "sliced_w2",
      "sinkhorn"]),
    ("n-projections-0", "reflow", ["regularizer.n_projections=0"], "smoke",
     ["reflow.regularizer.n_projections", "0", ">= 1"]),
    ("sinkhorn-eps-0", "reflow", ["regularizer.sinkhorn_eps=0"], "smoke",
     ["reflow.regularizer.sinkhorn_eps", "0", "> 0"]),
    ("lambda-negative", "reflow", ["regularizer.weight=-1"], "smoke",
     ["reflow.regularizer.weight", "-1", ">= 0"]),
    ("reg-window-ge-K", "reflow", ["K=2", "regularizer.windows=[0,2]"], "smoke",
     ["reflow.regularizer.windows", "[0, 2]", "0..1"]),
    ("unknown-device", "teacher", ["device=tpu"], "smoke",
     ["teacher.device", "'tpu'", "cpu", "cuda", "auto"]),
    ("override-no-equals", "teacher", ["train.steps"], "smoke",
     ["override", "'train.steps'", "key=value"]),
    ("override-empty-key", "teacher", ["=3"], "smoke", ["override", "'=3'", "empty key"]),
    ("override-empty-part", "teacher", ["train..steps=3"], "smoke",
     ["override", "'train..steps=3'", "empty key"]),
    ("unknown-preset", "teacher", [], "nosuch",
     ["preset", "'nosuch'", "smoke", "toy"]),
    ("missing-preset-file", "teacher", [], "{tmp}/none.yaml",
     ["params", "none.yaml", "does not exist"]),
    ("preset-unknown-top-key", "teacher", [], "{tmp}/bad.yaml",
     ["preset.trainer", "unknown key", "seed", "teacher", "reflow"]),
    ("preset-stage-bad-value", "reflow", [], "{tmp}/bad_stage.yaml",
     ["reflow.K", "0", ">= 1"]),
    ("preset-not-a-mapping", "teacher", [], "{tmp}/list.yaml",
     ["params", "list.yaml", "mapping"]),
]


def _presets(tmp: Path) -> set[str]:
    (tmp / "bad.yaml").write_text("seed: 0\ntrainer: {steps: 3}\n")
    (tmp / "bad_stage.yaml").write_text(yaml.safe_dump({"reflow": {"K": 0}}))
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    return {p.name for p in tmp.iterdir()}


def _argv(stage, overrides, preset, tmp, out):
    return [stage, "--params", preset.format(tmp=tmp), *INPUTS[stage], "--out", str(out),
            *overrides]


@pytest.mark.parametrize(("stage", "overrides", "preset", "needles"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_params(tmp_path, capsys, stage, overrides, preset, needles):
    before = _presets(tmp_path)
    out = tmp_path / "out" / ("eval.json" if stage == "evaluate" else "run")
    rc = cli.main(_argv(stage, overrides, preset, tmp_path, out))
    cap = capsys.readouterr()
    assert rc == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1, cap.err  # exactly one line, and it is the error
    line = lines[0]
    assert line.startswith(f"reflowma: error: {needles[0]}"), line  # names the field first
    for s in needles[1:]:
        assert s in line, (s, line)
    assert cap.out == ""
    assert {p.name for p in tmp_path.iterdir()} == before  # nothing was created


def test_bad_params_real_process(tmp_path):
    """The same through a real process: exit status 2 and a one-line stderr."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "REFLOWMA_RUNS"}
    p = subprocess.run([sys.executable, "-m", "reflowma.cli", "teacher", "--params", "smoke",
                        "--out", str(out), "net.activation=swish"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "reflowma: error: teacher.net.activation: 'swish' is not allowed; "
        "allowed: silu, relu, gelu, tanh, elu"]
    assert not out.exists()


def test_scientific_notation_override_is_a_number(capsys):
    # YAML 1.1 reads 3e-3 as a string; the CLI reads it as the number a user means
    assert cli.main(["teacher", "--params", "smoke", "--out", "/nonexistent/x",
                     "--print-config", "train.lr=3e-3", "data.name=moons"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["lr"] == 0.003 and cfg["data"]["name"] == "moons"


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            yield from _leaves(v, name)
        else:
            yield name, v


def _defaults(stage: str) -> dict:
    common = yaml.safe_load((PARAMS / "defaults" / "common.yaml").read_text())
    own = yaml.safe_load((PARAMS / "defaults" / f"{stage}.yaml").read_text())
    return {**common, **own}


@pytest.mark.parametrize("stage", ["teacher", "couplings", "reflow", "evaluate"])
def test_help_lists_every_field_with_its_value(capsys, stage):
    """Without --params the help shows the default preset's (toy) values: what a run uses."""
    with pytest.raises(SystemExit) as e:
        cli.main([stage, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    rows = {}
    for line in text.split("fields, with their values under --params toy", 1)[1].splitlines()[1:]:
        if line.startswith("  ") and line.strip():
            rows[line.split()[0]] = line
    from reflowma.infra import config

    resolved = config.stage_config(stage, "toy")
    for name, _ in _leaves(_defaults(stage)):
        assert name in rows, f"{name} missing from `reflowma {stage} --help`"
    for name, value in _leaves(resolved):
        assert rows[name].endswith(f"[{value!r}]"), rows[name]
    if stage == "teacher":
        assert rows["train.lr"].endswith("[0.001]")
        assert rows["net.width"].endswith("[128]")  # toy preset, not the stage default 256
        assert "silu|relu|gelu|tanh|elu" in rows["net.activation"]
        assert "data.path" in rows and "time_sampler.a" in rows  # schema-only fields too
    if stage == "reflow":
        assert rows["regularizer.eps"].endswith("[0.1]")  # the toy preset, not the default
        assert rows["K"].endswith("[1]")


# A YAML syntax error in any params file: one line `reflowma: error: FILE:LINE: not valid
# YAML: ...`, exit 2, nothing written: from the reflowma command and from the workflow's parse.
YAML_BREAKS = {  # file under the project -> the text appended (the error is on its line)
    "params/presets/smoke.yaml": "{}\n",
    "params/defaults/common.yaml": "{}\n",
    "params/defaults/teacher.yaml": "{}\n",
    "my.yaml": "{}\n",  # a user's params file (--params my.yaml)
    "params/grids/smoke.yaml": "{}\n",
    "params/config.yaml": "{}\n",
    # the case users meet: an entry added below the file's `{}` line
    "params/datasets.yaml": "faces: {name: images, path: data/faces.npz}\n",
}


def _broken_project(tmp: Path, name: str) -> tuple[Path, int]:
    import shutil

    root = tmp / "proj"
    shutil.copytree(PARAMS, root / "params")
    shutil.copy(PARAMS / "presets/smoke.yaml", root / "my.yaml")
    f = root / name
    text = f.read_text()
    f.write_text(text + YAML_BREAKS[name])
    return root, len(text.splitlines()) + 1


def _one_error_line(res, name: str, line: int) -> str:
    errs = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(errs) == 1, (res.returncode, res.stderr[-2000:])
    assert errs[0].startswith(f"reflowma: error: {name}:{line}: not valid YAML: "), errs[0]
    return errs[0]


@pytest.mark.parametrize("name", [n for n in YAML_BREAKS if "grids" not in n
                                  and "config" not in n and "datasets" not in n])
def test_yaml_error_names_file_and_line_in_the_cli(tmp_path, name):
    root, line = _broken_project(tmp_path, name)
    params = "my.yaml" if name == "my.yaml" else "smoke"
    env = {**{k: v for k, v in os.environ.items() if k != "REFLOWMA_RUNS"},
           "REFLOWMA_ROOT": str(root)}
    res = subprocess.run([sys.executable, "-m", "reflowma", "teacher", "--params", params,
                          "--out", "out"], capture_output=True, text=True, env=env, cwd=root,
                         timeout=120)
    print(_one_error_line(res, name, line))
    assert not (root / "out").exists()


@pytest.mark.parametrize("name", [n for n in YAML_BREAKS if n != "my.yaml"])
def test_yaml_error_names_file_and_line_at_the_workflow_parse(tmp_path, name):
    import shutil

    root, line = _broken_project(tmp_path, name)
    repo = PARAMS.parent
    shutil.copy(repo / "Snakefile", root)
    shutil.copytree(repo / "workflow", root / "workflow", symlinks=False)
    smk = str(Path(sys.executable).parent / "snakemake")
    res = subprocess.run(["timeout", "-k", "10", "300", smk, "-n", "--config", "preset=smoke",
                          "grid=smoke"], capture_output=True, text=True, cwd=root)
    err = _one_error_line(res, name, line)
    print(err)
    if name == "params/datasets.yaml":
        assert "is a {} or [] line left above new entries?" in err
    assert not (root / "results").exists()
