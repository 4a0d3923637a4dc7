"""Existing float .tflite models: check the file, find weight tensors, weight-only int8/int4 via
ai-edge-quantizer.

The weights of every planned op are first replaced by their values on the plan's grid (symmetric,
per output channel, MSE clipping), so ai-edge-quantizer's min-max quantization reproduces the
plan's scales. The simulation is that float model with grid weights, run in the same interpreter;
the weight-only file dequantizes its int8 / int4 weights and computes in float, so it matches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_compress.errors import UserError
from edge_compress.export.tflite import _opname, _tensor_array, _tname, read_tflite, write_tflite

_WEIGHT_OPS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}  # op -> output-channel axis
_INT4_WEIGHT_ONLY = ("CONV_2D", "FULLY_CONNECTED")


@dataclass(frozen=True)
class TflWeight:
    layer: str
    op_index: int
    op_name: str
    tensor: int
    kind: str
    shape: tuple[int, ...]
    axis: int
    has_bias: bool
    scope: str


def load_checked(path: str | Path) -> tuple[bytes, Any]:
    """The file's bytes and its flatbuffer object, checked to be a float model LiteRT can load.

    Raises:
        UserError: empty, truncated or corrupt file; not float; more than one input or output.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such model file.")
    data = p.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise UserError(f"{p}: not a TFLite flatbuffer (no TFL3 identifier; truncated or another format).")
    try:
        model_t = read_tflite(data)
        sg = model_t.subgraphs[0]
    except Exception as e:  # noqa: BLE001 - flatbuffer decoding errors
        raise UserError(
            f"{p}: not a valid TFLite file (truncated or corrupt: {str(e)[:120] or type(e).__name__})."
        ) from None
    try:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_content=data)
        it.allocate_tensors()
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{p}: LiteRT cannot load the model ({str(e).splitlines()[0][:200]}).") from None
    if len(model_t.subgraphs) != 1 or len(sg.inputs) != 1 or len(sg.outputs) != 1:
        raise UserError(f"{p}: edge-compress handles single-subgraph models with one input and one output.")
    if sg.tensors[sg.inputs[0]].type != 0:
        raise UserError(f"{p}: the model input is not float32; the model is already quantized.")
    return data, model_t


def find_weights(model_t: Any) -> list[TflWeight]:
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfu

    sg = model_t.subgraphs[0]
    out = []
    for k, op in enumerate(sg.operators):
        name = _opname(model_t, op)
        if name not in _WEIGHT_OPS or len(op.inputs) < 2:
            continue
        t = sg.tensors[op.inputs[1]]
        arr = _tensor_array(model_t, t)
        if arr is None:
            continue
        if t.type != 0:
            raise UserError(
                f"op {k} ({name}) already has {t.type}-typed weights: the model is already quantized."
            )
        tn = _tname(t).split(";")[0]
        short = tn.rsplit("/", 1)[-1].rsplit(".", 1)[-1] if tn else ""
        layer = f"{k}:{short[-48:]}" if short else f"{k}:{name.lower()}"
        kind = (
            "depthwise_conv"
            if name == "DEPTHWISE_CONV_2D"
            else ("linear" if name == "FULLY_CONNECTED" else "conv")
        )
        has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
        out.append(
            TflWeight(
                layer,
                k,
                name,
                op.inputs[1],
                kind,
                tuple(int(s) for s in t.shape),
                _WEIGHT_OPS[name],
                has_bias,
                tfu.get_op_scope(op, sg.tensors),
            )
        )
    if not out:
        raise UserError(
            "the TFLite model has no CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED with constant float weights."
        )
    return out


def with_weights(model_t: Any, new: dict[int, np.ndarray]) -> bytes:
    """Serialized copy of the model with the float weights of tensors ``new`` replaced."""
    import copy

    m = copy.deepcopy(model_t)
    sg = m.subgraphs[0]
    for tidx, arr in new.items():
        m.buffers[sg.tensors[tidx].buffer].data = np.frombuffer(
            np.ascontiguousarray(arr, np.float32).tobytes(), np.uint8
        )
    return write_tflite(m)


