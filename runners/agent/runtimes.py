"""Runtime adapters of the device-side agent: load a model, describe its inputs, run it.

Pushed next to ``agent.py`` and imported as a top-level module. Imports only the standard
library and numpy at module level; each runtime (onnxruntime, ai_edge_litert, tflite_runtime) is
imported when a model of its format is loaded, so a target needs only the one it uses.
Keep the syntax compatible with Python 3.8 (older board images).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np


class AgentError(Exception):
    """A failure reported as data: ``kind`` is a ``runners.base.ErrorKind``."""

    def __init__(self, message: str, kind: str = "agent") -> None:
        super().__init__(message)
        self.kind = kind


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


class InputSpec:
    """One model input: name, concrete shape (dynamic dims set to 1), dtype, quantization."""

    def __init__(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: Any,
        quant: tuple[float, int] | None = None,
        dynamic_batch: bool = False,
    ) -> None:
        self.name = name
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.quant = quant  # (scale, zero_point) of an integer-quantized input, else None
        self.dynamic_batch = dynamic_batch

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype.name, "quant": self.quant}


class Session:
    """A loaded model. ``bind(feeds)`` returns a no-argument callable: one timed inference."""

    name = ""
    version = ""
    inputs: list[InputSpec] = []

    def bind(self, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
        raise NotImplementedError

    def predict(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run once and return the first output."""
        raise NotImplementedError

    def dequantize(self, out: np.ndarray) -> np.ndarray:
        """The first output as float (integer outputs of full-integer models are dequantized)."""
        return np.asarray(out, dtype=np.float64)


