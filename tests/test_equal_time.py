"""Equal-wall-time comparison: the training loop's time budget, the step plan of an equal-time
control, the grid option ``equal_time`` and (one real Snakemake run) the workflow and report."""

from __future__ import annotations

import json
import time

import pytest
import torch
import yaml

from reflowma.infra import config
from reflowma.infra import grid as rgrid
from reflowma.stages import reflow
from reflowma.training.loop import budget_reached, fit

CFG = {"steps": 1000, "lr": 1e-2, "lr_schedule": "cosine", "warmup_steps": 2,
       "ema_decay": 0.9, "grad_clip": 1.0, "checkpoint_every": 5, "log_every": 4,
       "amp": "none"}
SLEEP = 0.01  # each step sleeps this long: the budget is reached after a known number of steps


def _loss(fail_at=None):
    def loss_fn(model, step, g):
        if step == fail_at:
            raise RuntimeError("stop here")
        time.sleep(SLEEP)
        x = torch.randn(8, 2, generator=g)
        return (model(x) ** 2).mean(), {"aux": 1.0}
    return loss_fn


def test_budget_reached():
    assert not budget_reached(5.0, None)
    assert not budget_reached(0.99, 1.0)
    assert budget_reached(1.0, 1.0) and budget_reached(1.5, 1.0)


def test_time_budget_stops_early(tmp_path):
    budget = 0.1  # >= 10 sleeping steps of the 1000 planned
    info = {}
    torch.manual_seed(0)
    ema, hist = fit(torch.nn.Linear(2, 1), _loss(), {**CFG, "time_budget_s": budget},
                    torch.Generator().manual_seed(0), tmp_path / "s.pt", "fp", info=info)
    assert info["stopped_by"] == "time_budget" and info["time_budget_s"] == budget
    # the sleeps alone take SLEEP per step, so it cannot have done more than budget / SLEEP
    assert 1 <= info["steps_done"] <= budget / SLEEP + 1 < CFG["steps"]
    assert info["train_seconds"] >= budget  # it stops only once the budget is reached
    assert hist[-1]["step"] == info["steps_done"]  # the last step has its logged row
    # without a budget the same loop runs its steps
    info2 = {}
    fit(torch.nn.Linear(2, 1), _loss(), {**CFG, "steps": 6}, torch.Generator().manual_seed(0),
        tmp_path / "t.pt", "fp", info=info2)
    assert info2["stopped_by"] == "steps" and info2["steps_done"] == 6
    assert info2["time_budget_s"] is None


def test_time_budget_counts_over_resumes(tmp_path):
    """A resumed run counts the seconds of the run it resumes (kept in the state)."""
    state = tmp_path / "s.pt"
    with pytest.raises(RuntimeError, match="stop here"):  # state saved at step 5, then fails
        fit(torch.nn.Linear(2, 1), _loss(fail_at=7), CFG, torch.Generator().manual_seed(0),
            state, "fp")
    from reflowma.infra.storage import checkpoint

    st = checkpoint.load(state)
    assert st["step"] == 5 and st["train_seconds"] >= 5 * SLEEP
    info = {}  # a budget the first 5 steps already used up: no further step
    fit(torch.nn.Linear(2, 1), _loss(), {**CFG, "time_budget_s": st["train_seconds"]},
        torch.Generator().manual_seed(0), state, "fp", info=info)
    assert info["steps_done"] == 5 and info["stopped_by"] == "time_budget"
    assert info["train_seconds"] >= st["train_seconds"]


def test_planned_steps():
    assert reflow.planned_steps(1.0, 0.01) == 110  # ceil(1.1 * 1.0 / 0.01)
    assert reflow.planned_steps(1.0, 0.01, margin=1.0) == 100
    assert reflow.planned_steps(1e-6, 1.0) == 1


def test_measure_pace_leaves_the_model_alone():
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pace = reflow.measure_pace(model, _loss(), CFG, seed=0, steps=3, warmup=1)
    assert pace >= SLEEP  # every timed step sleeps SLEEP
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_time_plan_is_kept_for_a_resume(tmp_path):
    plan = reflow.time_plan(tmp_path, 2.0, lambda: 0.01)
    assert plan["steps"] == 220 and json.loads((tmp_path / reflow.PLAN_FILE).read_text()) == plan

    def never():
        raise AssertionError("the stored plan must be reused")
    assert reflow.time_plan(tmp_path, 2.0, never) == plan
    assert reflow.time_plan(tmp_path, 3.0, lambda: 0.01)["steps"] == 330  # another budget


