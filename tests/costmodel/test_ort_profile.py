"""The onnxruntime profiler trace of a tiny real model: parsing and attribution to kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edge_compress.costmodel import kernels_of
from edge_compress.costmodel_export import export_candidate
from edge_compress.costmodel_ort import (
    LAYER_OPS,
    attribute_to_kernels,
    parse_ort_profile,
    profile_onnx,
    time_interleaved,
    time_paired,
)
from edge_compress.graph import extract_graph
from edge_compress.plan import CompressionPlan


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = _Tiny().eval()
    x = torch.randn(1, 3, 16, 16)
    graph = extract_graph(model, x)
    calib = torch.randn(8, 3, 16, 16).numpy()
    d = tmp_path_factory.mktemp("onnx")
    fp32, _ = export_candidate(model, None, calib, d / "fp32.onnx", use_project=False)
    plan = CompressionPlan.uniform(graph, "tiny", "host", 8, 8)
    int8, how = export_candidate(model, plan, calib, d / "int8.onnx", use_project=False)
    assert "quantize_static" in how
    return graph, plan, fp32, int8


def test_parse_real_trace(tiny, tmp_path: Path) -> None:
    import onnxruntime as ort

    _, _, fp32, _ = tiny
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "trace")
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(fp32), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    for _ in range(7):
        sess.run(None, {sess.get_inputs()[0].name: x})
    trace = sess.end_profiling()
    prof = parse_ort_profile(trace)
    assert prof.runs == 7 and prof.run_us is not None and prof.run_us > 0
    assert all(o.runs == 7 and o.dur_us >= 0 for o in prof.ops)
    assert [o.order for o in prof.ops] == sorted(o.order for o in prof.ops)
    layer_ops = [o for o in prof.ops if o.op_type in LAYER_OPS]
    assert len(layer_ops) == 3  # two convolutions and the Gemm, whatever ORT fused around them
    conv = next(o for o in layer_ops if o.op_type == "Conv")
    assert conv.input_shapes[0][0] == "float" and len(conv.input_shapes[0][1]) == 4
    # the same events as a loaded list parse the same way
    import json

    again = parse_ort_profile(json.loads(Path(trace).read_text()))
    assert [(o.name, o.dur_us) for o in again.ops] == [(o.name, o.dur_us) for o in prof.ops]


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_attribution_covers_every_kernel(tiny, which: str) -> None:
    graph, plan, fp32, int8 = tiny
    path = fp32 if which == "fp32" else int8
    ks = kernels_of(graph, None if which == "fp32" else plan)
    prof = profile_onnx(path, runs=20, warmup=2)
    if which == "int8":
        assert any(o.op_type in ("QLinearConv", "QGemm") for o in prof.ops)  # QDQ folded into integer kernels
    times, prologue, match = attribute_to_kernels(prof, ks)
    assert set(match) == {"conv1", "conv2", "fc"}
    assert match["fc"].endswith("Gemm") or "fc" in match["fc"]
    assert all(times[k] > 0 for k in ("conv1", "conv2", "fc"))
    assert times["(io)"] == pytest.approx(prologue)
    # everything the profiler timed is charged somewhere (minus the per-node profiler overhead)
    overhead = 0.9 * min(o.dur_us for o in prof.ops)
    expected = sum(max(0.2, o.dur_us - overhead) for o in prof.ops) / 1e3
    assert sum(times.values()) == pytest.approx(expected, rel=1e-6)


def test_timing_helpers(tiny) -> None:
    _, _, fp32, int8 = tiny
    samples = time_interleaved([fp32, int8], rounds=2, per_round=3, warmup=1)
    assert {len(v) for v in samples.values()} == {6}
    paired, ref_med = time_paired([int8], fp32, rounds=2, per_round=3)
    pt = paired[str(int8)]
    assert len(pt.samples_ms) == len(pt.reference_ms) == 6 and ref_med > 0 and pt.ratio_median() > 0


def test_calibrate_here(tiny, host) -> None:
    from edge_compress.costmodel import CostModel
    from edge_compress.costmodel_ort import calibrate_here

    graph, plan, fp32, int8 = tiny
    cm = CostModel(host, target="local")
    items = [(fp32, kernels_of(graph), "tiny-fp32"), (int8, kernels_of(graph, plan), "tiny-int8")]
    info = calibrate_here(cm, items, rounds=2, per_round=3, profile_runs=5)
    assert cm.calibrated and info["model_rows"] == 2 and info["kernel_rows"] >= 6
    assert cm.fit_info["call_overhead_ms"] > 0
    assert {o["label"] for o in cm.observations} == {"tiny-fp32", "tiny-int8"}
    assert cm.predict(graph, plan).calibrated and cm.predict(graph, plan).latency_ms > 0
