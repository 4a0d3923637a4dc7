"""The compiler's pruning stage: settings, budgets from the profile, data requirements, the record."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from edge_compress.compiler import CompileContext, resolve_transforms
from edge_compress.errors import BudgetError, UserError
from edge_compress.graph import extract_graph
from edge_compress.modelspec import resolve_model
from edge_compress.profiles import load_profile
from edge_compress.prune.config import PruneConfig, parse_prune, resolve_prune
from edge_compress.prune.stage import run_prune


@pytest.fixture(scope="module")
def spec():
    return resolve_model("lenet5")


def _ctx(spec, dataset=None) -> CompileContext:
    s = dataclasses.replace(spec, dataset=dataset) if dataset is not None else spec
    g = extract_graph(s.model, s.example_input(2))
    return CompileContext(s, load_profile("host"), s.model, g, s.calibration(64))


def _unlabelled(spec):
    ds = spec.dataset
    return dataclasses.replace(ds, y_train=np.zeros(0, dtype=np.int64))


def test_parse_prune():
    assert parse_prune(None) is None
    c = parse_prune("flops=50%,method=l1,finetune=0,channel_multiple=16")
    assert (c.flops, c.method, c.finetune_epochs, c.channel_multiple) == (0.5, "l1", 0, 16)
    assert not c.needs_data and parse_prune("flops=0.5").needs_data
    assert parse_prune(None, flops=0.4).flops == 0.4 and parse_prune(None, flops=0.4).source == "--flops"
    assert parse_prune("method=gl", flops=0.4).method == "group_lasso"
    assert parse_prune("none").enabled is False
    assert parse_prune("flops=0.5").to_json() == parse_prune(None, flops=0.5).to_json()


@pytest.mark.parametrize(
    ("text", "flops", "msg"),
    [
        ("flops=1.5", None, r"in \(0, 1\]"),
        ("flops=0", None, r"in \(0, 1\]"),
        ("flops=half", None, "expected a number"),
        ("method=magic", None, "group_lasso or l1"),
        ("speed=2", None, "unknown key 'speed'"),
        ("flops", None, "expected KEY=VALUE"),
        ("flops=0.5,flops=0.4", None, "given twice"),
        ("flops=0.5", 0.4, "disagree"),
        ("finetune=-1,flops=0.5", None, "finetune must be >= 0"),
        ("channel_multiple=0,flops=0.5", None, "1 to 256"),
        ("none", 0.5, "contradict"),
    ],
)
def test_bad_prune_settings_are_one_line_user_errors(text, flops, msg):
    with pytest.raises(UserError, match=msg) as e:
        parse_prune(text, flops)
    assert "\n" not in str(e.value)


def test_budget_and_channel_multiple_come_from_the_profile():
    host = load_profile("host")
    assert host.compute.channel_multiple == 8
    assert resolve_prune(None, host, None) is None  # no FLOPs budget anywhere: no pruning
    lean = host.with_budget(flops_ratio=0.6)
    r = resolve_prune(None, lean, None)  # the profile's budget prunes without --prune
    assert (r.flops, r.method, r.channel_multiple) == (0.6, "group_lasso", 8)
    assert "budgets.flops_ratio" in r.source
    assert resolve_prune(PruneConfig(enabled=False), lean, None) is None  # --prune none
    r = resolve_prune(PruneConfig(method="l1", channel_multiple=1), lean, None)
    assert (r.flops, r.method, r.channel_multiple) == (0.6, "l1", 1)
    assert resolve_prune(PruneConfig(flops=0.4), lean, None).flops == 0.4  # explicit wins over the profile
    assert resolve_prune(None, host, {"flops_ratio": 0.7}).flops == 0.7  # --budget flops=0.7
    assert resolve_prune(None, lean, {"model_bytes": 1000}) is None  # --budget replaces the profile's budgets
    with pytest.raises(UserError, match="disagree"):
        resolve_prune(PruneConfig(flops=0.4), host, {"flops_ratio": 0.7})
    with pytest.raises(UserError, match="needs a FLOPs budget"):
        resolve_prune(PruneConfig(), host, None)
    run = resolve_transforms({"prune": PruneConfig(flops=0.5)}, host, None)
    assert list(run) == ["prune"] and run["prune"].channel_multiple == 8
    with pytest.raises(UserError, match="unknown transform"):
        resolve_transforms({"distill": object()}, host, None)


def test_group_lasso_without_labelled_data_is_a_clear_error(spec):
    ctx = _ctx(spec, _unlabelled(spec))
    with pytest.raises(UserError, match="needs labelled training data") as e:
        run_prune(ctx, PruneConfig(flops=0.5, channel_multiple=1))
    assert "method=l1,finetune=0" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="needs labelled training data"):
        run_prune(ctx, PruneConfig(flops=0.5, method="l1", finetune_epochs=2, channel_multiple=1))
    assert ctx.model is spec.model  # nothing was replaced


def test_one_shot_l1_without_data_prunes_physically(spec):
    ctx = _ctx(spec, _unlabelled(spec))
    before = {k: v.clone() for k, v in spec.model.state_dict().items()}
    rec = run_prune(ctx, PruneConfig(flops=0.5, method="l1", finetune_epochs=0, channel_multiple=1))
    assert all(torch.equal(before[k], v) for k, v in spec.model.state_dict().items())  # input untouched
    assert ctx.model is not spec.model and ctx.graph.total_macs == rec["flops"]["after"]
    assert 0.5 * 0.95 <= rec["flops"]["ratio"] <= 0.5
    assert rec["params"]["after"] < rec["params"]["before"] == 61706
    assert rec["accuracy"]["before_finetune"] == rec["accuracy"]["after_finetune"]  # not fine-tuned
    for name, c in rec["channels"].items():
        assert ctx.graph.layer(name).out_channels == c["after"] <= c["before"]
        if name in rec["kept"]:
            assert len(rec["kept"][name]) == c["after"] < c["before"]
    assert "out" in rec["skipped"] and rec["channels"]["out"] == {"before": 10, "after": 10}
    with torch.no_grad():
        assert ctx.model(spec.example_input(3)).shape == (3, 10)


@pytest.mark.slow
def test_group_lasso_stage_fine_tunes_and_aligns_channels(spec):
    ctx = _ctx(spec)
    rec = run_prune(ctx, PruneConfig(flops=0.5, epochs=3, finetune_epochs=1, channel_multiple=8))
    assert rec["method"] == "group_lasso" and 1 <= len(rec["trajectory"]) <= 3
    assert rec["flops"]["ratio"] <= 0.5 and rec["params"]["ratio"] < 1
    # c3 (16) and f5 (120) are multiples of 8: their kept counts are too; c1 (6) is narrower than one block
    assert rec["channels"]["c3"]["after"] % 8 == 0 and rec["channels"]["f5"]["after"] % 8 == 0
    acc = rec["accuracy"]
    assert acc["original"] > 0.95 and acc["after_finetune"] > 0.9
    assert acc["after_finetune"] >= acc["before_finetune"] - 0.01


def test_impossible_budget_names_the_minimum(spec):
    ctx = _ctx(spec)
    with pytest.raises(BudgetError, match="ask for at least"):
        run_prune(ctx, PruneConfig(flops=0.01, method="l1", finetune_epochs=0))


def test_the_planner_does_not_see_a_flops_budget_pruning_met():
    from edge_compress.compiler import _planner_budget

    lean = load_profile("host").with_budget(flops_ratio=0.5)
    run = {"prune": PruneConfig(flops=0.5)}
    assert "flops_ratio" not in _planner_budget(None, lean, run)
    assert _planner_budget(None, lean, run)["latency_p99_ms"] == lean.budgets.latency_p99_ms
    assert _planner_budget({"flops_ratio": 0.5, "model_bytes": 9000}, lean, run) == {"model_bytes": 9000}
    # without pruning the FLOPs budget stays: the planner notes that it does not enforce it
    assert _planner_budget({"flops_ratio": 0.5}, lean, {}) == {"flops_ratio": 0.5}
