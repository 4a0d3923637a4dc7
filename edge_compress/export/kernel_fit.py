"""Measure how a runtime's integer kernels compare with its float ones on this CPU, per kernel shape.

Whether an integer (QDQ) file beats its float export depends on the layers' widths: on an x86 CPU
with AVX2 but without VNNI, onnxruntime's int8 convolutions at 8-16 channels lose to the float
NCHWc kernels (the quantize / requantize steps and Q/DQ nodes cost more than the MACs save), while
at 64-128 channels they run at about half the float time. One scalar speedup per runtime cannot
say which side a model falls on; this module fits a per-kernel model instead::

    integer_ms = float_ratio * float_ms + ns_per_output * out_elems * 1e-6 + us_per_kernel * 1e-3

where ``float_ms`` is the kernel's float time as the cost model predicts it (the profile's roofline,
:func:`edge_compress.costmodel.roofline_ms`). Each grid point (a convolution, depthwise convolution
or matmul followed by ReLU) is exported as a float ONNX file and as a QDQ file made by onnxruntime's
own static quantizer (per-channel int8 weights; ``reduce_range`` for the 7-bit grid), both timed in
onnxruntime with one thread, in alternation; the measured integer / float ratio is carried onto the
roofline's scale (target ``ratio * float_roofline_ms``) and the three coefficients are fitted by
non-negative least squares on relative error. Each point is also timed with int4 weights
(onnxruntime dequantizes them and runs float convolutions between activation Q/DQ pairs): their
median time over float is ``int4_float_ratio``. The result goes into a profile's
``compute.integer_kernels.<runtime>``.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edge_compress.profiles import DeviceProfile

# (kind, channels, spatial side, kernel side)
FULL_GRID: tuple[tuple[str, int, int, int], ...] = tuple(
    [("conv", c, h, k) for c, h, k in itertools.product((8, 16, 32, 64, 128), (8, 16, 32), (1, 3))]
    + [("depthwise_conv", c, h, 3) for c, h in itertools.product((16, 64, 128), (8, 16))]
    + [("linear", c, 1, 1) for c in (64, 256, 1024)]
)
QUICK_GRID: tuple[tuple[str, int, int, int], ...] = (
    ("conv", 8, 8, 3),
    ("conv", 16, 16, 3),
    ("conv", 64, 16, 3),
    ("conv", 64, 8, 1),
    ("linear", 256, 1, 1),
)


@dataclass(frozen=True)
class KernelPoint:
    kind: str
    channels: int
    side: int
    ksize: int
    macs: int
    out_elems: int
    float_ms: float  # measured
    integer_ms: float  # measured
    float_roofline_ms: float  # the cost model's float prediction
    int4_ms: float | None = None  # measured, int4 weights (onnxruntime has no int4 convolution kernel)

    @property
    def ratio(self) -> float:
        return self.integer_ms / self.float_ms


def _module(kind: str, c: int, k: int) -> Any:
    from torch import nn

    if kind == "linear":
        return nn.Sequential(nn.Linear(c, c), nn.ReLU())
    groups = c if kind == "depthwise_conv" else 1
    return nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2, groups=groups), nn.ReLU())


def measure_point(
    kind: str,
    channels: int,
    side: int,
    ksize: int,
    profile: DeviceProfile,
    int8_weights: str = "int7",
    seconds: float = 1.0,
    workdir: Path | None = None,
) -> KernelPoint:
    """Time one kernel as a float ONNX file and as onnxruntime's QDQ files (``int8_weights`` and
    int4 weights), interleaved in this process with one thread
    (:func:`edge_compress.costmodel_ort.time_interleaved`)."""
    import torch

    from edge_compress.costmodel import kernels_of, roofline_ms
    from edge_compress.costmodel_ort import time_interleaved
    from edge_compress.graph import extract_graph
    from edge_compress.plan import CompressionPlan

    torch.manual_seed(0)
    model = _module(kind, channels, ksize).eval()
    shape = (1, channels) if kind == "linear" else (1, channels, side, side)
    x = torch.randn(32, *shape[1:])
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        fp, qp, q4 = Path(d) / "f.onnx", Path(d) / "q.onnx", Path(d) / "q4.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x[:1],),
                str(fp),
                input_names=["x"],
                output_names=["y"],
                opset_version=21,
                dynamo=False,
            )
        calib = x.numpy()
        _quantize(fp, qp, calib, int8_weights)
        _quantize(fp, q4, calib, "int4")
        timed = time_interleaved([fp, qp, q4], rounds=100_000, per_round=10, max_seconds=seconds)
        f_ms, q_ms, q4_ms = (float(np.median(timed[str(p)])) for p in (fp, qp, q4))
    graph = extract_graph(model, x[:1])
    plan = CompressionPlan.uniform(graph, "kernel", profile.name, None, None)
    (k,) = [k for k in kernels_of(graph, plan) if k.kind != "io"]
    return KernelPoint(
        kind=kind,
        channels=channels,
        side=side,
        ksize=ksize,
        macs=int(k.macs),
        out_elems=int(k.out_elems),
        float_ms=f_ms,
        integer_ms=q_ms,
        float_roofline_ms=roofline_ms(k, profile),
        int4_ms=q4_ms,
    )


def _quantize(fp: Path, out: Path, calib: np.ndarray, weights: str) -> None:
    """onnxruntime's static QDQ quantizer, per-channel weights: ``int7`` (reduce range), ``int8``,
    ``uint8`` or ``int4``; activations uint8 calibrated on ``calib`` one sample at a time."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib[i : i + 1] for i in range(len(calib)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self._it, None)
            return None if b is None else {"x": b}

    logging.disable(logging.WARNING)  # the quantizer logs a pre-processing hint per call
    try:
        quantize_static(
            str(fp),
            str(out),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=weights == "int7",
            activation_type=QuantType.QUInt8,
            weight_type={"uint8": QuantType.QUInt8, "int4": QuantType.QInt4}.get(weights, QuantType.QInt8),
        )
    finally:
        logging.disable(logging.NOTSET)


