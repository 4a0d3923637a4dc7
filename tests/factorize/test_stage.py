"""The compiler's factorization stage: settings, ranks per layer, the smaller model and its record."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from edge_compress.compiler import CompileContext
from edge_compress.errors import BudgetError, UserError
from edge_compress.factorize.config import FactorizeConfig, parse_factorize
from edge_compress.factorize.stage import run_factorize
from edge_compress.graph import extract_graph
from edge_compress.modelspec import resolve_model
from edge_compress.profiles import load_profile


@pytest.fixture(scope="module")
def spec():
    return resolve_model("lenet5")


def _ctx(spec, dataset=None) -> CompileContext:
    s = dataclasses.replace(spec, dataset=dataset) if dataset is not None else spec
    g = extract_graph(s.model, s.example_input(2))
    return CompileContext(s, load_profile("host"), s.model, g, s.calibration(64))


def test_parse_factorize():
    assert parse_factorize(None) is None
    c = parse_factorize("energy=0.95")
    assert (c.mode, c.value, c.how, c.finetune_epochs) == ("energy", 0.95, "auto", 2)
    c = parse_factorize("params=60%,how=channel,finetune=0")
    assert (c.mode, c.value, c.how, c.finetune_epochs, c.needs_data) == ("params", 0.6, "channel", 0, False)
    assert parse_factorize("flops=0.7").mode == "flops"


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("energy=0.9,params=0.5", "exactly one of"),
        ("how=spatial", "exactly one of"),
        ("energy=1.2", r"in \(0, 1\]"),
        ("params=0", r"in \(0, 1\]"),
        ("energy=0.9,how=tucker", "auto, spatial or channel"),
        ("energy=0.9,rank=3", "unknown key 'rank'"),
        ("energy=0.9,finetune=x", "whole number"),
    ],
)
def test_bad_factorize_settings_are_one_line_user_errors(text, msg):
    with pytest.raises(UserError, match=msg) as e:
        parse_factorize(text)
    assert "\n" not in str(e.value)


def test_energy_ranks_replace_layers_by_two_smaller_ones(spec):
    ctx = _ctx(spec)
    rec = run_factorize(ctx, FactorizeConfig("energy", 0.9, finetune_epochs=0))
    assert rec["layers"], rec["skipped"]
    names = set(ctx.graph.names)
    for name, d in rec["layers"].items():
        assert 1 <= d["rank"] < d["full_rank"]
        assert set(d["into"]) <= names and name not in names
        assert d["weight_params"]["after"] < d["weight_params"]["before"]
        first = ctx.graph.layer(d["into"][0])
        assert first.out_channels == d["rank"]
    assert rec["params"]["after"] < rec["params"]["before"]
    assert rec["flops"]["after"] == ctx.graph.total_macs < rec["flops"]["before"]
    assert set(rec["layers"]) | set(rec["skipped"]) == {"c1", "c3", "f5", "f6", "out"}
    assert rec["accuracy"]["before_finetune"] == rec["accuracy"]["after_finetune"] > 0.8
    with torch.no_grad():
        out = ctx.model(spec.example_input(4))
    assert out.shape == (4, 10)
    # at full energy nothing is factorized that would not save anything, and the model is unchanged
    ctx1 = _ctx(spec)
    rec1 = run_factorize(ctx1, FactorizeConfig("energy", 1.0, finetune_epochs=0))
    assert rec1["layers"] == {} and ctx1.model is spec.model


def test_params_budget_is_met_and_fine_tuning_needs_labels(spec):
    ctx = _ctx(spec)
    rec = run_factorize(ctx, FactorizeConfig("params", 0.5, finetune_epochs=1))
    weights = sum(li.weight_params for li in ctx.graph.layers)
    before = sum(li.weight_params for li in _ctx(spec).graph.layers)
    assert weights <= 0.5 * before
    assert rec["accuracy"]["after_finetune"] > 0.9
    with pytest.raises(BudgetError, match="ask for at least"):
        run_factorize(_ctx(spec), FactorizeConfig("params", 0.01, finetune_epochs=0))
    unlabelled = dataclasses.replace(spec.dataset, y_train=np.zeros(0, dtype=np.int64))
    with pytest.raises(UserError, match="needs labelled training data") as e:
        run_factorize(_ctx(spec, unlabelled), FactorizeConfig("energy", 0.9))
    assert "finetune=0" in str(e.value)
    assert run_factorize(_ctx(spec, unlabelled), FactorizeConfig("energy", 0.9, finetune_epochs=0))["layers"]
