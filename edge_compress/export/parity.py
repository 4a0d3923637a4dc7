"""Parity: run an exported file in its real runtime and compare it with the plan's simulation.

Each file runs in the runtime that will execute it on a device (onnxruntime for .onnx; the LiteRT
interpreter ``ai_edge_litert`` for .tflite, and ``tflite_runtime`` too when it is importable) on
held-out data. Against the torch simulation of the same plan (after the file's recorded
fallbacks) we report top-1 agreement and the SQNR of the outputs; on the test split, the
runtime's accuracy. :func:`check` raises :class:`ParityError` (exit code 1) below the threshold.

Two comparisons are made like for like (each says so in the report's ``note``):

- A file with an integer output (TFLite ``int8-full``) is compared with the simulation's logits
  projected onto that output grid: near-equal logits tie there, which the float simulation does
  not, and argmax breaks ties the same way in both (4 of 500 conv1d int4 predictions).
- An ONNX file with int8 weights for a target whose int8 kernels do not saturate (ARM, x86 with
  VNNI: ``exact_int8``, see ``compiler.default_int8_weights``). On an x86 host without VNNI,
  onnxruntime's uint8 x int8 kernels saturate 16-bit sums (vpmaddubsw; mobilenetv2 for rpi4: SQNR
  16 dB instead of 34 dB), so the check runs the same weights stored as uint8 with zero point 128
  (the same values, exact uint8 x uint8 kernels), which computes what the target's kernels compute;
  the file as stored is run too and its figures on this host are kept in ``other_runtimes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_compress.errors import UserError

DEFAULT_THRESHOLD = 0.99


class ParityError(UserError):
    """An exported file disagrees with the simulation of its plan (exit code 1: a failed check,
    not a usage mistake)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)


@dataclass
class ParityReport:
    file: str
    format: str
    variant: str
    runtime: str
    samples: int
    agreement: float  # top-1 agreement with the simulation on the validation split
    sqnr_db: float  # output SQNR vs the simulation (signal = simulation output)
    max_abs_diff: float
    runtime_accuracy: float | None  # test split, in the runtime
    simulated_accuracy: float | None  # test split, simulation of this file's effective plan
    threshold: float
    passed: bool
    other_runtimes: dict[str, dict[str, Any]] = field(default_factory=dict)
    note: str = ""  # how the comparison was made when it is not the file as stored vs the plain simulation

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    noise = float(np.sum((np.asarray(out, np.float64) - ref) ** 2))
    signal = float(np.sum(np.asarray(ref, np.float64) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-30) / noise))


# --------------------------------------------------------------------------------------------
# runtimes


X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def saturating_u8s8_host() -> bool:
    """True on an x86 CPU without VNNI, where onnxruntime's uint8 x int8 kernels saturate 16-bit sums
    (vpmaddubsw). An x86 CPU whose flags cannot be read counts as saturating."""
    import platform

    if platform.machine().lower() not in X86_MACHINES:
        return False
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True
    for line in text.splitlines():
        if line.startswith("flags"):
            return not set(VNNI_FLAGS) & set(line.partition(":")[2].split())
    return True


