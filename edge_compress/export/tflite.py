"""TFLite export: a plan -> a static-int8 (mixed int4) .tflite that LiteRT runs like the simulation.

Pipeline (:func:`export_tflite`):

1. ``litert_torch.convert(model, (x,)).export(path)`` of the BN-folded model (:func:`convert_float_tflite`,
   cached by the compiler: one conversion per model, not per plan).
2. Layer mapping (:func:`map_tflite_layers`): the converter names weight tensors after the torch
   module path (``<root class>/<class>_<attr>/...``), so each planned layer maps to the one
   CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED op whose weight tensor carries that path; the
   weight layout (e.g. OIHW -> OHWI) is found by matching values exactly. A planned layer that
   maps to nothing is an error.
3. The weight buffers are overwritten with the simulation's fake-quantized weights (already on the
   plan's grid), so ai-edge-quantizer's min-max symmetric channelwise quantization recovers the
   plan's scales; the scales are then set to the simulation's float32 values exactly.
4. A recipe is generated from the plan: a base rule (static int8 activations, int8 weights) and one
   rule per layer whose regex is that op's exact scope (its output tensor names): int4 where
   the op has an int4 kernel with int8 activations (CONV_2D, FULLY_CONNECTED), otherwise int8 with
   a recorded fallback (DEPTHWISE_CONV_2D: ai-edge-quantizer 0.10 has no static w4a8 config for it;
   note that a Conv with one input channel is converted to DEPTHWISE_CONV_2D). The recipe is saved
   next to the model.
5. ``calibrate`` on calibration data; then the calibrated ranges of every layer input (and of the
   tensors upstream of it that share its grid: MAX_POOL_2D, RESHAPE, TRANSPOSE, PAD, and conv
   outputs with a fused ReLU; and, past a global average pool's MEAN, the pool's input grid of
   the simulation) are replaced by the simulation's ``ActQuant`` range, so the int8 grids equal
   the simulation's uint8 grids shifted by 128.

Variants: ``int8`` keeps a float32 input and output (QUANTIZE / DEQUANTIZE at the edges; the layer
producing the output runs as a weight-only float op, so logits are not re-quantized), ``int8-full``
is integer end to end (int8 input and output, for integer-only accelerators; its output grid is
calibrated on the simulation's logits), ``weight-only`` computes in float: int8 / int4 weights
behind a DEQUANTIZE, float activations everywhere (the compile's ``compute: float`` choice for CPUs
where int8 kernels lose). LiteRT's XNNPACK delegate takes the DEQUANTIZE of int8 weights into the
graph it builds (float speed, measured); int4 ones run on every call (see
``export.compute.LITERT_INT4_DEQUANTIZE_NS``), which the compute choice accounts for.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_compress.errors import UserError
from edge_compress.export.base import (
    ExportedFile,
    Fallback,
    bits_label,
    effective_spec,
    fake_quant_weight,
    last_error_line,
    quiet,
)
from edge_compress.export.onnx import LATENCY_REASON

if TYPE_CHECKING:
    from torch import nn

    from edge_compress.plan import CompressionPlan
    from edge_compress.quant.fakequant import ActQuant, LayerQuant

VARIANTS = ("int8", "int8-full", "weight-only")
# ai-edge-quantizer 0.10's weight-only (float compute) configs with int4 weights
_INT4_WEIGHT_ONLY_OPS = ("CONV_2D", "FULLY_CONNECTED")
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_INT4_OPS = ("CONV_2D", "FULLY_CONNECTED")  # static w4a8 in ai-edge-quantizer's policy
_SAME_GRID = ("MAX_POOL_2D", "RESHAPE", "TRANSPOSE", "PAD", "SQUEEZE", "EXPAND_DIMS")
# a global average pool (litert-torch lowers AdaptiveAvgPool to MEAN, which requantizes; ai-edge-quantizer
# gives AVERAGE_POOL_2D its input grid, so a chain does not continue past it with another grid)
_MEAN_OPS = ("MEAN",)
_SIGNATURE = "serving_default"


# --------------------------------------------------------------------------------------------
# float conversion


def convert_float_tflite(model: nn.Module, example: Any, path: str | Path) -> None:
    """Convert a BN-folded torch model to a float32 .tflite at ``path`` (batch fixed at the example's)."""
    import litert_torch

    try:
        with quiet() as log:
            edge = litert_torch.convert(model.eval(), (example,))
            edge.export(str(path))
    except Exception as e:  # noqa: BLE001 - the converter raises many types
        detail = last_error_line(log[0] if log else "") or str(e).splitlines()[0]
        raise UserError(
            f"litert_torch could not convert the model to TFLite ({type(e).__name__}: {detail[:200]})."
        ) from None


# --------------------------------------------------------------------------------------------
# reading and mapping


def read_tflite(data: bytes | bytearray | memoryview) -> Any:
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(data))