def test_train_seconds_of_a_record():
    assert reflow.train_seconds({"metrics": {"train_seconds": 2.5, "seconds": 9.0}}) == 2.5
    assert reflow.train_seconds({"metrics": {"seconds": 9.0}}) == 9.0  # older records


GRID = {"datasets": ["8gaussians"], "seeds": [0, 1],
        "axes": {"K": [1, 2], "regularizer.logdet": ["exact", "hutchinson"],
                 "regularizer.weight": [0.0, 0.1], "window_start_weight": [1.0]},
        "exclude": [{"regularizer.logdet": "hutchinson", "regularizer.weight": 0.0}],
        "equal_time": True}


def test_grid_equal_time_adds_one_twin_per_regularized_point():
    pts = rgrid.expand(GRID)
    plain = rgrid.expand({**GRID, "equal_time": False})
    twins = [p for p in pts if p.equal_time]
    assert pts[:len(plain)] == plain  # the grid's own points are unchanged
    reg = [p for p in plain if dict(p.fields)["regularizer.weight"] > 0]
    assert len(twins) == len(reg) == 8 and len(pts) == len(plain) + len(reg)
    assert len({(p.dataset, p.seed, p.name) for p in pts}) == len(pts)  # names are unique
    by_name = {(p.seed, p.name): p for p in plain}
    for t in twins:
        r, c = by_name[(t.seed, t.equal_time[0])], by_name[(t.seed, t.equal_time[1])]
        assert dict(t.fields) == {**dict(r.fields), "regularizer.weight": 0.0}
        assert dict(c.fields)["regularizer.weight"] == 0.0
        assert dict(c.fields)["K"] == dict(r.fields)["K"]
        assert rgrid.equal_time_of(t.name) == r.name
    t = next(p for p in twins if p.equal_time[0] == "K~2/logdet~hutchinson/lam~0.1/ws~1.0")
    assert t.name == "K~2/logdet~hutchinson/lam~0.0/ws~1.0/budget~time_of_lam_0.1"
    assert t.equal_time[1] == "K~2/logdet~exact/lam~0.0/ws~1.0"  # the one control kept
    assert rgrid.equal_time_of("K~2/lam~0.0/ws~1.0") is None


def test_grid_equal_time_configs_are_controls():
    """A twin's resolved config is its control's (the regularizer off) but for the
    regularizer's unused settings; the budget is set by its job, not in the config."""
    preset = rgrid.load_preset("smoke")
    g = {**GRID, "seeds": [0], "axes": {**GRID["axes"], "K": [2]}}
    pts = rgrid.expand(g)
    cfgs = rgrid.stage_configs(preset, g, pts)
    for t in (p for p in pts if p.equal_time):
        tc = cfgs[("reflow", (t.dataset, t.seed, t.name))]
        cc = cfgs[("reflow", (t.dataset, t.seed, t.equal_time[1]))]
        assert tc["regularizer"]["weight"] == 0.0
        assert {**tc, "regularizer": None} == {**cc, "regularizer": None}
        assert "time_budget_s" not in tc["train"]


@pytest.mark.parametrize("edit,needle", [
    ({"axes": {"K": [1], "regularizer.weight": [0.0]}}, "value > 0"),
    ({"axes": {"K": [1]}}, "value > 0"),
    ({"axes": {"K": [1], "regularizer.weight": [0.1]}}, "has none"),
    ({"exclude": [{"regularizer.weight": 0.0, "K": 2}]}, "K~2/logdet~exact/lam~0.1/ws~1.0 has"),
])
def test_grid_equal_time_needs_controls(edit, needle):
    with pytest.raises(config.ConfigError) as e:
        rgrid.expand({**GRID, "exclude": [], **edit})
    assert e.value.field == "grid.equal_time" and needle in str(e.value)
    assert "allowed:" in str(e.value)


def test_grid_equal_time_schema(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**GRID, "equal_time": "yes"}))
    with pytest.raises(config.ConfigError) as e:
        rgrid.load_grid(str(path))
    assert e.value.field == "grid.equal_time" and "allowed: True, False" in str(e.value)