def uint8_weights(model: Any) -> int:
    """Store the int8 initializers read by DequantizeLinear (weights) as uint8 with zero point + 128,
    in place: the same dequantized values. Returns how many were changed."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    done: set[str] = set()
    changed = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        w = inits[node.input[0]]
        if w.data_type != TensorProto.INT8:
            continue
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        if zp_name and zp_name not in inits:
            continue  # a computed zero point: leave the node as it is
        for name in (w.name, zp_name):
            if name and name not in done:
                t = inits[name]
                t.CopyFrom(
                    numpy_helper.from_array(
                        (numpy_helper.to_array(t).astype(np.int16) + 128).astype(np.uint8), name
                    )
                )
                done.add(name)
        if not zp_name:  # no zero point means 0 in int8: 128 in uint8, one per scale
            scale = numpy_helper.to_array(inits[node.input[1]])
            zp_name = f"{w.name}__zero_point_u8"
            if zp_name not in inits:
                t = numpy_helper.from_array(np.full(scale.shape, 128, np.uint8), zp_name)
                model.graph.initializer.append(t)
                inits[zp_name] = t
            del node.input[2:]
            node.input.append(zp_name)
        changed += 1
    return changed


class OrtRunner:
    """onnxruntime on CPU, default graph optimizations (what a device runs), one thread.

    ``exact_int8``: on a host with saturating uint8 x int8 kernels (:func:`saturating_u8s8_host`),
    run int8 weights stored as uint8 (:func:`uint8_weights`); ``reencoded`` counts them.
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 1, exact_int8: bool = False) -> None:
        import onnxruntime as ort

        self.version = ort.__version__
        self.reencoded = 0
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        source: str | bytes = str(path)
        if exact_int8 and saturating_u8s8_host():
            import onnx

            model = onnx.load(str(path))
            self.reencoded = uint8_weights(model)
            if self.reencoded:
                source = model.SerializeToString()
        try:
            self.sess = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise UserError(
                f"{path}: onnxruntime cannot load the model ({str(e).splitlines()[0][:200]})."
            ) from None
        inp = self.sess.get_inputs()[0]
        self.input = inp.name
        first = inp.shape[0] if inp.shape else None
        self.batch = first if isinstance(first, int) and first > 0 else None

    def invoker(self, x1: np.ndarray) -> Callable[[], Any]:
        """A call that runs ``x1`` (one prepared batch) and nothing else: for timing."""
        feed = {self.input: np.ascontiguousarray(x1)}
        return lambda: self.sess.run(None, feed)

    def run(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        step = self.batch or batch
        outs = []
        for i in range(0, len(x), step):
            xb = np.ascontiguousarray(x[i : i + step], dtype=np.float32)
            if self.batch and len(xb) < self.batch:
                xb = np.concatenate([xb, np.repeat(xb[-1:], self.batch - len(xb), axis=0)])
                outs.append(np.asarray(self.sess.run(None, {self.input: xb})[0])[: len(x) - i])
                continue
            outs.append(np.asarray(self.sess.run(None, {self.input: xb})[0]))
        return np.concatenate(outs).astype(np.float32)


class TfliteRunner:
    """A LiteRT interpreter (default op resolver: XNNPACK), one sample per invoke (fixed batch).
    Quantized inputs / outputs (int8-full variants) are quantized / dequantized here."""

    def __init__(self, path: str | Path, threads: int = 1, backend: str = "ai_edge_litert") -> None:
        if backend == "tflite_runtime":
            import tflite_runtime  # type: ignore[import-not-found]
            from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

            self.version = getattr(tflite_runtime, "__version__", "")
        else:
            import ai_edge_litert
            from ai_edge_litert.interpreter import Interpreter

            self.version = getattr(ai_edge_litert, "__version__", "")
        self.name = backend
        try:
            self.it = Interpreter(model_path=str(path), num_threads=threads)
            self.it.allocate_tensors()
        except Exception as e:  # noqa: BLE001
            raise UserError(
                f"{path}: {backend} cannot load the model ({str(e).splitlines()[0][:200]})."
            ) from None
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]
        self.batch = int(self.inp["shape"][0])

    def _quant(self, x: np.ndarray) -> np.ndarray:
        dt = self.inp["dtype"]
        if dt == np.float32:
            return x.astype(np.float32)
        scale, zp = self.inp["quantization"]
        info = np.iinfo(dt)
        return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(dt)

    def _dequant(self, y: np.ndarray) -> np.ndarray:
        if self.out["dtype"] == np.float32:
            return y
        scale, zp = self.out["quantization"]
        return (y.astype(np.float32) - zp) * scale

    def invoker(self, x1: np.ndarray) -> Callable[[], Any]:
        """A call that runs ``x1`` (one batch, quantized here once when the input is integer) and
        nothing else: for timing."""
        xin, idx, it = self._quant(np.ascontiguousarray(x1)), self.inp["index"], self.it

        def call() -> None:
            it.set_tensor(idx, xin)
            it.invoke()

        return call

    def run(self, x: np.ndarray) -> np.ndarray:
        outs = []
        b = self.batch
        for i in range(0, len(x), b):
            xb = x[i : i + b]
            n = len(xb)
            if n < b:
                xb = np.concatenate([xb, np.repeat(xb[-1:], b - n, axis=0)])
            self.it.set_tensor(self.inp["index"], self._quant(np.ascontiguousarray(xb)))
            self.it.invoke()
            outs.append(self._dequant(self.it.get_tensor(self.out["index"]).copy())[:n])
        return np.concatenate(outs).astype(np.float32)

    @property
    def integer_output(self) -> bool:
        return self.out["dtype"] != np.float32

    def onto_output_grid(self, y: np.ndarray) -> np.ndarray:
        """Float outputs ``y`` projected onto this file's integer output grid (quantized, then
        dequantized); unchanged for a float output."""
        if not self.integer_output:
            return y
        scale, zp = self.out["quantization"]
        info = np.iinfo(self.out["dtype"])
        q = np.clip(np.round(np.asarray(y, np.float64) / scale) + zp, info.min, info.max)
        return ((q - zp) * scale).astype(np.float32)


