"""claims.md verdicts on synthetic run records with known outcomes, and --compare on two
synthetic runs folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from reflowma import cli
from reflowma.report import build_report
from reflowma.report import claims as CL

BASE1, REG1 = "K~1/lam~0.0/ws~1.0", "K~1/lam~0.1/ws~1.0"
BASE2, REG2 = "K~2/lam~0.0/ws~1.0", "K~2/lam~0.1/ws~1.0"


def _result(K, w2, kl, mmd, tm, tele_ok=True):
    return {"K": K, "heldout_tm_loss": tm,
            "nfe": {str(K): {"w2_paired_teacher": w2, "mmd_data": mmd}},
            "audit": {"marginal": {"nfe": {str(K): {"kl_exact": kl, "valid": True}}},
                      "telescoping": {"available": True, "valid": True, "tv_final": 0.2,
                                      "sum_tv": 0.3 if tele_ok else 0.1, "pinsker_sum": 0.4,
                                      "final_le_sum_tv": tele_ok, "sum_tv_le_pinsker": True}}}


def write_runs(root: Path, effect: dict, seeds=(0, 1, 2), tele_ok=True, shift=0.0,
               fd_effect=None) -> Path:
    """Evaluate records; ``effect[K]`` multiplies the regularized point's marginals;
    ``fd_effect[K]``, where given, its ``fd_classifier`` (image data's metric)."""
    rng = np.random.default_rng(0)
    rid = 0
    for seed in seeds:
        for point, K, f in ((BASE1, 1, 1.0), (REG1, 1, effect[1]), (BASE2, 2, 1.0),
                            (REG2, 2, effect[2])):
            rid += 1
            d = root / str(rid)
            d.mkdir(parents=True)
            noise = 1 + 0.01 * rng.standard_normal(3)
            res = _result(K, f * noise[0] + shift, f * noise[1] * 0.5, f * noise[2] * 0.1,
                          0.3 + 0.001 * seed, tele_ok=tele_ok or rid > 1)
            if fd_effect is not None:
                fd = fd_effect[K] if point in (REG1, REG2) else 1.0
                res["nfe"][str(K)]["fd_classifier"] = 100 * fd * (1 + 0.01 * noise[0])
            (d / "run.json").write_text(json.dumps({
                "status": "COMPLETED", "start_time": f"2026-01-01T00:00:{rid:02d}.000000",
                "stop_time": f"2026-01-01T00:01:{rid:02d}.000000", "result": res}))
            (d / "info.json").write_text(json.dumps({
                "job": f"evaluate/8gaussians/seed~{seed}/{point}", "stage": "evaluate"}))
            (d / "config.json").write_text(json.dumps({"seed": seed}))
    return root


def test_verdicts_follow_the_rule(tmp_path):
    # K = 1: the regularizer is worse on every metric; K = 2: better on every metric
    runs = write_runs(tmp_path / "runs", {1: 1.3, 2: 0.7}, tele_ok=False)
    res = build_report(runs, tmp_path / "report", figures=False)
    assert res["claims"] == {"theorem1": "untested", "theorem2": "not supported",
                             "regularizer_vanilla": "not supported",
                             "regularizer_piecewise": "supported"}
    c = json.loads((tmp_path / "report/claims.json").read_text())
    pw = c["regularizer"]["piecewise"]["points"][0]
    assert [m["outcome"] for m in pw["metrics"]] == ["better"] * 3
    assert pw["metrics"][0]["run_ids"] == [4, 8, 12] and pw["control"] == BASE2
    assert c["theorem2"]["n"] == 12 and c["theorem2"]["final_le_sum_tv"] == 11
    md = (tmp_path / "report/claims.md").read_text()
    assert "Rule:" in md and "**supported**" in md and "p < 0.05" in md


def test_fd_classifier_is_a_claim_metric_where_computed(tmp_path):
    """Image grids: fd_classifier is tested beside the other marginal metrics (K = 1: the
    others worse, FD better -> mixed; K = 2: all four better -> supported); toy records have no
    FD row (test_verdicts_follow_the_rule: three metrics)."""
    runs = write_runs(tmp_path / "runs", {1: 1.3, 2: 0.7}, fd_effect={1: 0.7, 2: 0.7})
    res = build_report(runs, tmp_path / "report", figures=False)
    assert res["claims"]["regularizer_vanilla"] == "mixed"
    assert res["claims"]["regularizer_piecewise"] == "supported"
    c = json.loads((tmp_path / "report/claims.json").read_text())
    (v,) = c["regularizer"]["vanilla"]["points"]
    assert [(m["metric"], m["outcome"]) for m in v["metrics"]] == [
        ("kl", "worse"), ("w2_paired_teacher", "worse"), ("mmd_data", "worse"),
        ("fd_classifier", "better")]
    (pw,) = c["regularizer"]["piecewise"]["points"]
    assert [m["outcome"] for m in pw["metrics"]] == ["better"] * 4
    assert "fd_classifier" in (tmp_path / "report/claims.md").read_text()


def test_no_effect_and_one_seed(tmp_path):
    runs = write_runs(tmp_path / "a", {1: 1.0, 2: 1.0})
    c = CL.build(__import__("reflowma.infra.runs", fromlist=["x"]).load_runs(runs),
                 {"8gaussians": [BASE1, REG1, BASE2, REG2]})
    assert c["regularizer"]["piecewise"]["verdict"] in ("not supported", "mixed")
    assert c["theorem2"]["verdict"] == "supported"
    one = write_runs(tmp_path / "b", {1: 0.5, 2: 0.5}, seeds=(0,))
    res = build_report(one, tmp_path / "rb", figures=False)
    assert res["claims"]["regularizer_piecewise"] == "untested"  # one seed: no paired test
    assert CL.combine(["supported", "untested"]) == "supported"
    assert CL.combine(["supported", "not supported"]) == "mixed"


def test_cli_claims_and_compare(tmp_path, capsys):
    a = write_runs(tmp_path / "a/runs", {1: 1.0, 2: 0.7})
    b = write_runs(tmp_path / "b/runs", {1: 1.0, 2: 0.7}, shift=0.5)
    assert cli.main(["report", "--runs", str(b), "--out", str(tmp_path / "b/report"),
                     "--no-figures"]) == 0
    assert cli.main(["report", "--runs", str(a), "--out", str(tmp_path / "a/report"),
                     "--no-figures", "--compare", str(tmp_path / "b/report")]) == 0
    out = capsys.readouterr().out
    assert "theorem1 supported" in out  # the closed-form counterexample, in-process
    cmp = json.loads((tmp_path / "a/report/compare/compare.json").read_text())
    w2 = [r for r in cmp["rows"] if r["metric"] == "w2_paired_teacher"]
    assert len(w2) == 4 and all(abs(r["diff"] + 0.5) < 1e-9 for r in w2)
    assert all(r["p"] is not None and len(r["seeds"]) == 3 for r in w2)
    assert cmp["only_this"] == cmp["only_other"] == []
    md = (tmp_path / "a/report/compare/compare.md").read_text()
    assert "| claim" in md and "8gaussians" in md


def test_cli_bad_counterexample_file_is_an_input_error(tmp_path, capsys):
    # a --counterexample that is not the JSON `reflowma theory counterexample` writes: one line
    # naming the flag and the file, exit 2 (not a traceback from deep inside claims)
    runs = write_runs(tmp_path / "runs", {1: 1.0, 2: 1.0}, seeds=(0,))
    bad = {"not json": "{", "no students": json.dumps({"nfe": [1]}),
           "student without w2": json.dumps({"nfe": [1], "students": {"a": {"tm_loss": 1.0}}})}
    for why, text in bad.items():
        p = tmp_path / f"{len(why)}.json"
        p.write_text(text)
        assert cli.main(["report", "--runs", str(runs), "--out", str(tmp_path / "rep"),
                         "--no-figures", "--counterexample", str(p)]) == 2, why
        err = capsys.readouterr().err
        assert "--counterexample" in err and str(p) in err, (why, err)
    # the file `reflowma theory counterexample` writes passes the same check
    from reflowma.theory import counterexample as ce

    ce.write_counterexample(tmp_path / "ce", ce.DEFAULT_MU, ce.DEFAULT_SIGMA,
                            ce.DEFAULT_ANGLE_DEG, ce.DEFAULT_NFES)
    assert cli.main(["report", "--runs", str(runs), "--out", str(tmp_path / "rep"),
                     "--no-figures", "--counterexample",
                     str(tmp_path / "ce/counterexample.json")]) == 0
    assert "theorem1 supported" in capsys.readouterr().out