def write_tflite(model_t: Any) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model_t))


_DEQUANTIZE = 6  # tflite BuiltinOperator


def _builtin(model_t: Any, op: Any) -> int:
    code = model_t.operatorCodes[op.opcodeIndex]
    return int(max(code.builtinCode, code.deprecatedBuiltinCode))


def _opname(model_t: Any, op: Any) -> str:
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfu

    code = model_t.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    name = tfu.TFL_OP_CODE_TO_NAME.get(builtin)
    return str(getattr(name, "value", name)) if name is not None else f"OP_{builtin}"


def _tname(t: Any) -> str:
    n = t.name
    return n.decode() if isinstance(n, bytes) else (n or "")


def _tensor_array(model_t: Any, t: Any) -> np.ndarray | None:
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfu

    data = model_t.buffers[t.buffer].data
    if data is None or len(data) == 0:
        return None
    if t.type == 17:  # INT4, two per byte, low nibble first
        raw = np.asarray(data, np.uint8)
        vals = np.empty(2 * raw.size, np.int8)
        vals[0::2] = (raw & 0x0F).astype(np.int8)
        vals[1::2] = (raw >> 4).astype(np.int8)
        vals = np.where(vals >= 8, vals - 16, vals).astype(np.int8)
        n = int(np.prod(t.shape))
        return vals[:n].reshape(tuple(int(d) for d in t.shape))
    return tfu.get_tensor_data(t, model_t.buffers)


def module_scope(model: nn.Module, layer: str) -> str:
    """The name litert-torch gives the weight tensor of module ``layer``:
    ``<root module class>/<class>_<attr>/...`` with fully qualified class names."""

    def cls(m: Any) -> str:
        return f"{type(m).__module__}.{type(m).__qualname__}"

    parts = [cls(model)]
    path: list[str] = []
    for attr in layer.split("."):
        path.append(attr)
        parts.append(f"{cls(model.get_submodule('.'.join(path)))}_{attr}")
    return "/".join(parts)


@dataclass(frozen=True)
class TflLayer:
    layer: str
    op_index: int
    op_name: str  # CONV_2D | DEPTHWISE_CONV_2D | FULLY_CONNECTED
    weight: int  # tensor index
    bias: int | None
    input: int
    output: int
    scope: str  # ai-edge-quantizer op scope (output tensor names)
    layout: tuple[int, ...]  # permutation of the torch weight (with a unit axis for 1-D convs)
    expand: bool  # a unit axis is inserted at position 2 of a 1-D conv weight first


def _layouts(w: np.ndarray, shape: tuple[int, ...]) -> list[tuple[tuple[int, ...], bool, np.ndarray]]:
    cands = []
    bases = [(False, w)]
    if w.ndim == 3:
        bases = [(True, w[:, :, None, :])]
    for expand, base in bases:
        for perm in itertools.permutations(range(base.ndim)):
            arr = base.transpose(perm)
            if tuple(arr.shape) == tuple(shape):
                cands.append((perm, expand, arr))
    return cands