class OrtSession(Session):
    def __init__(self, path: str, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise AgentError(
                "onnxruntime is not installed on the target; install it (edge-compress targets setup).",
                "agent",
            ) from None
        self.name, self.version = "onnxruntime", ort.__version__
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise AgentError(
                f"onnxruntime could not load the model {os.path.basename(path)} ({_first_line(e)})."
            ) from None
        self.inputs = [self._spec(i) for i in self._sess.get_inputs()]

    @staticmethod
    def _spec(arg: Any) -> InputSpec:
        dtype = _ORT_TYPES.get(arg.type)
        if dtype is None:
            raise AgentError(f"input {arg.name!r} has type {arg.type}, which the agent cannot generate.")
        dims = list(arg.shape or [])
        dynamic_batch = bool(dims) and not isinstance(dims[0], int)
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in dims)
        return InputSpec(arg.name, shape, dtype, None, dynamic_batch)

    def bind(self, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
        run = self._sess.run

        def once() -> Any:
            return run(None, feeds)

        return once

    def predict(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self._sess.run(None, feeds)[0])


class TfliteSession(Session):
    def __init__(self, path: str, threads: int, prefer: str = "auto") -> None:
        interpreter_cls, self.name, self.version = _tflite_interpreter(prefer)
        try:
            self._it = interpreter_cls(model_path=path, num_threads=max(1, int(threads)))
            for d in self._it.get_input_details():
                sig = d.get("shape_signature")
                if sig is not None and any(int(x) < 0 for x in sig):
                    self._it.resize_tensor_input(d["index"], [max(1, int(x)) for x in sig])
            self._it.allocate_tensors()
        except Exception as e:
            raise AgentError(
                f"{self.name} could not load the model {os.path.basename(path)} ({_first_line(e)})."
            ) from None
        self._details = self._it.get_input_details()
        self._out = self._it.get_output_details()[0]["index"]
        self.inputs = [self._spec(d) for d in self._details]

    @staticmethod
    def _spec(d: dict[str, Any]) -> InputSpec:
        scale, zp = d.get("quantization") or (0.0, 0)
        quant = (float(scale), int(zp)) if scale else None
        sig = d.get("shape_signature")
        dynamic = sig is not None and len(sig) > 0 and int(sig[0]) < 0
        return InputSpec(d["name"], tuple(int(x) for x in d["shape"]), d["dtype"], quant, dynamic)

    def _set(self, feeds: dict[str, np.ndarray]) -> None:
        for d in self._details:
            arr = feeds[d["name"]]
            if tuple(arr.shape) != tuple(d["shape"]):
                self._it.resize_tensor_input(d["index"], list(arr.shape))
                self._it.allocate_tensors()
            self._it.set_tensor(d["index"], arr)

    def bind(self, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
        self._set(feeds)
        return self._it.invoke

    def predict(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self._set(feeds)
        self._it.invoke()
        return np.array(self._it.get_tensor(self._out))

    def dequantize(self, out: np.ndarray) -> np.ndarray:
        out = np.asarray(out)
        if np.issubdtype(out.dtype, np.integer):
            for d in self._it.get_output_details():
                if d["index"] == self._out:
                    scale, zp = d.get("quantization", (0.0, 0))
                    if scale:
                        return (out.astype(np.float64) - zp) * scale
        return out.astype(np.float64)


def _tflite_interpreter(prefer: str) -> tuple[Any, str, str]:
    """The first importable TFLite interpreter: ai_edge_litert, then tflite_runtime."""
    order = ["litert", "tflite_runtime"]
    if prefer in order:
        order.remove(prefer)
        order.insert(0, prefer)
    for which in order:
        try:
            if which == "litert":
                import ai_edge_litert
                from ai_edge_litert.interpreter import Interpreter

                return Interpreter, "litert", str(getattr(ai_edge_litert, "__version__", "unknown"))
            import tflite_runtime
            from tflite_runtime.interpreter import Interpreter

            return Interpreter, "tflite_runtime", str(getattr(tflite_runtime, "__version__", "unknown"))
        except ImportError:
            continue
    raise AgentError(
        "no TFLite runtime is installed on the target (ai-edge-litert or tflite-runtime); "
        "install one (edge-compress targets setup --runtime litert)."
    )


def load_session(path: str, runtime: str, threads: int) -> Session:
    """Load ``path`` with the runtime its format needs (``runtime`` may force a TFLite flavour)."""
    if not os.path.isfile(path):
        raise AgentError(f"the model file {path} is not on the target.", "usage")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".onnx":
        if runtime not in ("auto", "onnxruntime"):
            raise AgentError(f"runtime {runtime!r} cannot run an .onnx model; use onnxruntime.", "usage")
        return OrtSession(path, threads)
    if suffix == ".tflite":
        if runtime not in ("auto", "litert", "tflite_runtime"):
            raise AgentError(f"runtime {runtime!r} cannot run a .tflite model; use litert.", "usage")
        return TfliteSession(path, threads, runtime)
    raise AgentError(f"unsupported model format {suffix!r} (expected .onnx or .tflite).", "usage")


# ---------------------------------------------------------------------------------------------
# inputs


def random_inputs(specs: list[InputSpec], seed: int) -> dict[str, np.ndarray]:
    """Random arrays of each input's dtype and shape (full int8 range for int8 inputs)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for s in specs:
        if s.dtype.kind == "f":
            arr = rng.standard_normal(s.shape).astype(s.dtype)
        elif s.dtype.kind in "iu":
            info = np.iinfo(s.dtype)
            lo, hi = (int(info.min), int(info.max) + 1) if info.bits <= 16 else (0, 2)
            arr = rng.integers(lo, hi, size=s.shape).astype(s.dtype)
        elif s.dtype.kind == "b":
            arr = rng.integers(0, 2, size=s.shape).astype(np.bool_)
        else:
            raise AgentError(f"input {s.name!r} has dtype {s.dtype}, which the agent cannot generate.")
        feeds[s.name] = arr
    return feeds


def convert(arr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Cast ``arr`` to the input's dtype, quantizing floats for an integer-quantized input."""
    arr = np.asarray(arr)
    if arr.dtype == spec.dtype:
        return arr
    if arr.dtype.kind == "f" and spec.dtype.kind in "iu":
        if spec.quant is None:
            raise AgentError(
                f"input {spec.name!r} is {spec.dtype.name} but the data is {arr.dtype.name}; give data of the input's dtype.",
                "usage",
            )
        scale, zp = spec.quant
        info = np.iinfo(spec.dtype)
        return np.clip(np.round(arr / scale) + zp, info.min, info.max).astype(spec.dtype)
    return arr.astype(spec.dtype)


def npz_inputs(path: str, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """Inputs from a .npz: arrays named like the inputs, or as many arrays in input order."""
    data = _load_npz(path)
    keys = list(data.keys())
    if all(s.name in data for s in specs):
        chosen = [data[s.name] for s in specs]
    elif len(keys) == len(specs):
        chosen = [data[k] for k in keys]
    else:
        names = ", ".join(s.name for s in specs)
        raise AgentError(
            "{} has arrays {} but the model's inputs are {}; name them alike.".format(
                os.path.basename(path), ", ".join(keys), names
            ),
            "usage",
        )
    feeds = {}
    for spec, arr in zip(specs, chosen, strict=False):
        arr = convert(arr, spec)
        if not spec.dynamic_batch and tuple(arr.shape) != spec.shape:
            raise AgentError(
                f"input {spec.name!r} needs shape {list(spec.shape)} but {os.path.basename(path)} gives {list(arr.shape)}.",
                "usage",
            )
        feeds[spec.name] = arr
    return feeds


def accuracy(session: Session, path: str) -> tuple[float, int]:
    """Top-1 accuracy over a labelled .npz (``x``, ``y``): argmax of the first output.

    Returns:
        (fraction correct, number of samples).
    """
    data = _load_npz(path)
    if "x" not in data or "y" not in data:
        raise AgentError(f"{os.path.basename(path)} must hold arrays 'x' and 'y'.", "usage")
    x, y = np.asarray(data["x"]), np.asarray(data["y"])
    if y.ndim > 1:
        y = y.argmax(axis=-1)
    if len(x) != len(y) or len(x) == 0:
        raise AgentError(
            f"{os.path.basename(path)}: 'x' and 'y' must have the same, non-zero length.", "usage"
        )
    spec = session.inputs[0]
    if len(session.inputs) != 1:
        raise AgentError("the accuracy run supports single-input models only.", "usage")
    step = 256 if spec.dynamic_batch else max(1, spec.shape[0] if spec.shape else 1)
    correct = 0
    for i in range(0, len(x), step):
        xb = x[i : i + step]
        if not spec.dynamic_batch and len(xb) < step:
            break
        xb = convert(xb.reshape((len(xb),) + tuple(spec.shape[1:])), spec)
        out = session.predict({spec.name: xb}).reshape(len(xb), -1)
        correct += int((out.argmax(axis=1) == y[i : i + len(xb)]).sum())
    n = (len(x) // step) * step if not spec.dynamic_batch else len(x)
    if n == 0:
        raise AgentError(f"{os.path.basename(path)} has fewer samples than one batch of the model.", "usage")
    return correct / n, n


def reference_agreement(session: Session, path: str) -> dict[str, Any] | None:
    """Compare the model's outputs with reference outputs (array ``ref`` in the .npz, e.g. the
    host runtime's logits for the same ``x``): top-1 agreement, output SQNR in dB, and this
    target's top-1 class per sample (``top1``, for paired statistics on the host)."""
    data = _load_npz(path)
    if "ref" not in data or "x" not in data:
        return None
    x, ref = np.asarray(data["x"]), np.asarray(data["ref"], dtype=np.float64)
    spec = session.inputs[0]
    step = 256 if spec.dynamic_batch else max(1, spec.shape[0] if spec.shape else 1)
    outs = []
    n = 0
    for i in range(0, len(x), step):
        xb = x[i : i + step]
        if not spec.dynamic_batch and len(xb) < step:
            break
        xb = convert(xb.reshape((len(xb),) + tuple(spec.shape[1:])), spec)
        outs.append(session.dequantize(session.predict({spec.name: xb})).reshape(len(xb), -1))
        n += len(xb)
    if n == 0:
        return None
    out = np.concatenate(outs)
    r = ref[:n].reshape(n, -1)
    noise = float(((out - r) ** 2).sum())
    sig = float((r**2).sum())
    sqnr = float("inf") if noise == 0 else 10.0 * float(np.log10(max(sig, 1e-30) / noise))
    top1 = out.argmax(1)
    return {
        "agreement": float((top1 == r.argmax(1)).mean()),
        "sqnr_db": sqnr,
        "samples": float(n),
        "top1": [int(c) for c in top1],
    }


def _load_npz(path: str) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise AgentError(f"cannot read {os.path.basename(path)} ({_first_line(e)}).", "usage") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else type(e).__name__
    return msg[:300].rstrip(".")