@pytest.mark.slow  # a whole workflow; the comparison logic is tested on records above
def test_workflow_equal_time(tmp_path):
    """A real Snakemake run of a tiny grid with ``equal_time: true`` (preset smoke, K = 1,
    lam in {0, 0.1}, 2 seeds): each twin's reflow job starts after its regularized student's
    ended, trains for about that student's training seconds, and the report has the table
    with both comparisons."""
    from reflowma.infra.runs import latest_completed, load_runs
    from tests.test_workflow import snakemake

    grid = {"datasets": ["8gaussians"], "seeds": [0, 1],
            "axes": {"K": [1], "regularizer.weight": [0.0, 0.1], "window_start_weight": [1.0]},
            "equal_time": True}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    res = snakemake(tmp_path, "--cores", "2", "--config", "preset=smoke",
                    f"grid={tmp_path / 'g.yaml'}", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    root = tmp_path / "results/smoke"
    runs = load_runs(root / "runs")
    rf = latest_completed(runs, "reflow").set_index("job")
    reg, twin = "K~1/lam~0.1/ws~1.0", "K~1/lam~0.0/ws~1.0/budget~time_of_lam_0.1"
    for seed in (0, 1):
        r, t = rf.loc[f"reflow/8gaussians/seed~{seed}/{reg}"], rf.loc[
            f"reflow/8gaussians/seed~{seed}/{twin}"]
        assert t["start_time"] >= r["stop_time"]  # the DAG: regularized reflow -> twin
        rm = json.loads((root / f"students/8gaussians/seed~{seed}/{reg}/metrics.json")
                        .read_text())["metrics"]
        tm = json.loads((root / f"students/8gaussians/seed~{seed}/{twin}/metrics.json")
                        .read_text())["metrics"]
        assert rm["time_budget_s"] is None and rm["steps_done"] == rm["steps"] == 40
        assert tm["time_budget_s"] == rm["train_seconds"]  # read at job time, exactly
        assert t["config"]["train"]["time_budget_s"] == rm["train_seconds"]  # recorded
        assert tm["steps"] == tm["time_plan"]["steps"] >= tm["steps_done"]
        budget, per_step = tm["time_budget_s"], tm["seconds_per_step"]
        print(f"seed {seed}: budget {budget:.3f} s, twin {tm['train_seconds']:.3f} s, "
              f"{tm['steps_done']}/{tm['steps']} steps ({tm['stopped_by']}), planned at "
              f"{tm['time_plan']['pace_s_per_step']:.4f} s/step, ran {per_step:.4f} s/step")
        # Over: the loop stops at the first step boundary at or past the budget, so by at most
        # one step (3 allow for a step slowed by the shared cores). Under: only when it ran its
        # planned 1.1 x budget / pace steps faster than the pace measured just before in the
        # same process; half the budget would need a 2.2x speed-up.
        assert tm["train_seconds"] <= budget + 3 * per_step
        if tm["stopped_by"] == "time_budget":
            assert tm["train_seconds"] >= budget
        assert tm["train_seconds"] >= 0.5 * budget
    md = (root / "report/tables/8gaussians_equal_time.md").read_text()
    for col in ("vs control", "vs equal time", "at equal steps", "at equal time",
                "worth its cost?", "train s (λ / control / equal time)"):
        assert col in md
    assert f"| {reg} " in md and twin in md
    assert "8gaussians, regularizer vs control at equal steps and at equal time" in (
        root / "report/tables/all.md").read_text()
    et = json.loads((root / "report/equal_time.json").read_text())
    (pt,) = et["points"]
    assert (pt["method"], pt["control"], pt["equal_time"]) == (reg, "K~1/lam~0.0/ws~1.0", twin)
    assert pt["worth_its_cost"] in ("yes", "no", "not shown", "mixed")  # 2 seeds: tested
    w2 = {k: {r["metric"]: r for r in pt[k]["metrics"]}["w2_paired_teacher"]
          for k in ("equal_steps", "equal_time_test")}
    assert all(r["seeds"] == [0, 1] and r["p"] is not None for r in w2.values())
    assert pt["costs"]["equal_time"]["n"] == 2