def to_tflite_layout(w: np.ndarray, ref: TflLayer) -> np.ndarray:
    base = w[:, :, None, :] if ref.expand else w
    return np.ascontiguousarray(base.transpose(ref.layout))


def map_tflite_layers(model_t: Any, torch_model: nn.Module, layers: list[str]) -> dict[str, TflLayer]:
    """Plan layer -> the op whose weight tensor carries the layer's module path and values.

    Raises:
        UserError: a planned layer maps to no op, to several ops, or its weights were changed.
    """
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfu

    sg = model_t.subgraphs[0]
    mods = dict(torch_model.named_modules())
    candidates: dict[str, list[int]] = {}
    for k, op in enumerate(sg.operators):
        name = _opname(model_t, op)
        if name not in _WEIGHT_OPS or len(op.inputs) < 2:
            continue
        for part in _tname(sg.tensors[op.inputs[1]]).split(";"):
            if part:
                candidates.setdefault(part, []).append(k)
    out: dict[str, TflLayer] = {}
    for layer in layers:
        scope = module_scope(torch_model, layer)
        ops = sorted(set(candidates.get(scope, [])))
        if not ops:
            raise UserError(
                f"layer {layer!r} cannot be mapped to a TFLite op: no CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED "
                f"weight tensor is named after {scope.rsplit('/', 1)[-1]!r} in the converted model."
            )
        if len(ops) > 1:
            raise UserError(
                f"layer {layer!r} maps to {len(ops)} TFLite ops (shared weights are not supported)."
            )
        op = sg.operators[ops[0]]
        wt = sg.tensors[op.inputs[1]]
        have = _tensor_array(model_t, wt)
        w = mods[layer].weight.detach().numpy()
        layout = next(
            (
                (p, e)
                for p, e, arr in _layouts(w, tuple(wt.shape))
                if have is not None and np.array_equal(arr, have)
            ),
            None,
        )
        if layout is None:
            raise UserError(
                f"layer {layer!r}: the TFLite weight tensor of its op does not hold the layer's weights in any layout "
                "(the converter transformed them); it cannot be quantized to the plan."
            )
        bias = op.inputs[2] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        out[layer] = TflLayer(
            layer,
            ops[0],
            _opname(model_t, op),
            op.inputs[1],
            bias,
            op.inputs[0],
            op.outputs[0],
            tfu.get_op_scope(op, sg.tensors),
            layout[0],
            layout[1],
        )
    return out


# --------------------------------------------------------------------------------------------
# recipe


def _static(wbits: int) -> dict[str, Any]:
    return {
        "activation_tensor_config": {
            "num_bits": 8,
            "symmetric": False,
            "granularity": "TENSORWISE",
            "dtype": "INT",
        },
        "weight_tensor_config": {
            "num_bits": wbits,
            "symmetric": True,
            "granularity": "CHANNELWISE",
            "dtype": "INT",
        },
        "compute_precision": "INTEGER",
        "explicit_dequantize": False,
    }


def _weight_only(wbits: int) -> dict[str, Any]:
    return {
        "weight_tensor_config": {
            "num_bits": wbits,
            "symmetric": True,
            "granularity": "CHANNELWISE",
            "dtype": "INT",
        },
        "compute_precision": "FLOAT",
        "explicit_dequantize": True,
    }