@dataclass(frozen=True)
class KernelFit:
    float_ratio: float
    ns_per_output: float
    us_per_kernel: float
    int8_weights: str
    mape_pct: float  # relative error of the predicted integer/float ratio over the grid
    points: int
    int4_float_ratio: float | None = None  # median int4-weight QDQ time / float time over the grid

    def to_profile(self, source: str) -> dict[str, Any]:
        return {
            "float_ratio": round(self.float_ratio, 4),
            "ns_per_output": round(self.ns_per_output, 4),
            "us_per_kernel": round(self.us_per_kernel, 3),
            "int8_weights": self.int8_weights,
            "ratio_error_pct": round(self.mape_pct, 1),
            **(
                {} if self.int4_float_ratio is None else {"int4_float_ratio": round(self.int4_float_ratio, 3)}
            ),
            "source": source,
        }


def predict_integer_ms(float_ms: float, out_elems: int, model: Any) -> float:
    """An integer kernel's time from its float time under a fitted model (``IntegerKernels`` or :class:`KernelFit`)."""
    return model.float_ratio * float_ms + model.ns_per_output * out_elems * 1e-6 + model.us_per_kernel * 1e-3


def fit(points: list[KernelPoint], int8_weights: str = "int7") -> KernelFit:
    """Non-negative least squares on relative error, target ``measured ratio x float roofline``."""
    from scipy.optimize import nnls

    if len(points) < 3:
        raise ValueError("need at least 3 measured kernels to fit 3 coefficients")
    f = np.array([p.float_roofline_ms for p in points])
    target = np.array([p.ratio for p in points]) * f
    x = np.c_[f, np.array([p.out_elems for p in points]) * 1e-6, np.full(len(points), 1e-3)]
    coef, _ = nnls(x / target[:, None], np.ones(len(points)))
    pred = x @ coef
    mape = float(np.mean(np.abs(pred / target - 1)) * 100)
    int4 = [p.int4_ms / p.float_ms for p in points if p.int4_ms]
    return KernelFit(
        float(coef[0]),
        float(coef[1]),
        float(coef[2]),
        int8_weights,
        mape,
        len(points),
        float(np.median(int4)) if int4 else None,
    )


def measure(
    profile: DeviceProfile,
    grid: tuple[tuple[str, int, int, int], ...] = FULL_GRID,
    int8_weights: str = "int7",
    seconds: float = 1.0,
) -> tuple[KernelFit, list[KernelPoint]]:
    points = [measure_point(*g, profile=profile, int8_weights=int8_weights, seconds=seconds) for g in grid]
    return fit(points, int8_weights), points


def points_json(points: list[KernelPoint]) -> list[dict[str, Any]]:
    return [{**asdict(p), "ratio": p.ratio} for p in points]
