"""Small real CNNs for the cost-model tests: built with torch, exported to ONNX (QDQ for int8/int4)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any


def small_cnn(rng: random.Random, residual: bool = False) -> tuple[Any, Any]:
    """A sequential 2-D CNN (1-3 convolutions of random width and kernel, an optional max pool and
    residual block) with a linear head, and an example input."""
    import torch
    from torch import nn

    class Res(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv1, self.relu1 = nn.Conv2d(c, c, 3, 1, 1), nn.ReLU()
            self.conv2, self.relu2 = nn.Conv2d(c, c, 3, 1, 1), nn.ReLU()

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.relu2(x + self.conv2(self.relu1(self.conv1(x))))

    cin, size = rng.choice([1, 3]), rng.choice([16, 24, 32])
    layers: list[nn.Module] = []
    c, s = cin, size
    for i in range(rng.randint(1, 3)):
        k = rng.choice([1, 3, 5]) if i else rng.choice([3, 5])
        cout = rng.choice([4, 8, 12, 16, 24, 32, 48])
        layers += [nn.Conv2d(c, cout, k, 1, k // 2), nn.ReLU()]
        c = cout
        if s >= 16 and rng.random() < 0.4:
            layers.append(nn.MaxPool2d(2))
            s //= 2
    if residual:
        layers.append(Res(c))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]
    torch.manual_seed(rng.randint(0, 10_000))
    return nn.Sequential(*layers).eval(), torch.zeros(1, cin, size, size)


def export(model: Any, x: Any, path: Path, bits: int | None) -> tuple[Path, Any, Any]:
    """Write ``model`` as ONNX (float, or QDQ with ``bits``-bit weights and 8-bit activations);
    returns (path, graph, plan) with the plan the file was made from."""
    import torch

    from edge_compress.costmodel_export import export_candidate
    from edge_compress.graph import extract_graph
    from edge_compress.plan import CompressionPlan

    graph = extract_graph(model, x)
    plan = None if bits is None else CompressionPlan.uniform(graph, "t", "host", bits, 8)
    calib = torch.randn(8, *x.shape[1:]).numpy()
    export_candidate(model, plan, calib, path, use_project=False)
    return path, graph, plan
