"""Shared activation grids: an Inception block's 1x1 convs read ``x`` and its pool branch reads
``maxpool(x)``; integer runtimes keep one grid through a max-pool (XNNPACK refuses a MAX_POOL_2D
whose input and output grids differ), so the simulation gives those layers one quantizer, and the
files use it. The global average pool's input is quantized in the files, so in the simulation too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edge_compress.quant import fakequant as fq


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.a = nn.Conv2d(4, 4, 1)
        self.pool = nn.MaxPool2d(3, 1, 1)
        self.b = nn.Conv2d(4, 4, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        y = torch.cat([self.a(x), self.b(self.pool(x))], dim=1)
        return self.fc(torch.flatten(self.gap(y), 1))


def test_layers_reading_one_tensor_through_a_max_pool_share_a_quantizer():
    torch.manual_seed(0)
    model = _Block().eval()
    names = ["stem", "a", "b", "fc"]
    pts = fq.activation_points(model, names)
    assert pts.groups == [["stem"], ["a", "b"], ["fc"], ["gap"]]
    assert pts.pools == {"fc": "gap"}
    x = np.random.default_rng(0).normal(size=(16, 1, 8, 8)).astype(np.float32)
    ranges = fq.calibrate_activations(model, names, x, "mse")
    assert ranges["a"] == ranges["b"] and ranges["a"] != ranges["stem"]
    acts = fq.collect_inputs(model, ["a", "b"], x)  # the shared range is calibrated on both inputs
    assert ranges["a"] == fq._range(np.concatenate([acts["a"], acts["b"]]), "mse", 8)
    # on a shared grid, quantizing after the max-pool is quantizing before it (what the file does)
    aq = fq.act_quant_from_range(*ranges["a"], 8)
    h = torch.relu(model.stem(torch.from_numpy(x)))
    assert torch.equal(aq.fake(model.pool(h)), model.pool(aq.fake(h)))


def test_simulation_quantizes_the_global_pool_input():
    torch.manual_seed(0)
    model = _Block().eval()
    x = np.random.default_rng(1).normal(size=(16, 1, 8, 8)).astype(np.float32)
    from edge_compress.graph import extract_graph
    from edge_compress.plan import CompressionPlan

    plan = CompressionPlan.uniform(extract_graph(model, torch.from_numpy(x[:2])), "block", "host", 8, 8)
    spec = fq.compute_quant_spec(model, plan, x)
    assert spec["fc"].pool == "gap" and spec["fc"].pool_act is not None
    assert spec["a"].act == spec["b"].act
    seen: list[torch.Tensor] = []
    sim = fq.simulate(model, spec)
    sim.gap.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    with torch.no_grad():
        sim(torch.from_numpy(x))
    aq = spec["fc"].pool_act
    q = seen[0] / aq.scale + aq.zero_point
    assert torch.allclose(q, torch.round(q), atol=1e-3)  # on the pool's input grid


@pytest.mark.slow
@pytest.mark.tflite
def test_inception_compiles_and_all_files_agree(host, tmp_path):
    from edge_compress.compiler import ExportOptions, compile_model
    from edge_compress.export.parity import TfliteRunner
    from edge_compress.export.tflite import _opname, read_tflite
    from edge_compress.graph import extract_graph
    from edge_compress.modelspec import resolve_model
    from edge_compress.plan import CompressionPlan

    spec = resolve_model("inception")
    plan = CompressionPlan.uniform(
        extract_graph(spec.model, spec.example_input(2)), "inception", "host", 8, 8
    )
    art = compile_model(
        spec,
        host,
        plan=plan,
        out_dir=tmp_path,
        parity_gate=False,
        options=ExportOptions(calibration_samples=64, compute="integer"),
    )
    m = art.manifest
    assert set(m["files"]) == {"inception.qdq.onnx", "inception.int8.tflite", "inception.int8-full.tflite"}
    for name, rep in m["parity"].items():
        assert rep["agreement"] >= 0.99, (name, rep)
        # every quantization point of the files is in the simulation: the outputs match closely
        # (before the shared grids and the pool input: about 32 dB in TFLite)
        assert rep["sqnr_db"] > 45, (name, rep)
    for variant in ("int8", "int8-full"):
        path = art.file("tflite", variant)
        TfliteRunner(path)  # loads with XNNPACK
        model_t = read_tflite(path.read_bytes())
        sg = model_t.subgraphs[0]
        pools = [op for op in sg.operators if _opname(model_t, op) == "MAX_POOL_2D"]
        assert len(pools) >= 3
        for op in pools:
            qi, qo = sg.tensors[op.inputs[0]].quantization, sg.tensors[op.outputs[0]].quantization
            assert list(qi.scale) == list(qo.scale) and list(qi.zeroPoint) == list(qo.zeroPoint)