class Runner:
    """An interpreter over model bytes, run one fixed-size batch at a time."""

    def __init__(self, data: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_content=data, num_threads=1)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]
        self.batch = int(self.inp["shape"][0])

    def run(self, x: np.ndarray) -> np.ndarray:
        outs = []
        b = self.batch
        for i in range(0, len(x), b):
            xb = x[i : i + b]
            n = len(xb)
            if n < b:
                xb = np.concatenate([xb, np.repeat(xb[-1:], b - n, axis=0)])
            self.it.set_tensor(self.inp["index"], np.ascontiguousarray(xb, np.float32))
            self.it.invoke()
            outs.append(self.it.get_tensor(self.out["index"]).copy()[:n])
        return np.concatenate(outs).astype(np.float32)


def check_input(data: bytes, x: np.ndarray, path: str | Path) -> None:
    r = Runner(data)
    shape = tuple(int(s) for s in r.inp["shape"][1:])
    if tuple(x.shape[1:]) != shape:
        raise UserError(
            f"{path}: the model takes samples of shape {shape}, the data has {tuple(x.shape[1:])}."
        )


def noise_gains(
    model_t: Any,
    weights: list[TflWeight],
    calib_x: np.ndarray,
    *,
    rel_sigma: float = 0.02,
    draws: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Output noise power per unit weight-noise variance, per weight tensor, measured in LiteRT."""
    sg = model_t.subgraphs[0]
    ref = Runner(write_tflite(model_t)).run(calib_x)
    rng = np.random.default_rng(seed)
    gains = {}
    for w in weights:
        arr = _tensor_array(model_t, sg.tensors[w.tensor]).astype(np.float32)
        sigma = rel_sigma * float(np.sqrt(np.mean(arr**2))) or 1e-6
        powers = []
        for _ in range(draws):
            noisy = arr + rng.normal(0.0, sigma, arr.shape).astype(np.float32)
            out = Runner(with_weights(model_t, {w.tensor: noisy})).run(calib_x)
            powers.append(float(np.mean((out - ref) ** 2)))
        gains[w.layer] = float(np.mean(powers)) / sigma**2
    return gains


def weight_bytes(w: TflWeight, bits: int | None) -> float:
    n = math.prod(w.shape)
    out_c = w.shape[w.axis]
    b = 32 if bits is None else bits
    return math.ceil(n * b / 8) + (0 if bits is None else out_c * 4) + (out_c * 4 if w.has_bias else 0)


def weight_only_recipe(
    plan_bits: dict[str, int | None], weights: list[TflWeight]
) -> tuple[list[dict[str, Any]], dict[str, int | None], list[tuple[str, str, str]]]:
    """Recipe rules (exact op scopes), the bits each op really gets, and (layer, planned->actual, reason) fallbacks."""
    import re

    from edge_compress.export.tflite import _weight_only

    recipe: list[dict[str, Any]] = []
    actual: dict[str, int | None] = {}
    fallbacks = []
    for w in weights:
        b = plan_bits.get(w.layer)
        if b is None:
            actual[w.layer] = None
            continue
        if b == 4 and w.op_name not in _INT4_WEIGHT_ONLY:
            fallbacks.append(
                (
                    w.layer,
                    "int4 -> int8",
                    f"{w.op_name} has no int4 weight-only config in ai-edge-quantizer 0.10",
                )
            )
            b = 8
        recipe.append(
            {
                "regex": "^" + re.escape(w.scope) + "$",
                "operation": w.op_name,
                "algorithm_key": "min_max_uniform_quantize",
                "op_config": _weight_only(b),
            }
        )
        actual[w.layer] = b
    return recipe, actual, fallbacks
