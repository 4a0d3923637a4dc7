"""Existing .onnx models: check the file, measure per-tensor sensitivity, plan int8/int4, quantize.

Without torch there are no gradients, so sensitivity is measured (:func:`noise_gains`): Gaussian
noise of known variance is added to one weight initializer at a time and onnxruntime measures the
output noise power on calibration data; the ratio is that tensor's gain. A plan's output noise is
predicted as ``sum_i gain_i * mean((Q_b(W_i) - W_i)^2)`` and the bits are allocated by the
project's ILP (:func:`edge_compress.quant.allocate.allocate_bits`) under the byte budget.

The simulation of an ONNX-input plan is the QDQ graph itself executed with every onnxruntime graph
optimization disabled (QuantizeLinear / DequantizeLinear evaluated in float, i.e. fake
quantization); parity compares the optimized runtime (integer kernels) against it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_compress.errors import UserError

_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class OnnxWeight:
    """A quantizable weight tensor of an existing ONNX model."""

    layer: str  # plan key: the initializer name without a trailing ".weight"
    node: str
    op_type: str
    initializer: str
    kind: str  # conv | depthwise_conv | linear
    shape: tuple[int, ...]
    axis: int  # output-channel axis in the initializer
    has_bias: bool


# --------------------------------------------------------------------------------------------
# loading and checks


def load_checked(path: str | Path, keep_float: list[str] | None = None) -> Any:
    """Load an ONNX file (with its external data) and check it runs in onnxruntime.

    Raises:
        UserError: truncated / corrupt file, missing external data, invalid graph, an op no
            runtime here can run (naming the op and node), more than one input or output.
    """
    import onnx
    from onnx import external_data_helper

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such model file.")
    if p.stat().st_size == 0:
        raise UserError(f"{p}: the file is empty (truncated copy?).")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends
        raise UserError(f"{p}: not a valid ONNX file (truncated or corrupt: {type(e).__name__}).") from None
    if not model.graph.node:
        raise UserError(f"{p}: not a valid ONNX model (the graph has no nodes; truncated or not ONNX).")
    base = p.parent
    for t in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(t):
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        f = base / loc
        if not loc or not f.is_file():
            raise UserError(
                f"{p}: tensor {t.name!r} keeps its data in the external file {loc!r}, which is missing; "
                f"copy it next to the model (into {base})."
            )
        need = int(info.get("offset", 0)) + int(info.get("length", 0))
        if need > f.stat().st_size:
            raise UserError(
                f"{p}: external data file {loc!r} is truncated ({f.stat().st_size} bytes, tensor {t.name!r} needs {need})."
            )
    try:
        external_data_helper.load_external_data_for_model(model, str(base))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{p}: cannot read its external data ({type(e).__name__}: {str(e)[:160]}).") from None
    _check_ops(model, p, keep_float or [])
    try:
        onnx.checker.check_model(model, full_check=False)
    except Exception as e:  # noqa: BLE001 - ValidationError
        raise UserError(f"{p}: invalid ONNX graph ({str(e).splitlines()[0][:200]}).") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise UserError(
            f"{p}: edge-compress handles models with one input and one output ({len(inputs)} and {len(model.graph.output)})."
        )
    return model


def _check_ops(model: Any, p: Path, keep_float: list[str]) -> None:
    import onnx

    opsets = {o.domain or "": o.version for o in model.opset_import}
    for n in model.graph.node:
        domain = n.domain or ""
        if domain in ("", "ai.onnx"):
            if not onnx.defs.has(n.op_type):
                raise UserError(
                    f"{p}: node {n.name or '(unnamed)'!r} uses op {n.op_type!r}, which is not an ONNX operator; "
                    "replace it before compiling."
                )
            continue
        if domain == "com.microsoft":
            continue
        raise UserError(
            f"{p}: node {n.name or '(unnamed)'!r} uses op {n.op_type!r} from domain {domain!r} (opset {opsets.get(domain)}), "
            f"which onnxruntime cannot run here, so it can be neither calibrated nor quantized; "
            f"keep it in float with --keep-float {n.name or n.op_type} after registering the op, or remove it."
            if n.name not in keep_float
            else f"{p}: node {n.name!r} ({n.op_type}, domain {domain!r}) is kept float, but onnxruntime cannot run it here."
        )


def session(model: Any, *, optimize: bool = True, threads: int = 1) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    try:
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0]
        raise UserError(f"onnxruntime cannot load the model ({msg[:240]}).") from None


def input_batch(model: Any) -> int | None:
    """The fixed batch size of the model input, or None when it is dynamic."""
    inits = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    dims = inp.type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
        return int(dims[0].dim_value)
    return None


def run(
    sess: Any,
    x: np.ndarray,
    fixed_batch: int | None,
    feeds: dict[str, np.ndarray] | None = None,
    batch: int = 128,
) -> np.ndarray:
    name = sess.get_inputs()[0].name
    step = fixed_batch or batch
    outs = []
    for i in range(0, len(x), step):
        xb = np.ascontiguousarray(x[i : i + step], dtype=np.float32)
        n = len(xb)
        if fixed_batch and n < fixed_batch:
            xb = np.concatenate([xb, np.repeat(xb[-1:], fixed_batch - n, axis=0)])
        outs.append(np.asarray(sess.run(None, {name: xb, **(feeds or {})})[0])[:n])
    return np.concatenate(outs).astype(np.float32)


# --------------------------------------------------------------------------------------------
# weights


def find_weights(model: Any, keep_float: list[str] | None = None) -> list[OnnxWeight]:
    """Conv / Gemm / MatMul nodes whose weight is a float initializer (others stay float)."""
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    keep = set(keep_float or [])
    out: list[OnnxWeight] = []
    seen: set[str] = set()
    for n in model.graph.node:
        if n.op_type not in _WEIGHT_OPS or len(n.input) < 2 or n.name in keep:
            continue
        w = inits.get(n.input[1])
        if w is None:
            if n.op_type == "Conv":
                raise UserError(
                    f"node {n.name or '(unnamed)'!r} (Conv) computes its weights at run time, so they cannot be quantized; "
                    f"keep it in float with --keep-float {n.name or 'NODE'}."
                )
            continue  # MatMul of two activations: not a weight layer
        if w.data_type != TensorProto.FLOAT or w.name in seen:
            continue
        seen.add(w.name)
        attrs = {a.name: a for a in n.attribute}
        dims = tuple(int(d) for d in w.dims)
        if n.op_type == "Conv":
            group = attrs["group"].i if "group" in attrs else 1
            kind = "depthwise_conv" if group > 1 and dims[1] == 1 else "conv"
            axis = 0
        elif n.op_type == "Gemm":
            axis = 0 if ("transB" in attrs and attrs["transB"].i) else 1
            kind = "linear"
        else:
            if len(dims) != 2:
                continue
            axis, kind = 1, "linear"
        layer = w.name[: -len(".weight")] if w.name.endswith(".weight") else w.name
        has_bias = n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and bool(n.input[2])
        out.append(OnnxWeight(layer, n.name, n.op_type, w.name, kind, dims, axis, has_bias))
    if not out:
        raise UserError(
            "the ONNX model has no Conv / Gemm / MatMul with float weight initializers to quantize."
        )
    names = [w.node for w in out]
    if len(set(names)) != len(names) or any(not n for n in names):
        _name_nodes(model)
        return find_weights(model, keep_float)
    return out


def _name_nodes(model: Any) -> None:
    seen: set[str] = set()
    for k, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type.lower()}_{k}"
        seen.add(n.name)


def torch_layout(arr: np.ndarray, w: OnnxWeight) -> np.ndarray:
    """Output channels first (the quantizer's per-channel convention)."""
    return np.moveaxis(arr, w.axis, 0) if w.axis != 0 else arr


def noise_gains(
    model: Any,
    weights: list[OnnxWeight],
    calib_x: np.ndarray,
    *,
    rel_sigma: float = 0.02,
    draws: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Output noise power per unit of weight-noise variance, per weight tensor (measured).

    Each weight initializer becomes an overridable graph input of one session; for each tensor,
    ``draws`` Gaussian perturbations with std ``rel_sigma * rms(W)`` are fed and the mean squared
    output deviation on ``calib_x`` is divided by the noise variance.
    """
    import copy

    from onnx import helper, numpy_helper

    m = copy.deepcopy(model)
    inits = {i.name: i for i in m.graph.initializer}
    base: dict[str, np.ndarray] = {}
    for w in weights:
        t = inits[w.initializer]
        base[w.initializer] = numpy_helper.to_array(t).astype(np.float32)
        m.graph.input.append(helper.make_tensor_value_info(w.initializer, t.data_type, list(t.dims)))
    if m.ir_version < 4:
        m.ir_version = 4
    sess = session(m)
    fb = input_batch(model)
    ref = run(sess, calib_x, fb)
    rng = np.random.default_rng(seed)
    gains: dict[str, float] = {}
    for w in weights:
        arr = base[w.initializer]
        sigma = rel_sigma * float(np.sqrt(np.mean(arr**2))) or 1e-6
        powers = []
        for _ in range(draws):
            noisy = arr + rng.normal(0.0, sigma, arr.shape).astype(np.float32)
            out = run(sess, calib_x, fb, feeds={w.initializer: noisy})
            powers.append(float(np.mean((out - ref) ** 2)))
        gains[w.layer] = float(np.mean(powers)) / (sigma**2)
    return gains


def quant_error(arr: np.ndarray, bits: int, clip: str = "mse") -> tuple[float, np.ndarray]:
    """(mean squared weight error per element at ``bits``, per-channel scales); channels first."""
    import torch

    from edge_compress.quant.fakequant import quantize_weight

    q, scale = quantize_weight(torch.from_numpy(np.ascontiguousarray(arr)), bits, True, clip)
    return float(((q.numpy() - arr) ** 2).mean()), scale.numpy().astype(np.float32)


def weight_bytes(w: OnnxWeight, bits: int | None) -> float:
    n = math.prod(w.shape)
    out_c = w.shape[w.axis]
    b = 32 if bits is None else bits
    scales = 0 if bits is None else out_c * 4
    bias = out_c * 4 if w.has_bias else 0
    return math.ceil(n * b / 8) + scales + bias


def save_model(model: Any, path: str | Path) -> None:
    import onnx

    tmp = Path(str(path) + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
