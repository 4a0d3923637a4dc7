"""File-size model: the bytes an exported file will have, predicted from the plan before exporting.

A model file is the stored parameters plus the container around them. The parameters are counted
exactly from the plan and the format's storage rules (:func:`payload_bytes`):

- ONNX QDQ: weights packed at their bit width (int4 two per byte), a float32 scale and an 8-bit
  (int4: packed) zero point per output channel, biases at 4 bytes per channel (float32 for
  convolutions, int32 for Gemm); a layer that runs as a float convolution on its integer grid
  (first-layer fallback) stores the grid as float32.
- TFLite: weights packed at their bit width, a float32 scale and an int64 zero point per channel
  (the schema's types) for the weights and again for the int32 bias.
- ``weight-only`` (float compute, both formats): weights packed at their bit width with a float32
  scale per channel (TFLite: and an int64 zero point), float32 biases; ONNX stores no zero point
  (its ``Cast -> Mul`` is symmetric by construction).

The container (tensor tables, operators, names, activation quantization parameters, alignment,
metadata, signatures) is predicted by a linear model over counts known before export,
``a x quantized channels + b x layers + c`` per format and variant (:func:`overhead_bytes`). Its
coefficients are fitted on real exports of the zoo models (``scripts/fit_size_model.py`` writes
``size_model.json`` next to this module, with the fit's residuals); the compiler reports the
prediction as a file's ``planned_bytes`` and the quantization planner adds the overhead to the
model-bytes budget, so a byte budget means bytes on the device's storage.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_compress.graph import ModelGraph
    from edge_compress.plan import CompressionPlan

COEFFS_FILE = Path(__file__).with_name("size_model.json")
KEYS = ("onnx/qdq", "onnx/weight-only", "tflite/int8", "tflite/int8-full", "tflite/weight-only")
WEIGHT_ONLY = "weight-only"


def key(fmt: str, variant: str | None) -> str:
    if fmt == "onnx":
        return "onnx/weight-only" if variant == WEIGHT_ONLY else "onnx/qdq"
    return f"tflite/{variant or 'int8'}"


def _out_channels(plan: CompressionPlan, li: Any) -> int:
    d = plan.layers.get(li.name)
    if d is not None and d.keep_channels is not None:
        return len(d.keep_channels)
    return int(li.out_channels)


def _weight_params(plan: CompressionPlan, li: Any) -> int:
    from edge_compress.plan import factorized_params

    d = plan.layers.get(li.name)
    n = int(li.weight_params)
    if d is not None and d.keep_channels is not None:
        n = int(round(n * len(d.keep_channels) / max(1, li.out_channels)))
    if d is not None and d.rank is not None:
        n = factorized_params(li, d.rank, d.factorization or "svd")
    return n


def storage_bits(bits: int) -> int:
    """Bits a weight occupies in the file: int4 is packed two per byte; 5-8 bit grids live in int8
    containers (both runtimes), wider ones in int16 / float32."""
    if bits <= 4:
        return 4
    if bits <= 8:
        return 8
    return 16 if bits <= 16 else 32


def layer_payload(
    plan: CompressionPlan, li: Any, fmt: str, has_bias: bool, variant: str | None = None
) -> int:
    """Exact stored bytes of one layer's parameters under ``plan`` in format ``fmt`` / ``variant``."""
    d = plan.layers.get(li.name)
    wb = None if d is None else d.weight_bits
    ab = None if d is None else d.act_bits
    c = _out_channels(plan, li)
    n = _weight_params(plan, li)
    float_bytes = 4 * n + (4 * c if has_bias else 0)
    if variant == WEIGHT_ONLY:
        if wb is None:
            return float_bytes
        per_ch = c if (d is None or d.per_channel) else 1
        qparams = 4 * per_ch if fmt == "onnx" else 12 * per_ch
        return math.ceil(n * storage_bits(wb) / 8) + qparams + (4 * c if has_bias else 0)
    if wb is None or (fmt == "onnx" and ab is None):
        # float layer; in ONNX a layer that runs as a float op on its integer grid stores the grid as float32
        return float_bytes
    per_ch = c if (d is None or d.per_channel) else 1
    wb = storage_bits(wb)
    if fmt == "onnx":
        total = math.ceil(n * wb / 8) + 4 * per_ch + math.ceil(per_ch * wb / 8)
        if has_bias:
            total += 4 * c  # float32 (conv) or int32 (gemm, scale shared with the weights) per channel
        return total
    total = math.ceil(n * wb / 8) + 12 * per_ch
    if has_bias:
        total += 4 * c + 12 * c
    return total


