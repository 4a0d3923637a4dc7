"""Plan -> runnable ONNX file for measuring candidates, through the export module when present.

:func:`export_candidate` runs the compiler's ONNX export stage (``edge_compress.export.onnx``:
float export of the BN-folded model, then QDQ with the simulation's scales and the compiler's
default :class:`~edge_compress.compiler.ExportOptions`) when it is importable. Otherwise it falls back to ``torch.onnx.export`` of the BN-folded float model
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

PROJECT = "edge_compress.export.onnx (export_float_onnx + export_onnx, compiler defaults)"
FALLBACK = "fallback: torch.onnx.export (TorchScript) + onnxruntime quantize_static"


def project_exporter_available() -> bool:
    try:
        from edge_compress.export.onnx import export_float_onnx, export_onnx  # noqa: F401
    except ImportError:
        return False
    return True


def float_compute_layers(graph: Any) -> set[str]:
    """Layers the project exporter runs as float convolutions (tiny reductions, see ``tiny_layers``)."""
    try:
        from edge_compress.compiler import ExportOptions
        from edge_compress.export.onnx import tiny_layers
    except ImportError:
        return set()
    k = ExportOptions().onnx_float_compute_k
    return set(tiny_layers(graph.layers, k)) if k else set()


def export_candidate(
    model: nn.Module,
    plan: CompressionPlan | None,
    calib_x: np.ndarray,
    path: str | os.PathLike[str],
    *,
    use_project: bool = True,
) -> tuple[Path, str]:
    """Write ``model`` under ``plan`` (None = float) to ``path``; returns (path, how it was made)."""
    path = Path(path)
    if use_project and project_exporter_available():
        _project(model, plan, calib_x, path)
        return path, PROJECT
    why = "asked for" if not use_project else "edge_compress.export.onnx is missing"
    return _fallback(model, plan, calib_x, path), f"{FALLBACK} ({why})"


def _project(model: nn.Module, plan: CompressionPlan | None, calib_x: np.ndarray, path: Path) -> None:
    """The compiler's ONNX export stage: float export of the BN-folded model, then QDQ to the plan
    with the simulation's exact scales and the compiler's default export options."""
    import numpy as np
    import torch

    from edge_compress.compiler import ExportOptions
    from edge_compress.export.onnx import export_float_onnx, export_onnx
    from edge_compress.graph import extract_graph
    from edge_compress.quant.fakequant import compute_quant_spec, fold_batchnorm, materialize, simulate

    folded = fold_batchnorm(model).eval()
    example = torch.from_numpy(np.ascontiguousarray(calib_x[:1]))
    if plan is None or all(d.weight_bits is None for d in plan.layers.values()):
        export_float_onnx(folded, example, path)
        return
    src = path.with_suffix(".float.onnx")
    try:
        # the file the compiler writes: the bias corrections are part of the float biases
        folded, qspec = materialize(folded, compute_quant_spec(folded, plan, calib_x))
        export_float_onnx(folded, example, src)
        wq = dict(simulate(folded, qspec, activations=False).named_modules())
        grid = {
            n: wq[n].weight.detach().numpy().copy() for n, lq in qspec.items() if lq.weight_bits is not None
        }
        # the cost model's int8 class is measured on uint8-stored (zero point 128) weights, the exact storage on every CPU
        opts = ExportOptions(onnx_int8_weights="uint8")
        fc = float_compute_layers(extract_graph(model, example)) if opts.onnx_float_compute_k else set()
        export_onnx(
            src,
            plan,
            qspec,
            grid,
            calib_x,
            path,
            planned_bytes=0,
            int8_weights=opts.onnx_int8_weights,
            float_compute=fc,
        )
    finally:
        src.unlink(missing_ok=True)


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
            folded,
            (example,),
            str(fp32),
            dynamo=False,
            opset_version=21,
            input_names=["x"],
            output_names=["y"],
            do_constant_folding=True,
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
            str(src),
            str(dst),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            extra_options={"TensorQuantOverrides": overrides} if overrides else None,
        )
    finally:
        logging.getLogger().setLevel(level)
