"""Shared fixtures: trained zoo models (cached on disk) and one lenet5 planner for the module tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lenet():
    from edge_compress.graph import extract_graph
    from edge_compress.zoo import load_zoo

    zm = load_zoo("lenet5")
    return zm, extract_graph(zm.model, zm.example_input(2))


@pytest.fixture(scope="session")
def host():
    from edge_compress.profiles import load_profile

    return load_profile("host")


@pytest.fixture(scope="session")
def lenet_planner(lenet, host):
    from edge_compress.quant.planner import Planner

    zm, graph = lenet
    ds = zm.dataset
    return Planner(
        zm.model,
        graph,
        host,
        zm.calibration(128),
        eval_x=ds.x_val,
        eval_y=ds.y_val,
        method="hessian",
        model_name="lenet5",
        hutchinson_samples=4,
        hessian_samples=64,
        noise_samples=128,  # all of the calibration data: the bias corrections are computed on it too
        noise_draws=4,
        fit_plans=6,
    )