def payload_bytes(
    plan: CompressionPlan,
    graph: ModelGraph,
    fmt: str,
    *,
    biased: set[str] | None = None,
    variant: str | None = None,
) -> int:
    """Exact bytes of the stored parameters (weights, biases, per-channel quantization parameters).

    ``biased``: layers that carry a bias in the deployed model (BatchNorm folding gives every conv
    one); default: the layers the graph says have a bias."""
    return int(
        sum(
            layer_payload(
                plan,
                li,
                fmt,
                li.has_bias if biased is None else (li.name in biased or li.has_bias),
                variant,
            )
            for li in graph.layers
        )
    )


def counts(plan: CompressionPlan, graph: ModelGraph) -> dict[str, float]:
    """The container model's regressors."""
    q_layers = [li for li in graph.layers if (d := plan.layers.get(li.name)) is not None and d.weight_bits]
    return {
        "q_channels": float(sum(_out_channels(plan, li) for li in q_layers)),
        "layers": float(len(graph.layers)),
        "const": 1.0,
    }


def coefficients(fmt: str, variant: str | None = None) -> dict[str, float]:
    """The fitted container coefficients for a format (empty when none were fitted)."""
    return dict(_coeffs().get(key(fmt, variant), {}))


@lru_cache(maxsize=1)
def _coeffs() -> dict[str, dict[str, float]]:
    if not COEFFS_FILE.exists():
        return {}
    return {k: v["coef"] for k, v in json.loads(COEFFS_FILE.read_text())["models"].items()}


def overhead_bytes(plan: CompressionPlan, graph: ModelGraph, fmt: str, variant: str | None = None) -> float:
    """Predicted container bytes (0 when no fitted coefficients exist for this format)."""
    coef = _coeffs().get(key(fmt, variant))
    if not coef:
        return 0.0
    x = counts(plan, graph)
    return float(sum(coef.get(k, 0.0) * v for k, v in x.items()))


def predict_file_bytes(
    plan: CompressionPlan,
    graph: ModelGraph,
    fmt: str,
    variant: str | None = None,
    *,
    biased: set[str] | None = None,
) -> int:
    """Predicted size of the exported file: exact parameter bytes plus the fitted container model."""
    return int(
        round(
            payload_bytes(plan, graph, fmt, biased=biased, variant=variant)
            + overhead_bytes(plan, graph, fmt, variant)
        )
    )


def fit(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Fit the container model per format key on measured rows
    (``{"key", "bytes", "payload", <counts>}``): non-negative least squares on the overhead, with
    leave-one-model-out errors of the full prediction."""
    import numpy as np
    from scipy.optimize import nnls

    names = ("q_channels", "layers", "const")
    out: dict[str, Any] = {}
    for k in sorted({r["key"] for r in rows}):
        rs = [r for r in rows if r["key"] == k]
        a = np.array([[r[n] for n in names] for r in rs], dtype=float)
        y = np.array([r["bytes"] - r["payload"] for r in rs], dtype=float)
        coef, _ = nnls(a, y)
        pred = a @ coef + np.array([r["payload"] for r in rs])
        err = pred / np.array([r["bytes"] for r in rs]) - 1.0
        lomo = []
        for m in sorted({r["model"] for r in rs}):
            tr = [i for i, r in enumerate(rs) if r["model"] != m]
            te = [i for i, r in enumerate(rs) if r["model"] == m]
            if len({rs[i]["model"] for i in tr}) < 2:
                continue
            c2, _ = nnls(a[tr], y[tr])
            for i in te:
                lomo.append((a[i] @ c2 + rs[i]["payload"]) / rs[i]["bytes"] - 1.0)
        out[k] = {
            "coef": dict(zip(names, map(float, coef), strict=True)),
            "n": len(rs),
            "max_abs_err_pct": float(100 * np.max(np.abs(err))),
            "mean_abs_err_pct": float(100 * np.mean(np.abs(err))),
            "lomo_max_abs_err_pct": float(100 * np.max(np.abs(lomo))) if lomo else None,
            "lomo_mean_abs_err_pct": float(100 * np.mean(np.abs(lomo))) if lomo else None,
        }
    return out
