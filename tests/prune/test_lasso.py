"""Input-feature LASSO: features driven exactly to zero, monotone along the penalty path."""

from __future__ import annotations

import numpy as np
import torch

from edge_compress.prune.lasso import drop_input_features, lasso_path, mlp, sklearn_l1_path
from edge_compress.zoo import build_model
from edge_compress.zoo.data import breast_cancer_feature_names, load_dataset
from edge_compress.zoo.train import TrainConfig, predict, train


def test_breast_cancer_path_drops_features_exactly_and_monotonically():
    d = load_dataset("breast_cancer")
    torch.manual_seed(0)
    model = mlp(30, 16, 2)
    train(model, d.x_train, d.y_train, TrainConfig(epochs=10, lr=3e-3))
    penalties = [0.003, 0.03, 0.1, 0.3]
    path = lasso_path(
        model,
        d.x_train,
        d.y_train,
        d.x_test,
        d.y_test,
        penalties,
        epochs=6,
        lr=0.02,
        feature_names=breast_cancer_feature_names(),
    )
    assert path.mode == "linear"
    kept = [s.n_kept for s in path.steps]
    assert kept == sorted(kept, reverse=True) and kept[-1] < 30
    assert path.steps[-1].acc > 0.85
    js = path.to_json()
    assert len(js["path"][-1]["dropped_names"]) == 30 - kept[-1]
    assert all(n in breast_cancer_feature_names() for n in js["path"][-1]["dropped_names"])


def test_dropped_features_are_exact_zeros_and_removable():
    d = load_dataset("breast_cancer")
    torch.manual_seed(0)
    model = mlp(30, 0, 2)  # logistic regression
    path = lasso_path(model, d.x_train, d.y_train, d.x_test, d.y_test, [0.1], epochs=5, lr=0.02)
    (step,) = path.steps
    assert 0 < step.n_kept < 30
    work = path.model
    assert (work.fc1.weight.detach()[:, step.dropped] == 0).all()
    assert (work.fc1.weight.detach()[:, step.kept].norm(dim=0) > 0).all()
    small = drop_input_features(work, step.kept)
    assert small.fc1.in_features == step.n_kept
    np.testing.assert_allclose(predict(small, d.x_test[:, step.kept]), predict(work, d.x_test), atol=1e-5)
    assert (predict(small, d.x_test[:, step.kept]).argmax(1) == d.y_test).mean() == step.acc


def test_gate_mode_on_a_conv_input_and_sklearn_side_by_side():
    d = load_dataset("mnist1d")
    x, y = d.x_train[:400], d.y_train[:400]
    torch.manual_seed(0)
    model = build_model("conv1d")
    path = lasso_path(model, x, y, d.x_test[:200], d.y_test[:200], [0.01, 1.0], epochs=2, lr=0.02)
    assert path.mode == "gate" and path.n_features == 40
    assert path.steps[0].n_kept >= path.steps[1].n_kept and path.steps[1].n_kept < 40
    sk = sklearn_l1_path(d.x_train[:400], y, d.x_test[:200], d.y_test[:200], [1.0, 0.01])
    assert [r["n_kept"] for r in sk] == sorted((r["n_kept"] for r in sk), reverse=True)