def runner_for(
    path: str | Path, fmt: str, threads: int = 1, exact_int8: bool = False
) -> OrtRunner | TfliteRunner:
    """The host runner of a file; ``exact_int8`` as in :class:`OrtRunner`."""
    if fmt == "onnx":
        return OrtRunner(path, threads, exact_int8)
    if fmt == "tflite":
        return TfliteRunner(path, threads)
    raise UserError(f"unknown model format {fmt!r}.")


def tflite_runtime_available() -> bool:
    try:
        import tflite_runtime.interpreter  # type: ignore[import-not-found]  # noqa: F401
    except Exception:  # noqa: BLE001 - missing or broken wheel
        return False
    return True


# --------------------------------------------------------------------------------------------
# the check


def measure(
    path: str | Path,
    fmt: str,
    variant: str,
    sim_val: np.ndarray,
    x_val: np.ndarray,
    *,
    sim_test: np.ndarray | None = None,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    exact_int8: bool = False,
) -> ParityReport:
    """Run ``path`` in its runtime(s) and compare with the simulation outputs ``sim_val``
    (like for like, see the module docstring). ``exact_int8``: the file is for a target whose int8
    kernels do not saturate (ARM, VNNI), so this host's saturation must not count against it."""
    runner = runner_for(path, fmt, exact_int8=exact_int8)
    notes = []
    if isinstance(runner, TfliteRunner) and runner.integer_output:
        sim_val = runner.onto_output_grid(sim_val)
        scale, zp = runner.out["quantization"]
        notes.append(
            f"reference: the simulation's outputs on the file's integer output grid (scale {scale:.6g}, "
            f"zero point {zp})"
        )
    out = runner.run(x_val)
    agree = float(np.mean(out.argmax(1) == sim_val.argmax(1)))
    acc_rt = acc_sim = None
    if x_test is not None and y_test is not None:
        acc_rt = float(np.mean(runner.run(x_test).argmax(1) == y_test))
        if sim_test is not None:
            acc_sim = float(np.mean(sim_test.argmax(1) == y_test))
    others: dict[str, dict[str, Any]] = {}
    if isinstance(runner, OrtRunner) and runner.reencoded:
        notes.append(
            f"{runner.reencoded} int8 weight tensors run stored as uint8 with zero point 128 (the same values): "
            "this host's uint8 x int8 kernels saturate 16-bit sums (x86 without VNNI); ARM and VNNI kernels do not"
        )
        o2 = OrtRunner(path).run(x_val)
        others["onnxruntime (as stored, this host)"] = {
            "version": runner.version,
            "agreement": float(np.mean(o2.argmax(1) == sim_val.argmax(1))),
            "sqnr_db": sqnr_db(sim_val, o2),
        }
    if fmt == "tflite" and tflite_runtime_available():
        try:
            alt = TfliteRunner(path, backend="tflite_runtime")
            o2 = alt.run(x_val)
            others["tflite_runtime"] = {
                "version": alt.version,
                "agreement": float(np.mean(o2.argmax(1) == sim_val.argmax(1))),
                "sqnr_db": sqnr_db(sim_val, o2),
            }
        except Exception as e:  # noqa: BLE001 - an older runtime may lack an op or int4
            others["tflite_runtime"] = {"error": str(e).splitlines()[0][:200]}
    return ParityReport(
        file=Path(path).name,
        format=fmt,
        variant=variant,
        runtime=f"{runner.name} {runner.version}",
        samples=len(x_val),
        agreement=agree,
        sqnr_db=sqnr_db(sim_val, out),
        max_abs_diff=float(np.max(np.abs(out - sim_val))) if len(out) else 0.0,
        runtime_accuracy=acc_rt,
        simulated_accuracy=acc_sim,
        threshold=threshold,
        passed=agree >= threshold,
        other_runtimes=others,
        note="; ".join(notes),
    )


def check(reports: list[ParityReport]) -> None:
    """Raise :class:`ParityError` naming the first file below its threshold."""
    for r in reports:
        if not r.passed:
            raise ParityError(
                f"{r.file}: top-1 agreement with the simulation is {r.agreement:.4f} in {r.runtime}, below the "
                f"threshold {r.threshold:g} (SQNR {r.sqnr_db:.1f} dB); rerun with --no-parity-gate to keep it anyway."
            )