def build_recipe(
    plan: CompressionPlan,
    layers: dict[str, TflLayer],
    variant: str,
    output_layer: str | None,
    float_compute: set[str] | frozenset[str] = frozenset(),
    widen_int4: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, tuple[int | None, int | None]], list[Fallback]]:
    """The ai-edge-quantizer recipe for ``plan``, the bits each layer really gets, and the fallbacks.
    ``widen_int4``: the weight-only variant stores int4 weights as int8 (see :func:`_weight_only_recipe`)."""
    algo = "min_max_uniform_quantize"
    if variant == "weight-only":
        return _weight_only_recipe(plan, layers, widen_int4)
    recipe: list[dict[str, Any]] = [
        {"regex": ".*", "operation": "*", "algorithm_key": algo, "op_config": _static(8)}
    ]
    bits: dict[str, tuple[int | None, int | None]] = {}
    fallbacks: list[Fallback] = []
    for name, ref in layers.items():
        d = plan.layers[name]
        planned = bits_label(d.weight_bits, d.act_bits)
        regex = "^" + re.escape(ref.scope) + "$"
        wb, ab = d.weight_bits, d.act_bits
        reasons = []
        if wb is not None and wb not in (4, 8):
            new = 4 if wb < 4 else 8
            reasons.append(
                f"ai-edge-quantizer stores {wb}-bit weights only as int4 or int8: the grid is re-quantized at {new} bits"
            )
            wb = new
        if wb == 4 and ref.op_name not in _INT4_OPS:
            reasons.append(
                f"{ref.op_name} has no int4-weight kernel with int8 activations in ai-edge-quantizer 0.10 / LiteRT"
            )
            wb = 8
        if ab is not None and ab != 8:
            reasons.append(f"{ab}-bit activations are not generated here (static int8 only)")
            ab = 8
        if wb is None:
            recipe.append(
                {"regex": regex, "operation": ref.op_name, "algorithm_key": "no_quantize", "op_config": {}}
            )
            if ab is not None:
                reasons.append("a float layer reads a float input in TFLite (DEQUANTIZE before it)")
                ab = None
        elif ab is None or (variant == "int8" and name in float_compute):
            if ab is not None:  # a first layer with a tiny reduction: float compute on its weight grid
                reasons.append(LATENCY_REASON)
                ab = None
            recipe.append(
                {
                    "regex": regex,
                    "operation": ref.op_name,
                    "algorithm_key": algo,
                    "op_config": _weight_only(wb),
                }
            )
        elif variant == "int8" and name == output_layer:
            recipe.append(
                {
                    "regex": regex,
                    "operation": ref.op_name,
                    "algorithm_key": algo,
                    "op_config": _weight_only(wb),
                }
            )
        else:
            recipe.append(
                {"regex": regex, "operation": ref.op_name, "algorithm_key": algo, "op_config": _static(wb)}
            )
        bits[name] = (wb, ab)
        if reasons:
            fallbacks.append(
                Fallback(name, "tflite", variant, planned, bits_label(wb, ab), "; ".join(reasons))
            )
    if variant == "int8":
        for io in ("INPUT", "OUTPUT"):
            recipe.append({"regex": ".*", "operation": io, "algorithm_key": "no_quantize", "op_config": {}})
    return recipe, bits, fallbacks


def _weight_only_recipe(
    plan: CompressionPlan, layers: dict[str, TflLayer], widen_int4: bool = False
) -> tuple[list[dict[str, Any]], dict[str, tuple[int | None, int | None]], list[Fallback]]:
    """The ``weight-only`` variant: every quantized layer keeps its planned weight bits (int8 / int4
    where ai-edge-quantizer has a weight-only config for the op) behind a DEQUANTIZE, activations
    and every other op stay float. Only weight-bit changes are fallbacks: float activations are
    what this variant is (the compile records the choice of compute precision)."""
    algo = "min_max_uniform_quantize"
    recipe: list[dict[str, Any]] = []
    bits: dict[str, tuple[int | None, int | None]] = {}
    fallbacks: list[Fallback] = []
    for name, ref in layers.items():
        d = plan.layers[name]
        wb = d.weight_bits
        reasons = []
        if wb is not None and wb not in (4, 8):
            new = 4 if wb < 4 else 8
            reasons.append(
                f"ai-edge-quantizer stores {wb}-bit weights only as int4 or int8: the grid is re-quantized at {new} bits"
            )
            wb = new
        if wb == 4 and ref.op_name not in _INT4_WEIGHT_ONLY_OPS:
            reasons.append(f"{ref.op_name} has no int4 weight-only config in ai-edge-quantizer 0.10")
            wb = 8
        if wb == 4 and widen_int4:
            reasons.append(
                "latency: LiteRT's XNNPACK delegate does not take an int4 DEQUANTIZE (it would run on every "
                "call); stored as int8, which it unpacks once (no byte budget, or the wider file fits it)"
            )
            wb = 8
        if wb is not None:
            recipe.append(
                {
                    "regex": "^" + re.escape(ref.scope) + "$",
                    "operation": ref.op_name,
                    "algorithm_key": algo,
                    "op_config": _weight_only(wb),
                }
            )
        bits[name] = (wb, None)
        if reasons:
            fallbacks.append(
                Fallback(
                    name,
                    "tflite",
                    "weight-only",
                    bits_label(d.weight_bits, None),
                    bits_label(wb, None),
                    "; ".join(reasons),
                )
            )
    return recipe, bits, fallbacks


