"""Plan -> runnable ONNX file for measuring candidates, through the export module when present.

:func:`export_candidate` calls ``edge_compress.export.onnx`` (the project's exporter) when it
is importable. Until then it falls back to ``torch.onnx.export`` of the BN-folded float model
plus onnxruntime's ``quantize_static`` (QDQ, per-channel symmetric weights, uint8 activations,
int4 weights through ``TensorQuantOverrides``, float layers excluded), and says so in the
returned ``how`` string, so every measurement records which path produced its file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from edge_compress.plan import CompressionPlan

FALLBACK = "fallback: torch.onnx.export + onnxruntime quantize_static (edge_compress.export.onnx missing)"


def _project_exporter() -> Any | None:
    try:
        from edge_compress.export import onnx as exp  # noqa: F401
    except ImportError:
        return None
    for name in ("export_onnx", "export_plan", "export"):
        fn = getattr(exp, name, None)
        if callable(fn):
            return fn
    return None


def export_candidate(
    model: nn.Module, plan: CompressionPlan | None, calib_x: np.ndarray, path: str | os.PathLike[str],
    *, use_project: bool = True,
) -> tuple[Path, str]:
    """Write ``model`` under ``plan`` (None = float) to ``path``; returns (path, how it was made)."""
    path = Path(path)
    fn = _project_exporter() if use_project else None
    if fn is not None:
        try:
            out = fn(model, plan, calib_x, path)
            res = Path(getattr(out, "path", out) or path)
            return res, "edge_compress.export.onnx"
        except TypeError:
            pass  # a different signature than this adapter knows: use the fallback, say so
    return _fallback(model, plan, calib_x, path), FALLBACK


def _fallback(model: nn.Module, plan: CompressionPlan | None, calib_x: np.ndarray, path: Path) -> Path:
    import numpy as np
    import torch

    from edge_compress.quant.fakequant import fold_batchnorm

    folded = fold_batchnorm(model).eval()
    example = torch.from_numpy(np.ascontiguousarray(calib_x[:1]))
    quantized = plan is not None and any(d.weight_bits is not None for d in plan.layers.values())
    fp32 = path if not quantized else path.with_suffix(".fp32.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            folded, (example,), str(fp32), dynamo=False, opset_version=21, input_names=["x"],
            output_names=["y"], do_constant_folding=True,
        )
    if not quantized:
        return path
    try:
        _quantize(fp32, path, folded, plan, calib_x)  # type: ignore[arg-type]
    finally:
        fp32.unlink(missing_ok=True)
    return path


def _quantize(src: Path, dst: Path, model: nn.Module, plan: CompressionPlan, calib_x: np.ndarray) -> None:
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    m = onnx.load(str(src))
    inits = {i.name for i in m.graph.initializer}
    layer_of_weight = {f"{n}.weight": n for n, _ in model.named_modules()}
    exclude, overrides = [], {}
    for node in m.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        w = node.input[1]
        layer = layer_of_weight.get(w)
        d = plan.layers.get(layer) if layer else None
        if d is None or d.weight_bits is None or d.act_bits is None:
            exclude.append(node.name)
        elif d.weight_bits <= 4 and w in inits:
            overrides[w] = [{"quant_type": QuantType.QInt4, "symmetric": True, "axis": 0}]
    xs = [np.ascontiguousarray(calib_x[i : i + 1]) for i in range(min(16, len(calib_x)))]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": x} for x in xs])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.it, None)

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        quantize_static(
            str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
            extra_options={"TensorQuantOverrides": overrides} if overrides else None,
        )
    finally:
        logging.getLogger().setLevel(level)
