"""ONNX export: a plan -> a QDQ ONNX model that onnxruntime runs like the plan's simulation.

Pipeline (:func:`export_onnx`):

1. ``torch.onnx.export(dynamo=True, opset 21)`` of the BN-folded model (:func:`export_float_onnx`).
   The dynamo exporter keeps parameter names, so every planned layer maps to the Conv / Gemm /
   MatMul node reading the initializer ``<layer>.weight`` (:func:`map_onnx_layers`); a planned layer
   that maps to nothing is an error, never skipped.
2. The weight initializers are replaced by the simulation's fake-quantized weights (already on the
   plan's grid), then ``onnxruntime.quantization.quantize_static`` (QDQ, per channel) runs with
   ``TensorQuantOverrides`` carrying the simulation's exact numbers: per-channel weight scales
   (zero point 0; int4 as ``QInt4``), and for every layer input the ``ActQuant`` scale / zero point,
   propagated back through ops that do not change the grid (MaxPool, Reshape, Flatten, Transpose,
   the inputs of a Concat) and through Relu / Clip when the grid already clips like them; past a
   global average pool, its input gets the simulation's grid for it (``LayerQuant.pool_act``).
   Layers planned float are excluded (``nodes_to_exclude``).
3. Clean-up: the model output is left float (no Q/DQ on logits: the simulation does not quantize
   them), debug metadata and long intermediate names are dropped, int32 bias zero points of 0 are
   omitted. The result is re-read and checked (:func:`inspect_qdq`): weight dtype and scales per
   layer, activation scale / zero point per layer input. Anything different is reported as a
   fallback with its reason.

int8 weights are stored as ``uint8`` with zero point 128 by default (``int8_weights="uint8"``): the
same symmetric grid (q + 128), but onnxruntime's x86 AVX2 kernels for uint8 x int8 saturate 16-bit
intermediate sums (vpmaddubsw) on machines without VNNI, which changed 1.7% of LeNet-5's top-1
predictions in our measurements; uint8 x uint8 kernels do not saturate and match the simulation.

Float compute (:func:`export_onnx_weight_only`, the ``weight-only`` variant): the plan's integer
weights as INT8 / INT4 initializers rebuilt by ``Cast -> Mul(scale)``, float activations. For
targets where integer kernels lose to float ones (see :mod:`edge_compress.export.compute`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_compress.errors import UserError
from edge_compress.export.base import ExportedFile, Fallback, bits_label, last_error_line, quiet

if TYPE_CHECKING:
    import onnx
    from torch import nn

    from edge_compress.plan import CompressionPlan
    from edge_compress.quant.fakequant import ActQuant, LayerQuant

OPSET = 21
LATENCY_REASON = (
    "latency: this first layer (a reduction of fewer than 32 inputs on a 1-channel input) runs as a float "
    "convolution on its int weight grid with a float input; integer kernels are several times slower than "
    "float ones for so small a reduction (onnxruntime uint8 convolution, XNNPACK int8 depthwise); "
    "ONNX stores its grid values as float32 (a few hundred bytes) to avoid a DequantizeLinear per run"
)
INT8_WEIGHTS = ("uint8", "int8", "int7")
INT7_REASON = (
    "int8 weights restricted to 7 bits (reduce range) so that onnxruntime's fast uint8 x int8 kernels cannot "
    "saturate their 16-bit sums on x86 without VNNI; the file is exact with the 7-bit grid"
)
INPUT_NAME = "input"
OUTPUT_NAME = "output"
_SAME_GRID = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
_MEAN_OPS = {"ReduceMean", "GlobalAveragePool"}  # what a global average pool becomes


# --------------------------------------------------------------------------------------------
# float export


def export_float_onnx(model: nn.Module, example: Any, path: str | Path) -> list[str]:
    """Export ``model`` (already BN-folded, eval mode) to ``path`` with a dynamic batch dimension.

    Returns notes (e.g. when the batch dimension had to be fixed at the example's size).
    """
    import torch

    path = Path(path)
    notes: list[str] = []
    common = dict(dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    try:
        with quiet() as log:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False,
                **common,
            )
    except Exception:  # noqa: BLE001 - a batch-dependent reshape: retry with a static batch
        try:
            with quiet() as log:
                torch.onnx.export(model, (example,), str(path), external_data=False, **common)
            notes.append(
                f"ONNX: the batch dimension is fixed at {example.shape[0]} (the model does not export with a dynamic batch)."
            )
        except Exception as e:  # noqa: BLE001
            detail = last_error_line(log[0] if log else "") or str(e).splitlines()[0]
            raise UserError(
                f"torch.onnx.export could not export the model ({type(e).__name__}: {detail[:200]})."
            ) from None
    return notes


# --------------------------------------------------------------------------------------------
# layer mapping


@dataclass(frozen=True)
class OnnxLayer:
    """Where a planned layer lives in an ONNX graph."""

    layer: str
    node: str
    op_type: str
    weight: str  # initializer name
    bias: str | None
    axis: int  # output-channel axis of the weight initializer
    transposed: bool  # the initializer is the torch weight transposed (MatMul: [in, out])


def map_onnx_layers(
    model: onnx.ModelProto,
    layers: list[str],
    weights: dict[str, np.ndarray] | None = None,
    weight_names: dict[str, str] | None = None,
) -> dict[str, OnnxLayer]:
    """Plan layer -> the node reading its weight initializer (``<layer>.weight`` unless ``weight_names``
    says otherwise). With ``weights`` (torch layout), also checks the initializer holds those values.

    Raises:
        UserError: a planned layer has no node, several nodes, or different weights.
    """
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    readers: dict[str, list[Any]] = {}
    for n in g.node:
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1:
            readers.setdefault(n.input[1], []).append(n)
    out: dict[str, OnnxLayer] = {}
    for layer in layers:
        wname = (weight_names or {}).get(layer, f"{layer}.weight")
        nodes = readers.get(wname, [])
        if wname not in inits or not nodes:
            raise UserError(
                f"layer {layer!r} cannot be mapped to an ONNX node: no Conv/Gemm/MatMul reads an initializer "
                f"named {wname!r} in the exported graph; the exporter renamed or folded it."
            )
        if len(nodes) > 1:
            raise UserError(
                f"layer {layer!r}: {len(nodes)} ONNX nodes share the weight {wname!r}; shared weights are not supported."
            )
        n = nodes[0]
        attrs = {a.name: a for a in n.attribute}
        transposed = False
        if n.op_type == "Conv":
            axis = 0
        elif n.op_type == "Gemm":
            trans_b = attrs["transB"].i if "transB" in attrs else 0
            axis, transposed = (0, False) if trans_b else (1, True)
        else:
            axis, transposed = 1, True
        if weights is not None and layer in weights:
            have = numpy_helper.to_array(inits[wname])
            want = weights[layer].T if transposed else weights[layer]
            if have.shape != want.shape or not np.array_equal(have, want):
                raise UserError(
                    f"layer {layer!r}: the ONNX initializer {wname!r} does not hold the layer's weights "
                    f"(shape {tuple(have.shape)} vs {tuple(want.shape)}); the exporter changed them."
                )
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
        out[layer] = OnnxLayer(layer, n.name, n.op_type, wname, bias, axis, transposed)
    return out


# --------------------------------------------------------------------------------------------
# quantization


def _act_override(aq: ActQuant) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType

    if aq.bits == 8 and aq.qmin == 0:
        return {
            "quant_type": QuantType.QUInt8,
            "scale": np.array(aq.scale, np.float32),
            "zero_point": np.array(aq.zero_point, np.uint8),
        }
    if aq.bits == 16:
        return {
            "quant_type": QuantType.QInt16,
            "scale": np.array(aq.scale, np.float32),
            "zero_point": np.array(0, np.int16),
        }
    raise ValueError(aq.bits)


def _reduce_range(init: Any, ref: OnnxLayer, d: Any, lq: LayerQuant) -> tuple[LayerQuant, np.ndarray]:
    """The 7-bit grid (spec entry, grid weights) of a layer planned at 8 bits, from its float weights
    (``int8_weights="int7"``); the activation grid is unchanged."""
    import dataclasses

    import torch
    from onnx import numpy_helper

    from edge_compress.export.base import fake_quant_weight
    from edge_compress.quant.fakequant import weight_scales

    arr = numpy_helper.to_array(init).astype(np.float32)
    w = torch.from_numpy(np.ascontiguousarray(arr.T if ref.transposed else arr))
    scale = weight_scales(w, 7, d.per_channel, d.weight_clip).numpy().astype(np.float32)
    return dataclasses.replace(lq, weight_bits=7, weight_scale=scale), fake_quant_weight(w, scale, 7)


def _weight_qtype(bits: int, int8_weights: str) -> tuple[Any, np.dtype, int, int]:
    """(QuantType, zero-point dtype, zero point, container bits) storing a symmetric ``bits`` grid exactly."""
    from onnxruntime.quantization import QuantType

    if bits <= 4:
        return QuantType.QInt4, np.dtype(np.int8), 0, 4
    if bits <= 8:
        if int8_weights == "uint8" and bits == 8:
            return QuantType.QUInt8, np.dtype(np.uint8), 128, 8
        return QuantType.QInt8, np.dtype(np.int8), 0, 8
    return QuantType.QInt16, np.dtype(np.int16), 0, 16


def _clip_bounds(g: Any, node: Any) -> tuple[float, float] | None:
    from onnx import numpy_helper

    inits = {i.name: i for i in g.initializer}
    lo, hi = -np.inf, np.inf
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] not in inits:
            return None
        lo = float(numpy_helper.to_array(inits[node.input[1]]))
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in inits:
            return None
        hi = float(numpy_helper.to_array(inits[node.input[2]]))
    return lo, hi


def activation_chains(
    g: Any,
    layers: dict[str, OnnxLayer],
    acts: dict[str, ActQuant],
    pool_acts: dict[str, ActQuant] | None = None,
) -> tuple[dict[str, ActQuant], list[str]]:
    """Tensor -> the grid it must be quantized on so each layer input sees exactly its ActQuant.

    Walks back from each layer's input through ops that keep the grid (MaxPool, Reshape ...; all
    inputs of a Concat, as TFLite does), through Relu / Clip when the grid clips at least as much
    (the op's only consumer), and past a global average pool (ReduceMean, GlobalAveragePool) with
    the layer's ``pool_acts`` grid for the pool's input (the simulation quantizes it).
    """
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    nodes = {n.name: n for n in g.node}
    constants = {i.name for i in g.initializer}
    assigned: dict[str, ActQuant] = {}
    notes: list[str] = []
    for layer, ref in layers.items():
        aq0 = acts.get(layer)
        if aq0 is None:
            continue
        todo: list[tuple[str, ActQuant, ActQuant | None]] = [
            (nodes[ref.node].input[0], aq0, (pool_acts or {}).get(layer))
        ]
        while todo:
            t, aq, pool_aq = todo.pop()
            prev = assigned.get(t)
            if prev is not None:
                if (prev.scale, prev.zero_point) != (aq.scale, aq.zero_point):
                    notes.append(
                        f"tensor {t!r} feeds layers with different activation grids; the first one is used."
                    )
                continue
            assigned[t] = aq
            p = producer.get(t)
            if p is None:
                continue
            if p.op_type in _SAME_GRID:
                todo.append((p.input[0], aq, pool_aq))
            elif p.op_type == "Concat":
                todo += [(i, aq, pool_aq) for i in reversed(p.input) if i and i not in constants]
            elif p.op_type in _MEAN_OPS and pool_aq is not None:
                todo.append((p.input[0], pool_aq, None))
            elif consumers.get(p.input[0], 0) == 1 and p.op_type in ("Relu", "Clip"):
                lo_real = (aq.qmin - aq.zero_point) * aq.scale
                hi_real = (aq.qmax - aq.zero_point) * aq.scale
                bounds = (0.0, np.inf) if p.op_type == "Relu" else _clip_bounds(g, p)
                if bounds is not None and lo_real >= bounds[0] - 1e-12 and hi_real <= bounds[1] + 1e-6:
                    todo.append((p.input[0], aq, pool_aq))
    return assigned, notes


def _reads_graph_input(g: Any, ref: OnnxLayer) -> bool:
    """The layer reads the model input (possibly through reshapes): a float input costs no
    re-quantization there, and onnxruntime cannot re-fuse the layer into an integer kernel."""
    producer = {o: n for n in g.node for o in n.output}
    node = next(n for n in g.node if n.name == ref.node)
    t = node.input[0]
    inputs = {i.name for i in g.input}
    while t not in inputs:
        p = producer.get(t)
        if p is None or p.op_type not in _SAME_GRID:
            return False
        t = p.input[0]
    return True


class _Reader:
    """CalibrationDataReader over a float32 array, in batches (for tensors without an override)."""

    def __init__(self, x: np.ndarray, batch: int) -> None:
        self._batches = [
            {INPUT_NAME: np.ascontiguousarray(x[i : i + batch])} for i in range(0, len(x), batch)
        ]
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._batches):
            return None
        self._i += 1
        return self._batches[self._i - 1]

    def rewind(self) -> None:
        self._i = 0


def export_onnx(
    float_path: str | Path,
    plan: CompressionPlan,
    spec: dict[str, LayerQuant],
    grid_weights: dict[str, np.ndarray],
    calib_x: np.ndarray,
    out_path: str | Path,
    *,
    planned_bytes: int,
    int8_weights: str = "uint8",
    float_compute: set[str] | frozenset[str] = frozenset(),
    static_batch: bool = False,
    weight_names: dict[str, str] | None = None,
    keep_float: list[str] | None = None,
) -> ExportedFile:
    """Quantize the float ONNX model at ``float_path`` to the plan; write a QDQ model to ``out_path``.

    ``grid_weights``: the simulation's fake-quantized weights (torch layout) per quantized layer;
    ``spec``: the simulation's exact scales (:func:`edge_compress.quant.fakequant.compute_quant_spec`).
    ``float_compute``: layers to run as float convolutions on their integer grid (see :func:`tiny_layers`).
    ``weight_names``: layer -> weight initializer (default ``<layer>.weight``); ``keep_float``: other
    node names to leave unquantized.
    """
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if int8_weights not in INT8_WEIGHTS:
        raise UserError(
            f"int8 weight storage must be one of {', '.join(INT8_WEIGHTS)}, got {int8_weights!r}."
        )
    model = onnx.load(str(float_path))
    spec = dict(spec)  # int7 storage replaces entries
    layers = map_onnx_layers(model, list(plan.layers), weight_names=weight_names)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    overrides: dict[str, list[dict[str, Any]]] = {}
    exclude: list[str] = list(keep_float or [])
    notes: list[str] = []
    fallbacks: list[Fallback] = []
    acts: dict[str, ActQuant] = {}
    float_compute = {n for n in float_compute if n in layers and _reads_graph_input(g, layers[n])}
    for name, ref in layers.items():
        lq = spec[name]
        d = plan.layers[name]
        if lq.weight_bits is None or name in float_compute:
            exclude.append(ref.node)
        if lq.weight_bits == 8 and int8_weights == "int7" and name not in float_compute:
            lq, grid7 = _reduce_range(inits[ref.weight], ref, d, lq)
            spec[name] = lq
            grid_weights = {**grid_weights, name: grid7}
            fallbacks.append(
                Fallback(
                    name, "onnx", "qdq", bits_label(8, d.act_bits), bits_label(7, d.act_bits), INT7_REASON
                )
            )
        if lq.weight_bits is not None:
            w = grid_weights[name]
            arr = w.T if ref.transposed else w
            inits[ref.weight].CopyFrom(
                numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), ref.weight)
            )
        if lq.weight_bits is not None and name not in float_compute:
            qt, zp_dtype, zp, container = _weight_qtype(lq.weight_bits, int8_weights)
            if container != lq.weight_bits:
                notes.append(
                    f"layer {name!r}: the {lq.weight_bits}-bit grid is stored in int{container} (exact values, larger file)."
                )
            overrides[ref.weight] = [
                {
                    "axis": ref.axis,
                    "quant_type": qt,
                    "scale": np.array(s, np.float32),
                    "zero_point": np.array(zp, zp_dtype),
                }
                for s in lq.weight_scale  # type: ignore[union-attr]
            ]
        if lq.act is not None and name in float_compute:
            fallbacks.append(
                Fallback(
                    name,
                    "onnx",
                    "qdq",
                    bits_label(d.weight_bits, d.act_bits),
                    bits_label(d.weight_bits, None),
                    LATENCY_REASON,
                )
            )
        elif lq.act is not None:
            if lq.act.bits in (8, 16):
                acts[name] = lq.act
            else:
                fallbacks.append(
                    Fallback(
                        name,
                        "onnx",
                        "qdq",
                        bits_label(d.weight_bits, d.act_bits),
                        bits_label(d.weight_bits, None),
                        f"onnxruntime has no {lq.act.bits}-bit activation type",
                    )
                )
    pool_acts = {n: spec[n].pool_act for n in acts if spec[n].pool_act is not None}
    chains, chain_notes = activation_chains(g, layers, acts, pool_acts)  # type: ignore[arg-type]
    notes += chain_notes
    for t, aq in chains.items():
        overrides[t] = [_act_override(aq)]
    extra = {
        "TensorQuantOverrides": overrides,
        "QDQDisableWeightAdjustForInt32Bias": True,  # never rescale the plan's weight scales
        "ActivationSymmetric": False,
        "WeightSymmetric": True,
        "CalibMovingAverage": False,
    }
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="ec-onnx-") as tmp:
        src = Path(tmp) / "grid.onnx"
        dst = Path(tmp) / "qdq.onnx"
        onnx.save(model, str(src))
        batch = 1 if static_batch else 64
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # onnxruntime's quantizer logs advice through the root logger
        log: list[str] = []
        try:
            with quiet() as log:
                quantize_static(
                    str(src),
                    str(dst),
                    _Reader(calib_x, batch),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options=extra,
                )
        except Exception as e:  # noqa: BLE001 - onnxruntime raises many types
            detail = str(e).splitlines()[0] if str(e) else last_error_line(log[0] if log else "")
            raise UserError(
                f"onnxruntime could not quantize the model ({type(e).__name__}: {detail[:240]})."
            ) from None
        finally:
            root.setLevel(level)
        q = onnx.load(str(dst))
    float_inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    compute = _restore_float_bias(q, layers, float_inits)
    _defer_first_quantize(q, layers, float_compute)
    clean_qdq(q, keep_names={ref.node: name for name, ref in layers.items()})
    onnx.checker.check_model(q)
    tmp_out = out_path.with_name(out_path.name + ".tmp")
    onnx.save(q, str(tmp_out))
    os.replace(tmp_out, out_path)

    found = inspect_qdq(q, list(layers))
    layer_bits: dict[str, tuple[int | None, int | None]] = {}
    for name in layers:
        lq, d = spec[name], plan.layers[name]
        info = found.get(name, {})
        wb = info.get("weight_bits")
        ab = info.get("act_bits")
        want_wb = lq.weight_bits
        if want_wb is not None:
            if compute[name] == "integer":
                scales = info.get("weight_scale")
                if scales is None or not np.array_equal(scales, lq.weight_scale):
                    raise UserError(
                        f"layer {name!r}: the ONNX weight scales differ from the plan's simulation; the quantizer changed them."
                    )
            elif name not in float_compute:
                notes.append(
                    f"layer {name!r}: onnxruntime left it unquantized; its float32 weights hold the grid values."
                )
            wb = want_wb  # the values are on the plan's grid, whatever the container
        want_ab = lq.act.bits if name in acts else None
        if ab is not None and want_ab is not None:
            a = acts[name]
            if (info.get("act_scale"), info.get("act_zero_point")) != (np.float32(a.scale), a.zero_point):
                notes.append(f"layer {name!r}: input grid in the file differs from the simulation's.")
        layer_bits[name] = (wb, ab)
        if (wb, ab) != (d.weight_bits, d.act_bits) and not any(f.layer == name for f in fallbacks):
            reason = (
                "onnxruntime quantizes a tensor once for all its consumers: a float layer reads a quantized input"
                if ab is not None and d.act_bits is None
                else "the layer's input is not quantized in the exported graph (its producer stays float)"
            )
            fallbacks.append(
                Fallback(
                    name, "onnx", "qdq", bits_label(d.weight_bits, d.act_bits), bits_label(wb, ab), reason
                )
            )
    return ExportedFile(
        path=out_path,
        format="onnx",
        variant="qdq",
        planned_bytes=planned_bytes,
        layer_bits=layer_bits,
        fallbacks=fallbacks,
        notes=notes,
        io=_io(q),
        layer_map={n: r.node for n, r in layers.items()},
    )


# --------------------------------------------------------------------------------------------
# clean-up and inspection


def tiny_layers(layer_infos: list[Any], k_max: int = 32) -> set[str]:
    """Convolutions whose reduction (in-channels per group x kernel area) is below ``k_max``: the
    first layer on a 1-channel input, typically. onnxruntime's uint8 convolution kernels are
    several times slower than its float ones there (LeNet-5 ``c1``, K=25: 80 us vs 28 us)."""
    import math

    out = set()
    for li in layer_infos:
        if li.kind != "conv":
            continue
        k = (li.in_channels // max(1, li.groups)) * math.prod(li.kernel)
        if k < k_max:
            out.add(li.name)
    return out


def _restore_float_bias(
    q: onnx.ModelProto, layers: dict[str, OnnxLayer], float_inits: dict[str, np.ndarray]
) -> dict[str, str]:
    """In place: convolution biases back to their float values (the simulation adds float biases and
    onnxruntime's integer convolution accepts them). Returns layer -> "integer" | "float" compute."""
    from onnx import numpy_helper

    g = q.graph
    producer = {o: n for n in g.node for o in n.output}
    by_name = {n.name: n for n in g.node}
    compute: dict[str, str] = {}
    for name, ref in layers.items():
        node = by_name.get(ref.node)
        if node is None:
            raise UserError(f"layer {name!r}: the quantizer dropped its ONNX node {ref.node!r}.")
        wdq = producer.get(node.input[1])
        compute[name] = "integer" if wdq is not None and wdq.op_type == "DequantizeLinear" else "float"
        if node.op_type == "Conv" and len(node.input) > 2 and ref.bias in float_inits:
            bdq = producer.get(node.input[2])
            if bdq is not None and bdq.op_type == "DequantizeLinear":
                bname = f"{name}.bias_f32"
                g.initializer.append(numpy_helper.from_array(float_inits[ref.bias].astype(np.float32), bname))
                node.input[2] = bname
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for n in list(g.node):  # dequantize nodes nobody reads any more
        if n.op_type == "DequantizeLinear" and not any(o in used for o in n.output):
            g.node.remove(n)
    return compute


def _defer_first_quantize(q: onnx.ModelProto, layers: dict[str, OnnxLayer], float_compute: set[str]) -> None:
    """In place, for float-compute layers: ``conv -> Q -> DQ -> MaxPool -> Q' -> DQ'`` with Q, Q' on
    the same grid becomes ``conv -> Relu -> MaxPool -> Q' -> DQ'`` (the Relu only when the grid's
    zero point is its minimum, i.e. the quantizer had absorbed a Relu into Q). Exact: quantizing is
    monotone, so it commutes with max pooling, and a grid starting at 0 clips like a Relu. Lets the
    runtime run the first block as fused float ops."""
    from onnx import helper, numpy_helper

    g = q.graph
    inits = {i.name: i for i in g.initializer}
    by_name = {n.name: n for n in g.node}

    def users(t: str) -> list[Any]:
        return [n for n in g.node if t in n.input]

    for name in sorted(float_compute):
        node = by_name.get(layers[name].node)
        if node is None:
            continue
        u = users(node.output[0])
        if len(u) != 1 or u[0].op_type != "QuantizeLinear":
            continue
        q1 = u[0]
        u = users(q1.output[0])
        if len(u) != 1 or u[0].op_type != "DequantizeLinear":
            continue
        dq1 = u[0]
        u = users(dq1.output[0])
        if len(u) != 1 or u[0].op_type != "MaxPool":
            continue
        pool = u[0]
        u = users(pool.output[0])
        if len(u) != 1 or u[0].op_type != "QuantizeLinear" or list(u[0].input[1:]) != list(q1.input[1:]):
            continue
        zp = inits.get(q1.input[2]) if len(q1.input) > 2 else None
        zp_min = (
            zp is not None and zp.data_type == 2 and int(numpy_helper.to_array(zp)) == 0
        )  # uint8 zero point 0
        src = node.output[0]
        if zp_min:
            relu_out = f"{name}.relu"
            g.node.insert(
                list(g.node).index(node) + 1, helper.make_node("Relu", [src], [relu_out], name=f"{name}.relu")
            )
            src = relu_out
        pool.input[0] = src
        g.node.remove(q1)
        g.node.remove(dq1)


def clean_qdq(model: onnx.ModelProto, keep_names: dict[str, str] | None = None) -> None:
    """In place: float model outputs, no debug metadata, short names, raw tensor data, no zero int32 zero points.

    Nodes in ``keep_names`` (node -> layer) are renamed to their layer: the file maps back to the plan.
    """
    import onnx
    from onnx import numpy_helper

    g = model.graph
    outputs = {o.name for o in g.output}
    producer = {o: n for n in g.node for o in n.output}
    for o in list(outputs):  # X -> Q -> DQ -> output   becomes   X -> output
        dq = producer.get(o)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        src = producer.get(q.input[0])
        if src is None or sum(q.input[0] in n.input for n in g.node) != 1:
            continue
        src.output[list(src.output).index(q.input[0])] = o
        g.node.remove(dq)
        g.node.remove(q)
    inits = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type == "DequantizeLinear" and len(n.input) == 3 and n.input[2] in inits:
            zp = inits[n.input[2]]
            if zp.data_type == 6 and not numpy_helper.to_array(zp).any():  # INT32 zeros: optional
                del n.input[2]
    used = {i for n in g.node for i in n.input}
    for i in list(g.initializer):
        if i.name not in used:
            g.initializer.remove(i)
    for i in g.initializer:  # typed fields (varint int32_data for uint8 zero points ...) -> compact raw bytes
        if not i.raw_data and i.data_type not in (onnx.TensorProto.STRING,):
            arr = numpy_helper.to_array(i)
            if i.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
                continue
            i.CopyFrom(numpy_helper.from_array(arr, i.name))
    del g.value_info[:]
    del model.metadata_props[:]
    for v in list(g.input) + list(g.output):
        del v.metadata_props[:]
        v.doc_string = ""
    io = {t.name for t in g.input} | outputs
    rename: dict[str, str] = {}
    for k, i in enumerate(g.initializer):
        i.doc_string = ""
        rename[i.name] = f"c{k}"
        i.name = rename[i.name]
    for k, n in enumerate(g.node):
        del n.metadata_props[:]
        n.doc_string = ""
        n.name = (keep_names or {}).get(n.name, f"n{k}")
        for j, o in enumerate(n.output):
            if o and o not in io:
                rename.setdefault(o, f"t{len(rename)}")
                n.output[j] = rename[o]
    for n in g.node:
        for j, i in enumerate(n.input):
            if i in rename:
                n.input[j] = rename[i]
    g.doc_string = ""
    model.doc_string = ""
    model.producer_name = "edge-compress"


def inspect_qdq(model: onnx.ModelProto, layers: list[str]) -> dict[str, dict[str, Any]]:
    """Per layer (its node carries the layer's name): weight bits and dtype, weight scales, and the
    scale / zero point of its quantized input, read back from a QDQ graph."""
    from onnx import TensorProto, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    bits_of = {
        TensorProto.INT4: 4,
        TensorProto.UINT4: 4,
        TensorProto.INT8: 8,
        TensorProto.UINT8: 8,
        TensorProto.INT16: 16,
        TensorProto.UINT16: 16,
    }
    nodes = {n.name: n for n in g.node}
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        n = nodes.get(layer)
        if n is None or len(n.input) < 2:
            continue
        info: dict[str, Any] = {"node": n.op_type}
        wsrc = producer.get(n.input[1])
        if wsrc is not None and wsrc.op_type == "DequantizeLinear" and wsrc.input[0] in inits:
            qw = inits[wsrc.input[0]]
            info["weight_bits"] = bits_of.get(qw.data_type)
            info["weight_dtype"] = TensorProto.DataType.Name(qw.data_type).lower()
            info["weight_scale"] = numpy_helper.to_array(inits[wsrc.input[1]]).astype(np.float32)
            zp = inits.get(wsrc.input[2]) if len(wsrc.input) > 2 else None
            info["weight_zero_point"] = numpy_helper.to_array(zp) if zp is not None else None
            info["weight_storage_bytes"] = len(qw.raw_data)
        else:
            info["weight_bits"] = None
        asrc = producer.get(n.input[0])
        if asrc is not None and asrc.op_type == "DequantizeLinear" and asrc.input[1] in inits:
            zp_t = inits.get(asrc.input[2]) if len(asrc.input) > 2 else None
            info["act_bits"] = bits_of.get(zp_t.data_type, 8) if zp_t is not None else 8
            info["act_scale"] = np.float32(numpy_helper.to_array(inits[asrc.input[1]]))
            info["act_zero_point"] = int(numpy_helper.to_array(zp_t)) if zp_t is not None else 0
        else:
            info["act_bits"] = None
        out[layer] = info
    return out


def _io(model: onnx.ModelProto) -> dict[str, Any]:
    from onnx import TensorProto

    def desc(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        return {
            "name": v.name,
            "dtype": TensorProto.DataType.Name(t.elem_type).lower(),
            "shape": dims,
            "quant": None,
        }

    return {"input": desc(model.graph.input[0]), "output": desc(model.graph.output[0])}


# --------------------------------------------------------------------------------------------
# float compute: integer weights, float activations


def _int_initializer(q: np.ndarray, bits: int, name: str) -> Any:
    """``q`` (integers within ``bits``) as an INT4 (packed two per byte, first element in the low
    nibble), INT8 or INT16 initializer."""
    from onnx import TensorProto, helper, numpy_helper

    if bits <= 4:
        flat = q.astype(np.int8).reshape(-1)
        if flat.size % 2:
            flat = np.concatenate([flat, np.zeros(1, np.int8)])
        packed = (flat[0::2].astype(np.uint8) & 0x0F) | ((flat[1::2].astype(np.uint8) & 0x0F) << 4)
        return helper.make_tensor(name, TensorProto.INT4, list(q.shape), packed.tobytes(), raw=True)
    dtype = np.int8 if bits <= 8 else np.int16
    return numpy_helper.from_array(q.astype(dtype), name)


def export_onnx_weight_only(
    float_path: str | Path,
    plan: CompressionPlan,
    spec: dict[str, LayerQuant],
    grid_weights: dict[str, np.ndarray],
    out_path: str | Path,
    *,
    planned_bytes: int,
    weight_names: dict[str, str] | None = None,
) -> ExportedFile:
    """Float-compute export of ``plan``: every quantized layer's weights stored as integers at the
    plan's bits (INT4 packed / INT8 / INT16, symmetric, the simulation's per-channel scales) and
    rebuilt as ``Cast(to=FLOAT) -> Mul(scale)``; activations stay float.

    onnxruntime constant-folds ``Cast -> Mul`` on initializers when the session is created (it does
    not fold ``DequantizeLinear`` on weights: it keeps those for QDQ fusion), so each layer runs as
    a plain float convolution / GEMM with its NCHWc layout: float speed from an integer file.
    The rebuilt weights equal the simulation's grid weights bit for bit (one float32 multiply each);
    the file is checked against ``grid_weights`` before it is written.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(float_path))
    layers = map_onnx_layers(model, list(plan.layers), weight_names=weight_names)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes: list[Any] = []
    layer_bits: dict[str, tuple[int | None, int | None]] = {}
    notes: list[str] = []
    for name, ref in layers.items():
        lq = spec[name]
        if lq.weight_bits is None:
            layer_bits[name] = (None, None)
            continue
        bits = int(lq.weight_bits)
        grid = grid_weights[name]
        w = np.ascontiguousarray(grid.T if ref.transposed else grid, dtype=np.float32)
        s = np.asarray(lq.weight_scale, np.float32).reshape(-1)
        shape = [1] * w.ndim
        if s.size > 1:
            shape[ref.axis] = s.size
        s = s.reshape(shape)
        qmax = 2 ** (bits - 1) - 1
        q = np.clip(np.round(w / s), -qmax, qmax)
        if not np.array_equal(q.astype(np.float32) * s, w):
            raise UserError(
                f"layer {name!r}: its weights are not on the {bits}-bit grid of the simulation's scales."
            )
        init = inits[ref.weight]
        base = ref.weight
        qname, sname, cname = f"{base}.q", f"{base}.scale", f"{base}.cast"
        g.initializer.remove(init)
        g.initializer.append(_int_initializer(q, bits, qname))
        g.initializer.append(numpy_helper.from_array(s, sname))
        new_nodes.append(
            helper.make_node("Cast", [qname], [cname], name=f"{name}.cast", to=TensorProto.FLOAT)
        )
        new_nodes.append(helper.make_node("Mul", [cname, sname], [ref.weight], name=f"{name}.scale"))
        layer_bits[name] = (bits, None)
        if bits not in (4, 8, 16):
            notes.append(
                f"layer {name!r}: the {bits}-bit grid is stored in int{8 if bits <= 8 else 16} (exact values, larger file)."
            )
    for k, n in enumerate(new_nodes):
        g.node.insert(k, n)
    clean_qdq(model, keep_names={ref.node: name for name, ref in layers.items()})
    onnx.checker.check_model(model)
    out_path = Path(out_path)
    tmp_out = out_path.with_name(out_path.name + ".tmp")
    onnx.save(model, str(tmp_out))
    os.replace(tmp_out, out_path)
    found = inspect_weight_only(model, list(layers))
    for name, (wb, _) in layer_bits.items():
        info = found.get(name, {})
        if wb is not None and (info.get("weight_bits") != storage_bits_of(wb) or info.get("dequantize")):
            raise UserError(
                f"layer {name!r}: the float-compute file does not hold its {wb}-bit weights as planned."
            )
    return ExportedFile(
        path=out_path,
        format="onnx",
        variant="weight-only",
        planned_bytes=planned_bytes,
        layer_bits=layer_bits,
        fallbacks=[],
        notes=notes,
        io=_io(model),
        layer_map={n: r.node for n, r in layers.items()},
    )


def storage_bits_of(bits: int) -> int:
    """The integer container of a ``bits``-wide grid in the float-compute file."""
    return 4 if bits <= 4 else 8 if bits <= 8 else 16


def inspect_weight_only(model: onnx.ModelProto, layers: list[str]) -> dict[str, dict[str, Any]]:
    """Per layer (its node carries the layer's name): how its weight is stored. ``weight_bits`` /
    ``weight_dtype`` of an integer initializer rebuilt by ``Cast -> Mul(scale)``, ``weight_scale``,
    and ``dequantize``: the weight comes from a DequantizeLinear (a QDQ file) instead."""
    from onnx import TensorProto, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    bits_of = {TensorProto.INT4: 4, TensorProto.INT8: 8, TensorProto.INT16: 16}
    nodes = {n.name: n for n in g.node}
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        n = nodes.get(layer)
        if n is None or len(n.input) < 2:
            continue
        info: dict[str, Any] = {"node": n.op_type, "weight_bits": None, "dequantize": False}
        src = producer.get(n.input[1])
        if src is not None and src.op_type == "DequantizeLinear":
            info["dequantize"] = True
        elif src is not None and src.op_type == "Mul":
            cast = producer.get(src.input[0])
            if cast is not None and cast.op_type == "Cast" and cast.input[0] in inits:
                qw = inits[cast.input[0]]
                info["weight_bits"] = bits_of.get(qw.data_type)
                info["weight_dtype"] = TensorProto.DataType.Name(qw.data_type).lower()
                info["weight_scale"] = (
                    numpy_helper.to_array(inits[src.input[1]]).astype(np.float32).reshape(-1)
                )
                info["weight_storage_bytes"] = len(qw.raw_data)
        out[layer] = info
    return out