def _input_chain(model_t: Any, ref: TflLayer) -> list[Any]:
    """The layout ops between the model input and the op of ``ref``; None when something else intervenes."""
    sg = model_t.subgraphs[0]
    producer = {o: op for op in sg.operators for o in op.outputs}
    t = ref.input
    ops = []
    while t != sg.inputs[0]:
        op = producer.get(t)
        if op is None or _opname(model_t, op) not in _SAME_GRID:
            return None  # type: ignore[return-value]
        ops.append(op)
        t = op.inputs[0]
    return ops


def _reads_graph_input(model_t: Any, ref: TflLayer) -> bool:
    """The op reads the model input (through layout ops only)."""
    return _input_chain(model_t, ref) is not None


# --------------------------------------------------------------------------------------------
# activation grids


def _act_range(aq: ActQuant) -> tuple[float, float]:
    """The (min, max) that ai-edge-quantizer turns into exactly this grid (int8 = uint8 - 128)."""
    lo = (aq.qmin - aq.zero_point) * aq.scale
    return lo, lo + aq.scale * (aq.qmax - aq.qmin)


def activation_chains(
    model_t: Any,
    layers: dict[str, TflLayer],
    acts: dict[str, ActQuant],
    pool_acts: dict[str, ActQuant] | None = None,
) -> dict[int, ActQuant]:
    """Tensor index -> grid, walking back from each layer input through grid-preserving ops.

    The input and output of such an op share one grid in the file (XNNPACK refuses a MAX_POOL_2D
    whose grids differ; RESHAPE copies integers as they are), so layers whose inputs meet on one
    chain must have the same grid: the simulation shares their quantizer
    (:func:`edge_compress.quant.fakequant.activation_points`). A chain that reaches a global
    average pool (MEAN) continues from the pool's input with the layer's ``pool_acts`` grid.

    Raises:
        UserError: two layers need different grids on one tensor (the simulation did not group them).
    """
    sg = model_t.subgraphs[0]
    producer = {o: op for op in sg.operators for o in op.outputs}
    out: dict[int, ActQuant] = {}
    owner: dict[int, str] = {}
    for name, ref in layers.items():
        aq = acts.get(name)
        if aq is None:
            continue
        pool_aq = (pool_acts or {}).get(name)
        t = ref.input
        while True:
            if t in out:
                if out[t] != aq:
                    raise UserError(
                        f"layers {owner[t]!r} and {name!r} read one tensor through grid-keeping ops "
                        f"({_tname(sg.tensors[t])[-60:]!r}) but have different activation grids in the "
                        "simulation; a TFLite tensor has one grid."
                    )
                break
            out[t] = aq
            owner[t] = name
            op = producer.get(t)
            if op is None:
                break
            kind = _opname(model_t, op)
            if kind in _MEAN_OPS and pool_aq is not None:
                aq, pool_aq = pool_aq, None  # the pool's input: its own grid, once per chain
            elif kind not in _SAME_GRID:
                break
            t = op.inputs[0]
    return out


