"""The seed's claims as experiments: one ``scripts/reproduce.py --quick`` run (shared by the module) and
checks that each experiment's qualitative result holds, plus the script's outputs and options."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("reproduce_script", ROOT / "scripts" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick run of every claim into a temporary directory: (json, markdown text, figure dir)."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("repro")
    rc = _script().main(
        ["--quick", "--docs", str(d / "reproduction.md"), "--json", str(d / "reproduction.json")]
    )
    assert rc == 0
    return (
        json.loads((d / "reproduction.json").read_text()),
        (d / "reproduction.md").read_text(),
        d / "figures",
    )


def claim(quick, n: int) -> dict:
    return quick[0]["claims"][str(n)]["numbers"]


# ------------------------------------------------------------------------------------------ outputs
@pytest.mark.slow
def test_outputs_have_every_claim_with_figure_verdict_and_command(quick):
    js, md, figs = quick
    assert js["date"] and js["machine"] and js["quick"] is True
    assert sorted(js["claims"], key=int) == [str(i) for i in range(1, 9)]
    for k, c in js["claims"].items():
        assert c["verdict"] in ("holds", "partially holds", "does not hold")
        assert c["figures"], k
        for f in c["figures"]:
            assert (figs / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"](figures/{f})" in md
        assert f"## Claim {k}:" in md
        assert f"python scripts/reproduce.py --only {k} --quick" in md


# ------------------------------------------------------------------------------------------ claims
@pytest.mark.slow
def test_claim1_halving_the_step_divides_the_noise_variance_by_four(quick):
    c = claim(quick, 1)
    assert abs(c["halving_ratio_weights_8bit"] / 4 - 1) <= 0.10
    assert abs(c["halving_ratio_acts_8bit"] / 4 - 1) <= 0.10
    i8, i2 = c["bits"].index(8), c["bits"].index(2)
    assert 0.9 <= c["acts_measured_over_model_nonzero"][i8] <= 1.1  # step^2/12 where values span many steps
    assert 0.85 <= c["weights_live_measured_over_model"][i8] <= 1.15
    s8 = c["stats"]["8"]
    assert abs(s8["w_mean_over_sigma"]) < 0.1 and abs(s8["a_mean_over_sigma"]) < 0.1  # zero mean
    assert abs(s8["w_corr_error_value"]) < 0.05  # independent of the value
    assert c["weights_live_measured_over_model"][i2] < 0.8  # breaks at coarse steps
    assert c["clip_weights_measured_over_model"]["8"][0] > 10  # and under clipping


@pytest.mark.slow
def test_claim2_noise_model_predicts_the_lenet_tradeoff(quick):
    c = claim(quick, 2)
    assert c["sqnr_mae_db_min_bits_ge3"] <= 3.0
    assert c["spearman_sqnr"] >= 0.9
    assert c["acc_mae_pp_min_bits_ge3"] <= 2.0
    assert c["predicted_plans"] > c["fit_plans"]


@pytest.mark.slow
def test_claim3_inception_sensitivity_and_allocation(quick):
    c = claim(quick, 3)
    layers = {r["layer"]: r for r in c["per_layer"]}
    assert {"inc1.b3_reduce", "inc1.b5_reduce", "inc2.b3_reduce", "inc2.b5_reduce", "inc2.b5", "fc"} <= set(
        layers
    )

    # the seed's first half (1x1 bottlenecks tolerate int4) is a measurement, not an assumption: with
    # 540 held-out digits it holds or not depending on the run; check the decision follows the rule
    # (int8 needed when int4 loses > 1 pp and > 2 paired s.e.) and that the verdict reports it
    def tolerant(r):
        return not (r["agree_drop_pp"] > 1.0 and r["agree_drop_pp"] > 2 * r["agree_drop_se_pp"])

    bottlenecks = [r for r in c["per_layer"] if r["role"] == "1x1 bottleneck"]
    assert len(bottlenecks) == 4
    assert c["bottlenecks_tolerate_int4"] == all(tolerant(r) for r in bottlenecks)
    assert c["spatial_needing_int8"] == [
        r["layer"] for r in c["per_layer"] if r["role"] == "spatial 3x3/5x5" and not tolerant(r)
    ]
    if not c["bottlenecks_tolerate_int4"] or c["spatial_needing_int8"] != c["spatial_layers"]:
        assert quick[0]["claims"]["3"]["verdict"] != "holds"
    assert "fc" in c["measured_sensitivity_order"][:3]
    rule = c["comparisons"][0]
    for name, p in rule["plans"].items():
        assert p["bytes"] <= rule["budget_bytes"] + 1e-6, name
    assert c["mixed_beats_uniform_at_equal_bytes"]


@pytest.mark.slow
def test_claim4_failure_falls_with_redundancy_and_matches_montecarlo(quick):
    c = claim(quick, 4)
    assert c["group"]["matches"] and c["group"]["decreasing_in_k"]
    assert c["network"]["decreasing_in_k"]
    net = c["network"]
    hi = net["ps"].index(max(net["ps"]))
    assert net["mc"]["redistributed"]["4"][hi] < net["mc"]["redistributed"]["1"][hi]
    assert c["widening_max_logit_diff"] < 1e-4
    assert c["pruned_widened_acc"] == pytest.approx(c["pruned_scaled_acc"], abs=1e-9)


@pytest.mark.slow
def test_claim5_group_lasso_ends_within_5pct_of_the_flops_budget(quick):
    c = claim(quick, 5)
    assert all(c["final_within_tolerance"])
    assert all(c["default_reached_budget"])
    assert all(c["multiplier_rose"])
    for r in c["runs"]:
        assert {"loss", "flops_ratio", "multiplier"} <= set(r["trajectory"][0])


@pytest.mark.slow
def test_claim6_trained_layers_are_lower_rank_than_untrained(quick):
    c = claim(quick, 6)
    for t in c["trends"].values():
        assert t["below_untrained"]
        assert len(t["rank90_frac"]) == len(c["widths"])


@pytest.mark.slow
def test_claim7_lasso_zero_count_is_monotone_and_exact(quick):
    c = claim(quick, 7)
    assert all(c["monotone"].values())
    assert c["classical_zeros_monotone"]
    for k, p in c["paths"].items():
        assert c["exact_zero_features_final"][k] >= len(p["dropped_last"]), k
    bc = c["compact_within_2pp"]["breast_cancer/logistic"]
    assert bc["n_kept"] < 30


@pytest.mark.slow
def test_claim8_imm_probability_rises_after_the_change_point(quick):
    c = claim(quick, 8)
    s = c["synthetic"]
    assert s["mean_p_before"] < 0.2 and s["mean_p_during"] > 0.9
    assert s["delay_samples"] is not None and 0 <= s["delay_samples"] <= 15
    assert not s["episodes_alarmed_before_change"]
    m = c["measured"]
    assert len(m["samples_ms"]) == len(m["probs"]) > m["stop"]
    assert 1 <= m["attempts"] <= 3 and len(m["discarded_attempts"]) == m["attempts"] - 1
    # the load bit (it always does on a quiet machine), and the machine did not slow the unloaded
    # part on its own in all three attempts (judged on the latencies, not on the detector)
    if m["latency_ratio"] >= 1.3 and m["baseline_steady"]:
        assert m["mean_p_during"] > m["mean_p_before"] + 0.3


# ------------------------------------------------------------------------------------------ script, helpers
def test_only_rejects_unknown_claims():
    from edge_compress.errors import UserError

    mod = _script()
    assert mod.parse_only("3,1") == [1, 3]
    with pytest.raises(UserError, match="no claim 9"):
        mod.parse_only("9")
    with pytest.raises(UserError, match="claim numbers"):
        mod.parse_only("one")
    assert mod.main(["--only", "9"]) == 2


def test_claim_result_round_trips_and_only_keeps_other_claims(tmp_path, monkeypatch):
    from edge_compress import repro
    from edge_compress.repro.common import ClaimResult, Context

    def fake(n: int, ctx: Context) -> ClaimResult:
        return ClaimResult(
            n,
            f"t{n}",
            "q",
            "c",
            "m",
            "holds",
            "r",
            {"x": np.float64(1.5), "nan": float("nan")},
            [],
            [{"a": 1}],
        )

    mod = _script()
    monkeypatch.setattr(repro, "run_claim", fake)
    paths = ["--docs", str(tmp_path / "r.md"), "--json", str(tmp_path / "r.json"), "--quick"]
    assert mod.main(["--only", "1,2", *paths]) == 0
    assert mod.main(["--only", "2", *paths]) == 0
    js = json.loads((tmp_path / "r.json").read_text())
    assert sorted(js["claims"]) == ["1", "2"]
    assert js["claims"]["1"]["numbers"] == {"x": 1.5, "nan": None}
    r = ClaimResult.from_json(1, js["claims"]["1"])
    assert (r.title, r.verdict, r.table) == ("t1", "holds", [{"a": 1}])
    md = (tmp_path / "r.md").read_text()
    assert "## Claim 1: t1" in md and "## Claim 2: t2" in md
    with pytest.raises(ValueError, match="verdict"):
        ClaimResult(1, "t", "q", "c", "m", "maybe", "r")


def test_a_failing_experiment_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    from edge_compress import repro
    from edge_compress.repro.common import ERROR, ClaimResult, Context

    def flaky(n: int, ctx: Context) -> ClaimResult:
        if n == 2:
            raise ImportError("cannot import name 'x' from 'edge_compress.prune.cost'")
        return ClaimResult(n, f"t{n}", "q", "c", "m", "holds", "r", {}, [], [])

    monkeypatch.setattr(repro, "run_claim", flaky)
    js_path = tmp_path / "r.json"
    assert _script().main(["--only", "1,2,3", "--docs", str(tmp_path / "r.md"), "--json", str(js_path)]) == 1
    js = json.loads(js_path.read_text())
    assert js["verdicts"] == {"1": "holds", "2": ERROR, "3": "holds"}
    assert "ImportError" in js["claims"]["2"]["verdict_reason"]
    assert "--only 2" in (tmp_path / "r.md").read_text()
    assert "experiment(s) failed" in capsys.readouterr().err


def test_widened_lenet_computes_the_same_function():
    from edge_compress.repro.c4_redundancy import widen_lenet
    from edge_compress.zoo import build_model

    torch.manual_seed(0)
    m = build_model("lenet5").eval()
    x = torch.rand(4, 1, 32, 32)
    for k in (2, 3):
        w = widen_lenet(m, k)
        assert w.c3.weight.shape[0] == 16 * k
        with torch.no_grad():
            torch.testing.assert_close(w(x), m(x), atol=1e-5, rtol=1e-5)
