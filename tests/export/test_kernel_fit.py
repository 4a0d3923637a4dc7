"""The per-kernel integer vs float model (``compute.integer_kernels``) and the choice it drives.

On ``host`` (x86 AVX2 without VNNI) onnxruntime's integer convolutions lose to float ones at 8-16
channels and win at 64 and more: ``compute: auto`` must follow the model's layer widths, write the
fast integer file (7-bit weights, recorded) for a wide model and the weight-only file for a narrow
one, and only pick integer where the predicted gain exceeds the kernel model's own error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edge_compress.compiler import ExportOptions, compile_model, resolve_int8_weights
from edge_compress.errors import UserError
from edge_compress.export import kernel_fit as kf
from edge_compress.export.compute import choose
from edge_compress.export.onnx import tiny_layers
from edge_compress.graph import extract_graph
from edge_compress.modelspec import resolve_model
from edge_compress.plan import CompressionPlan
from edge_compress.profiles import IntegerKernels, load_profile


def _point(f_roof: float, out: int, integer_over_float: float) -> kf.KernelPoint:
    return kf.KernelPoint("conv", 8, 8, 3, 0, out, 1.0, integer_over_float, f_roof)


def test_fit_recovers_known_coefficients_under_noise():
    rng = np.random.default_rng(0)
    a, b, c = 0.55, 0.3, 4.0
    pts = []
    for _ in range(40):
        f = float(np.exp(rng.uniform(np.log(0.003), np.log(2.0))))  # kernels of 3 us to 2 ms
        out = int(np.exp(rng.uniform(np.log(500), np.log(200_000))))
        t = a * f + b * out * 1e-6 + c * 1e-3
        pts.append(_point(f, out, t / f * float(rng.normal(1, 0.02))))
    fit = kf.fit(pts)
    assert fit.float_ratio == pytest.approx(a, rel=0.08)
    assert fit.ns_per_output == pytest.approx(b, rel=0.25)
    assert fit.us_per_kernel == pytest.approx(c, rel=0.15)
    assert fit.mape_pct < 5 and fit.points == 40
    prof = fit.to_profile("test")
    assert IntegerKernels(**prof).ratio_error_pct == pytest.approx(fit.mape_pct, abs=0.1)
    with pytest.raises(ValueError, match="at least 3"):
        kf.fit(pts[:2])


def test_measure_point_times_both_files_in_onnxruntime(tmp_path):
    p = kf.measure_point("conv", 16, 8, 3, load_profile("host"), seconds=0.1, workdir=tmp_path)
    assert p.macs == 16 * 16 * 9 * 64 and p.out_elems == 16 * 64
    assert p.float_ms > 0 and p.integer_ms > 0 and p.float_roofline_ms > 0
    assert not any(tmp_path.iterdir())  # the temporary files are gone


def _graph(channels: int, side: int) -> tuple:
    model = nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(),
    ).eval()
    g = extract_graph(model, torch.randn(1, channels, side, side))
    return g, CompressionPlan.uniform(g, "m", "host", 8, 8)


def test_auto_follows_layer_width_on_host():
    host = load_profile("host")
    assert host.compute.integer_kernels is not None
    wide_g, wide_p = _graph(128, 16)
    narrow_g, narrow_p = _graph(8, 16)
    wide = choose("auto", "onnx", host, wide_g, wide_p, tiny_layers(wide_g.layers))
    narrow = choose("auto", "onnx", host, narrow_g, narrow_p, tiny_layers(narrow_g.layers))
    assert wide.compute == "integer" and wide.variant == "qdq" and wide.int8_weights == "int7"
    assert wide.predicted_ms["integer"] < 0.9 * wide.predicted_ms["float"]
    assert "integer_kernels" in wide.basis and "error" in wide.reason
    assert narrow.compute == "float" and narrow.int8_weights is None
    assert narrow.predicted_ms["integer"] > narrow.predicted_ms["float"]
    # a kernel model too uncertain to trust a 40% gain: float, and the reason says why
    ik = host.compute.integer_kernels["onnxruntime"].model_copy(update={"ratio_error_pct": 60.0})
    vague = host.model_copy(
        update={"compute": host.compute.model_copy(update={"integer_kernels": {"onnxruntime": ik}})}
    )
    c = choose("auto", "onnx", vague, wide_g, wide_p, tiny_layers(wide_g.layers))
    assert c.compute == "float" and "less than the kernel model's 60% error" in c.reason
    # ARM profiles have no kernel model: their storage is the plain int8 default
    assert resolve_int8_weights("auto", load_profile("rpi4")) == "int8"
    assert resolve_int8_weights("auto", host) == "int7"
    assert resolve_int8_weights("uint8", host) == "uint8"


def test_bad_integer_kernels_in_a_profile_is_one_line(tmp_path):
    from edge_compress.profiles import load_profile_file

    src = (
        "name: bad\nextends: host\ncompute:\n  integer_kernels:\n    onnxruntime:\n"
        "      float_ratio: -1\n      ns_per_output: 0.2\n      us_per_kernel: 3\n      source: test\n"
    )
    (tmp_path / "bad.yaml").write_text(src)
    with pytest.raises(UserError) as e:
        load_profile_file(tmp_path / "bad.yaml")
    msg = str(e.value)
    assert "\n" not in msg and "float_ratio" in msg


@pytest.fixture(scope="module")
def resnet_auto(tmp_path_factory):
    """resnet (the widest zoo model) compiled for host, int8 everywhere, the cost model's choice
    (not timed here: this tests the prediction, whatever this machine's CPU)."""
    spec = resolve_model("resnet")
    return compile_model(
        spec,
        load_profile("host"),
        method="uniform8",
        formats=("onnx",),
        out_dir=tmp_path_factory.mktemp("rn"),
        options=ExportOptions(measure_compute=False),
    )


def test_widest_zoo_model_gets_the_integer_file_with_recorded_7_bit_weights(resnet_auto):
    m = resnet_auto.manifest
    c = m["compute"]["onnx"]
    assert c["asked"] == "auto" and c["compute"] == "integer" and c["int8_weights"] == "int7"
    (name,) = [n for n, f in m["files"].items() if f["format"] == "onnx"]
    assert name.endswith(".qdq.onnx")
    seven = [f for f in m["fallbacks"] if f["actual"].startswith("w:int7")]
    assert seven and all(f["planned"].startswith("w:int8") for f in seven)
    assert m["parity"][name]["agreement"] >= 0.99
    # asked for a storage: it is used whatever the profile measured
    other = compile_model(
        resolve_model("resnet"),
        load_profile("host"),
        method="uniform8",
        formats=("onnx",),
        out_dir=resnet_auto.path.parent,
        options=ExportOptions(compute="integer", onnx_int8_weights="uint8"),
    )
    assert not [f for f in other.manifest["fallbacks"] if f["actual"].startswith("w:int7")]