def _signature(model_t: Any) -> tuple[str, str]:
    """(signature key, its input name): litert-torch writes ``serving_default`` / ``args_0``."""
    defs = model_t.signatureDefs or []
    if not defs:
        return _SIGNATURE, "args_0"

    def dec(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    return dec(defs[0].signatureKey), dec(defs[0].inputs[0].name)


# --------------------------------------------------------------------------------------------
# export


def export_tflite(
    float_path: str | Path,
    torch_model: nn.Module,
    plan: CompressionPlan,
    spec: dict[str, LayerQuant],
    grid_weights: dict[str, np.ndarray],
    calib_x: np.ndarray,
    out_path: str | Path,
    *,
    planned_bytes: int,
    variant: str = "int8",
    output_range: tuple[float, float] | None = None,
    float_compute: set[str] | frozenset[str] = frozenset(),
    widen_int4: bool = False,
) -> ExportedFile:
    """Quantize the float .tflite at ``float_path`` (converted from ``torch_model``) to ``plan``.

    ``output_range``: the model output's (min, max) on calibration data in the simulation, used as
    the output grid of the ``int8-full`` variant. ``float_compute``: first layers (reading the model
    input) that run as weight-only float ops in the ``int8`` variant (see ``onnx.tiny_layers``).
    """
    from ai_edge_quantizer import quantizer as aeq
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfu

    if variant not in VARIANTS:
        raise UserError(f"unknown TFLite variant {variant!r} (use {', '.join(VARIANTS)}).")
    out_path = Path(out_path)
    model_t = read_tflite(Path(float_path).read_bytes())
    sg = model_t.subgraphs[0]
    if len(model_t.subgraphs) != 1 or len(sg.inputs) != 1 or len(sg.outputs) != 1:
        raise UserError("TFLite export supports models with one input and one output.")
    layers = map_tflite_layers(model_t, torch_model, list(plan.layers))
    producer = {o: k for k, op in enumerate(sg.operators) for o in op.outputs}
    output_layer = next((n for n, r in layers.items() if producer.get(sg.outputs[0]) == r.op_index), None)
    fc = {n for n in float_compute if n in layers and _reads_graph_input(model_t, layers[n])}
    recipe, bits, fallbacks = build_recipe(plan, layers, variant, output_layer, fc, widen_int4)
    slow = sorted(n for n, (wb, _) in bits.items() if variant == "weight-only" and wb == 4)
    for name in sorted(fc):  # the layout ops between the model input and a float first layer stay float too
        if bits[name][1] is None:
            for op in _input_chain(model_t, layers[name]):
                scope = tfu.get_op_scope(op, sg.tensors)
                recipe.append(
                    {
                        "regex": "^" + re.escape(scope) + "$",
                        "operation": _opname(model_t, op),
                        "algorithm_key": "no_quantize",
                        "op_config": {},
                    }
                )
    # a layer that falls back to other weight bits gets that width's own grid (what its simulation uses)
    spec = effective_spec(torch_model, plan, spec, bits)
    mods = dict(torch_model.named_modules())
    for name, ref in layers.items():
        lq = spec[name]
        if lq.weight_bits is None:
            continue
        if lq.weight_bits == plan.layers[name].weight_bits:
            grid = grid_weights[name]
        else:
            grid = fake_quant_weight(mods[name].weight, lq.weight_scale, lq.weight_bits)
        arr = to_tflite_layout(grid, ref).astype(np.float32)
        model_t.buffers[sg.tensors[ref.weight].buffer].data = np.frombuffer(arr.tobytes(), dtype=np.uint8)
    float_grid = write_tflite(model_t)
    acts = {n: spec[n].act for n in layers if bits[n][1] is not None and spec[n].act is not None}
    pool_acts = {n: spec[n].pool_act for n in acts if spec[n].pool_act is not None}
    chains = activation_chains(model_t, layers, acts, pool_acts)  # type: ignore[arg-type]
    names = {k: _tname(t) for k, t in enumerate(sg.tensors)}
    xin = np.ascontiguousarray(calib_x, dtype=np.float32)
    input_shape = tuple(sg.tensors[sg.inputs[0]].shape)
    sig_key, sig_input = _signature(model_t)
    batches = [
        {sig_input: xin[i : i + input_shape[0]]}
        for i in range(0, len(xin) - input_shape[0] + 1, input_shape[0])
    ]
    with tempfile.TemporaryDirectory(prefix="ec-tfl-") as tmp:
        src = Path(tmp) / "grid.tflite"
        src.write_bytes(float_grid)
        log: list[str] = []
        try:
            with quiet() as log:
                q = aeq.Quantizer(str(src), recipe)
                if variant == "weight-only":  # nothing to calibrate: activations stay float
                    result = q.quantize(enable_progress_report=False)
                else:
                    qsv = q.calibrate({sig_key: batches}, num_threads=1)
                    for t, aq in chains.items():
                        lo, hi = _act_range(aq)
                        qsv[names[t]] = {"min": np.array([lo], np.float64), "max": np.array([hi], np.float64)}
                    if variant == "int8-full" and output_range is not None:
                        qsv[names[sg.outputs[0]]] = {
                            "min": np.array([output_range[0]], np.float64),
                            "max": np.array([output_range[1]], np.float64),
                        }
                    result = q.quantize(qsv, enable_progress_report=False)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001
            detail = str(e).splitlines()[0] if str(e) else last_error_line(log[0] if log else "")
            raise UserError(
                f"ai-edge-quantizer could not quantize the model ({type(e).__name__}: {detail[:240]})."
            ) from None
        qmodel = read_tflite(result.quantized_model)
    notes: list[str] = []
    if slow:
        notes.append(
            f"tflite/weight-only: {len(slow)} layer(s) keep int4 weights ({', '.join(slow)}); LiteRT's XNNPACK "
            "delegate does not take their DEQUANTIZE, so they are dequantized on every call (several times "
            "the float latency); integer compute or int8 weights avoid it."
        )
    layer_map = _finalize(qmodel, layers, spec, bits, chains, names, notes)
    data = write_tflite(qmodel)
    tmp_out = out_path.with_name(out_path.name + ".tmp")
    tmp_out.write_bytes(data)
    os.replace(tmp_out, out_path)
    recipe_path = out_path.with_name(out_path.name.rsplit(".", 1)[0] + ".recipe.json")
    recipe_path.write_text(
        json.dumps({"recipe": recipe, "layers": {n: r.scope for n, r in layers.items()}}, indent=2) + "\n"
    )
    return ExportedFile(
        path=out_path,
        format="tflite",
        variant=variant,
        planned_bytes=planned_bytes,
        layer_bits=bits,
        fallbacks=fallbacks,
        notes=notes,
        io=_io(qmodel),
        layer_map=layer_map,
        sidecars={"recipe": recipe_path},
    )


def _finalize(
    qmodel: Any,
    layers: dict[str, TflLayer],
    spec: dict[str, LayerQuant],
    bits: dict[str, tuple[int | None, int | None]],
    chains: dict[int, ActQuant],
    float_names: dict[int, str],
    notes: list[str],
) -> dict[str, str]:
    """In place on the quantized model: exact simulation scales on weights and layer inputs (the
    quantizer recomputes them in float arithmetic, 1 ulp away at most), checked integer weights,
    and short tensor names. Returns layer -> op description."""
    sg = qmodel.subgraphs[0]
    by_name: dict[str, list[int]] = {}
    for k, t in enumerate(sg.tensors):
        by_name.setdefault(_tname(t), []).append(k)
    layer_map: dict[str, str] = {}
    for name, ref in layers.items():
        wname = float_names[ref.weight]
        idx = by_name.get(wname, [])
        wb = bits[name][0]
        if wb is None:
            layer_map[name] = f"{ref.op_name} (float)"
            continue
        if len(idx) != 1:
            raise UserError(
                f"layer {name!r}: its weight tensor is missing or duplicated in the quantized TFLite model."
            )
        t = sg.tensors[idx[0]]
        want_type = 17 if wb == 4 else 9  # INT4 | INT8
        if t.type != want_type or t.quantization is None or t.quantization.scale is None:
            raise UserError(
                f"layer {name!r}: ai-edge-quantizer did not store {wb}-bit weights for it (tensor type {t.type})."
            )
        lq = spec[name]
        scale = np.asarray(t.quantization.scale, np.float32)
        want = lq.weight_scale if lq.weight_bits == wb else None
        if want is not None:
            q = _tensor_array(qmodel, t)
            axis = t.quantization.quantizedDimension
            live = (
                np.ones(len(want), bool)
                if q is None
                else np.moveaxis(q, axis, 0).reshape(len(want), -1).any(axis=1)
            )
            # ai-edge-quantizer floors each channel's range at 1e-9: channels with |w| below that are
            # (numerically) dead; their own scale is kept. All-zero channels are exact with any scale.
            tiny = want * (2 ** (wb - 1) - 1) < 1e-9
            rel = np.where(live & ~tiny, np.abs(scale - want) / want, 0.0)
            if rel.max() > 1e-6:
                raise UserError(
                    f"layer {name!r}: TFLite weight scales differ from the simulation's (max rel. {rel.max():.2e})."
                )
            t.quantization.scale = [float(a if d else b) for a, b, d in zip(scale, want, tiny, strict=True)]
        w_in = idx[0]
        deq = next((op for op in sg.operators if list(op.inputs) == [w_in] and len(op.outputs) == 1), None)
        if (
            deq is not None and _builtin(qmodel, deq) == _DEQUANTIZE
        ):  # weight-only: the op reads float weights
            w_in = deq.outputs[0]
        op_k = next(
            (k for k, op in enumerate(sg.operators) if len(op.inputs) > 1 and op.inputs[1] == w_in), None
        )
        layer_map[name] = f"op{op_k} {ref.op_name} w:int{wb}"
    for tidx, aq in chains.items():
        for k in by_name.get(float_names[tidx], []):
            qp = sg.tensors[k].quantization
            if sg.tensors[k].type == 9 and qp is not None and qp.scale is not None and len(qp.scale) == 1:
                zp = aq.zero_point - 128
                if int(qp.zeroPoint[0]) != zp or abs(float(qp.scale[0]) - aq.scale) > 1e-6 * aq.scale:
                    notes.append(
                        f"tensor {float_names[tidx][-60:]!r}: ai-edge-quantizer moved its grid; set back to the simulation's."
                    )
                qp.scale = [float(np.float32(aq.scale))]
                qp.zeroPoint = [zp]
    # short tensor names: model files go to devices where every byte counts
    keep = {sg.inputs[0]: "input", sg.outputs[0]: "output"}
    for k, t in enumerate(sg.tensors):
        t.name = keep.get(k, f"t{k}")
    return layer_map


def _io(model_t: Any) -> dict[str, Any]:
    sg = model_t.subgraphs[0]
    types = {0: "float32", 9: "int8", 3: "uint8", 7: "int16"}

    def desc(k: int) -> dict[str, Any]:
        t = sg.tensors[k]
        q = t.quantization
        quant = None
        if t.type != 0 and q is not None and q.scale is not None and len(q.scale):
            quant = [float(q.scale[0]), int(q.zeroPoint[0])]
        return {
            "name": _tname(t),
            "dtype": types.get(t.type, str(t.type)),
            "shape": [int(s) for s in t.shape],
            "quant": quant,
        }

    return {"input": desc(sg.inputs[0]), "output": desc(sg.outputs[0])}
