"""Compute precision of an exported file: integer kernels (QDQ / static int8) or float kernels on
integer-stored weights (``weight-only``).

A quantized file is smaller either way; whether it is also faster depends on the target's
kernels. On ARM CPUs (XNNPACK, dot-product instructions) int8 convolutions run well above float
ones; on an x86 CPU with AVX2 but without VNNI, onnxruntime's and XNNPACK's int8 kernels gain
little and the quantize / dequantize steps and layout changes around them make the zoo's small
models slower than their float exports. There, the ``weight-only`` file keeps the plan's int8 /
int4 weights (and its size) and runs at float speed.

``compute`` (an export option): ``integer`` | ``float`` | ``auto``. ``auto`` predicts the file's
latency both ways with the cost model's kernels (:func:`edge_compress.costmodel.kernels_of`) on a
roofline of the profile's per-precision peaks (:func:`predict_ms`); where the profile has a
measured ``compute.integer_kernels`` model for the format's runtime, each integer kernel takes its
float time times a measured ratio plus per-output-element and per-kernel costs
(:mod:`edge_compress.export.kernel_fit`): wide layers gain, narrow ones lose, and the model's mix of
them decides; with only a scalar ``compute.integer_speedup``, integer kernels take their float time
divided by it; with neither, the ISA peaks. It picks integer compute when it is predicted at
least as fast as float (with a measured kernel model: faster by more than the model's error).
The decision is per model and per format (ONNX: onnxruntime, TFLite: LiteRT); the full-integer
TFLite variant (``int8-full``, for integer-only accelerators) is integer by definition.

A kernel model fitted on one CPU does not carry to another of the same ISA (resnet's integer ONNX:
0.83x its float file on the host the profile was fitted on, 1.1-1.2x on an AMD Zen 1). When the
profile is the compiler's own machine (``transport: local``), the compiler therefore exports both
files and times them here (:func:`measure_here`, :func:`measured_choice`); the prediction stays
in the record next to the measurement.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_compress.graph import ModelGraph
    from edge_compress.plan import CompressionPlan
    from edge_compress.profiles import DeviceProfile

CHOICES = ("auto", "integer", "float")
RUNTIME = {"onnx": "onnxruntime", "tflite": "litert"}
WEIGHT_ONLY = "weight-only"
INTEGER_VARIANT = {"onnx": "qdq", "tflite": "int8"}
_INTEGER_PRECISIONS = ("int8", "int4", "int16")
# LiteRT's XNNPACK delegate takes a DEQUANTIZE of static int8 weights into the graph it builds
# (float speed, measured), not one of int4 weights: those run on LiteRT's own kernel on every call
# and split the delegated graph. Measured on this project's x86 host (LiteRT 2.3): resnet with
# all-int4 weight-only layers 3.8x its float latency, about 13 ns per int4 weight per call.
LITERT_INT4_DEQUANTIZE_NS = 13.0


@dataclass(frozen=True)
class ComputeChoice:
    """How one format's default file computes, and why."""

    format: str
    asked: str  # auto | integer | float
    compute: str  # integer | float
    variant: str  # the file variant it produces: qdq / int8 (integer) or weight-only (float)
    predicted_ms: dict[str, float]  # integer / float: predicted latency of the file (batch 1, 1 thread)
    basis: str
    reason: str
    other: str  # how to get the other choice
    # TFLite weight-only: int4 layers stored as int8 (LiteRT runs int4 DEQUANTIZE on every call);
    # only when the wider file fits the byte budget
    widen_int4: bool = False
    # ONNX integer files: 8-bit weight storage of the kernels the prediction was measured on (int7 on x86
    # without VNNI: the fast exact path); None: the export option decides
    int8_weights: str | None = None
    # local targets: both files timed here (ms, batch 1, one thread, interleaved rounds) and the
    # median per-round integer / float ratio; None when the choice rests on the prediction alone
    measured_ms: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# measured integer / float latency ratio below which a local target keeps the integer file: the
# float (weight-only) file runs at the fp32 export's speed, so integer compute must clearly gain
MEASURED_INTEGER_MAX_RATIO = 0.97


def time_pair(
    a: Callable[[], Any],
    b: Callable[[], Any],
    *,
    rounds: int,
    warmup: int = 10,
    min_round_s: float = 0.02,
    max_seconds: float | None = None,
) -> dict[str, float]:
    """Interleaved timing of two calls on this machine.

    A round times ``n`` calls of each (``n`` sized so that ``a`` takes about ``min_round_s``; ``a``
    first in even rounds, ``b`` first in odd ones) and keeps each one's per-call median, so the
    machine's drifts are shared by both within a round. Stops after ``rounds`` rounds, or after
    ``max_seconds`` once 5 are done. Returns the median per-call latency of each (``a_ms``,
    ``b_ms``), ``ratio``, the median over rounds of b / a, ``rounds`` and ``calls_per_round``.
    """
    import statistics
    import time

    for f in (a, b):
        for _ in range(warmup):
            f()
    n = 1
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < min_round_s:
        a()
        n += 1
    ra: list[float] = []
    rb: list[float] = []
    ratios = []
    start = time.monotonic()
    for r in range(rounds):
        for f, acc in ((a, ra), (b, rb)) if r % 2 == 0 else ((b, rb), (a, ra)):
            ts = []
            for _ in range(n):
                t = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t)
            acc.append(1e3 * statistics.median(ts))
        ratios.append(rb[-1] / ra[-1])
        if max_seconds is not None and r >= 4 and time.monotonic() - start > max_seconds:
            break
    return {
        "a_ms": statistics.median(ra),
        "b_ms": statistics.median(rb),
        "ratio": statistics.median(ratios),
        "rounds": float(len(ratios)),
        "calls_per_round": float(n),
    }


def measure_here(
    paths: dict[str, Any], fmt: str, x1: Any, *, rounds: int = 15, max_seconds: float = 4.0
) -> dict[str, float]:
    """Time the integer and float files of one format on this machine (:func:`time_pair`).

    ``paths``: ``{"integer": path, "float": path}``. Returns the median per-call latency of each
    (ms), ``ratio``, the median over rounds of integer / float, and ``rounds``.
    """
    from edge_compress.export.parity import OrtRunner, TfliteRunner

    runner = OrtRunner if fmt == "onnx" else TfliteRunner
    calls = {k: runner(path, threads=1).invoker(x1[:1]) for k, path in paths.items()}
    t = time_pair(calls["float"], calls["integer"], rounds=rounds, max_seconds=max_seconds)
    return {"integer": t["b_ms"], "float": t["a_ms"], "ratio": t["ratio"], "rounds": t["rounds"]}


def measured_choice(
    predicted: ComputeChoice, forced: dict[str, ComputeChoice], m: dict[str, float]
) -> ComputeChoice:
    """The choice for a local target from both files timed here (:func:`measure_here`)."""
    from dataclasses import replace

    runtime = RUNTIME[predicted.format]
    integer = m["ratio"] < MEASURED_INTEGER_MAX_RATIO
    won = forced["integer" if integer else "float"]
    agree = (
        "as predicted" if (won.compute == predicted.compute) else f"the prediction said {predicted.compute}"
    )
    if integer:
        reason = (
            f"integer kernels measured faster than float on this machine with {runtime} "
            f"({m['integer']:.3g} ms vs {m['float']:.3g} ms, median ratio {m['ratio']:.2f} over "
            f"{int(m['rounds'])} interleaved rounds; {agree})"
        )
    else:
        reason = (
            f"integer kernels not measured faster than float by {100 * (1 - MEASURED_INTEGER_MAX_RATIO):g}% "
            f"on this machine with {runtime} ({m['integer']:.3g} ms vs {m['float']:.3g} ms, median ratio "
            f"{m['ratio']:.2f} over {int(m['rounds'])} interleaved rounds; {agree}): the file keeps the plan's "
            "integer weights and computes in float"
        )
    return replace(
        won,
        asked=predicted.asked,
        predicted_ms=predicted.predicted_ms,
        basis=predicted.basis + "; both files then timed on this machine (a local target)",
        reason=reason,
        measured_ms={k: round(v, 5) for k, v in m.items()},
    )


def check_choice(compute: str) -> str:
    from edge_compress.errors import UserError

    if compute not in CHOICES:
        raise UserError(f"--compute must be one of {', '.join(CHOICES)}, got {compute!r}.")
    return compute


def weight_only_plan(plan: CompressionPlan) -> CompressionPlan:
    """``plan`` with float activations everywhere (what a weight-only file runs)."""
    out = copy.deepcopy(plan)
    for d in out.layers.values():
        d.act_bits = None
    return out


def integer_speedup(profile: DeviceProfile, runtime: str) -> float | None:
    """The profile's measured float/int8 latency ratio for ``runtime`` (None: not measured)."""
    v = (profile.compute.integer_speedup or {}).get(runtime)  # type: ignore[call-overload]
    return None if v is None else float(v)


def integer_kernels(profile: DeviceProfile, runtime: str) -> Any:
    """The profile's measured per-kernel integer model for ``runtime`` (None: not measured)."""
    return (profile.compute.integer_kernels or {}).get(runtime)  # type: ignore[call-overload]


def integer_int8_weights(profile: DeviceProfile, runtime: str) -> str | None:
    """How the integer files the profile's kernel model was measured on store 8-bit weights (None: not said)."""
    model = integer_kernels(profile, runtime)
    return None if model is None else model.int8_weights


def predict_ms(
    profile: DeviceProfile,
    graph: ModelGraph,
    plan: CompressionPlan,
    runtime: str,
    float_compute: set[str] | frozenset[str] = frozenset(),
    widen_int4: bool = False,
) -> tuple[dict[str, float], str]:
    """Predicted latency (ms, batch 1, one thread) of ``plan``'s file computing in integer and in
    float, and the basis of the prediction.

    Float: the roofline of the weight-only kernels (fp32 peak, float activations). Integer: the
    roofline of the integer kernels at the profile's integer peaks, or, when the profile has a
    measured ``integer_speedup`` for ``runtime``, each integer kernel's float time divided by it
    (the measured ratio includes the quantize / dequantize and layout costs a roofline of the
    ISA peaks does not see).
    """
    from dataclasses import replace

    from edge_compress.costmodel import DEFAULT_BASE_MS, kernels_of, roofline_ms
    from edge_compress.export.kernel_fit import predict_integer_ms

    speedup = integer_speedup(profile, runtime)
    model = integer_kernels(profile, runtime)

    def kernel_ms(k: Any) -> float:
        if k.precision not in _INTEGER_PRECISIONS or (speedup is None and model is None):
            return roofline_ms(k, profile)
        as_float = roofline_ms(replace(k, precision="wonly"), profile)
        if model is not None:
            if k.precision == "int4" and model.int4_float_ratio is not None:
                return as_float * model.int4_float_ratio
            return predict_integer_ms(as_float, k.out_elems, model)
        return as_float / speedup  # type: ignore[operator]

    integer = DEFAULT_BASE_MS + sum(kernel_ms(k) for k in kernels_of(graph, plan, float_compute))
    wonly = kernels_of(graph, weight_only_plan(plan))
    flt = DEFAULT_BASE_MS + sum(roofline_ms(k, profile) for k in wonly)
    int4 = 0
    if (
        runtime == "litert" and not widen_int4
    ):  # int4 weights dequantized on every call (depthwise ones are int8)
        int4 = sum(k.weight_params for k in wonly if _int4(plan, k.layer) and k.kind != "depthwise_conv")
        flt += int4 * LITERT_INT4_DEQUANTIZE_NS * 1e-6
    if model is not None:
        basis = (
            f"roofline of {profile.name}'s fp32 peak and memory bandwidth; each integer kernel at "
            f"{model.float_ratio:g}x its float time + {model.ns_per_output:g} ns per output element + "
            f"{model.us_per_kernel:g} us"
            + ("" if model.int4_float_ratio is None else f", int4 kernels at {model.int4_float_ratio:g}x")
            + f" (the profile's measured compute.integer_kernels.{runtime})"
        )
    elif speedup is None:
        basis = f"roofline of {profile.name}'s peak MAC/s per precision and memory bandwidth"
    else:
        basis = (
            f"roofline of {profile.name}'s fp32 peak and memory bandwidth; integer kernels at "
            f"{speedup:g}x their float speed (the profile's measured compute.integer_speedup for {runtime})"
        )
    if int4:
        basis += f"; float: {int4} int4 weights dequantized per call in LiteRT ({LITERT_INT4_DEQUANTIZE_NS:g} ns each, measured)"
    return {"integer": round(integer, 6), "float": round(flt, 6)}, basis


def _int4(plan: CompressionPlan, layer: str) -> bool:
    d = plan.layers.get(layer)
    return d is not None and d.weight_bits is not None and d.weight_bits <= 4


def widened_plan(plan: CompressionPlan) -> CompressionPlan:
    """``plan`` with int4 weights stored as int8 and float activations (the widened TFLite weight-only file)."""
    out = weight_only_plan(plan)
    for d in out.layers.values():
        if d.weight_bits is not None and d.weight_bits <= 4:
            d.weight_bits = 8
    return out


def _widen_fits(
    plan: CompressionPlan, graph: ModelGraph, budget_bytes: float | None, biased: set[str] | None
) -> tuple[bool, int]:
    """Whether the TFLite weight-only file with int4 widened to int8 fits ``budget_bytes``, and its predicted bytes."""
    from edge_compress.export.size import predict_file_bytes

    n = predict_file_bytes(widened_plan(plan), graph, "tflite", WEIGHT_ONLY, biased=biased)
    return budget_bytes is None or n <= budget_bytes, n


def choose(
    asked: str,
    fmt: str,
    profile: DeviceProfile,
    graph: ModelGraph,
    plan: CompressionPlan,
    float_compute: set[str] | frozenset[str] = frozenset(),
    *,
    budget_bytes: float | None = None,
    biased: set[str] | None = None,
) -> ComputeChoice:
    """The compute precision of ``fmt``'s default file under ``asked`` (auto | integer | float).

    TFLite: float compute keeps int4 weights fast only if they are stored as int8 (LiteRT's XNNPACK
    delegate does not take an int4 DEQUANTIZE); that is done when the wider file fits
    ``budget_bytes`` (none: always), else the prediction counts the per-call dequantization.
    """
    check_choice(asked)
    runtime = RUNTIME[fmt]
    widen, wide_bytes = False, 0
    if fmt == "tflite" and any(_int4(plan, n) for n in plan.layers):
        widen, wide_bytes = _widen_fits(plan, graph, budget_bytes, biased)
    pred, basis = predict_ms(profile, graph, plan, runtime, float_compute, widen)
    if widen:
        basis += (
            f"; float: int4 weights stored as int8 (LiteRT runs an int4 DEQUANTIZE on every call), a file of "
            f"about {wide_bytes} bytes"
            + ("" if budget_bytes is None else f", within the {budget_bytes:.0f}-byte budget")
        )
    quantized = any(d.weight_bits is not None for d in plan.layers.values())
    model = integer_kernels(profile, runtime)
    margin = 0.0 if model is None else model.ratio_error_pct / 100
    if asked != "auto":
        compute = asked
        reason = f"asked for (--compute {asked})"
    elif not quantized:
        compute, reason = "integer", "no layer is quantized: the file is float either way"
    elif pred["integer"] <= pred["float"] * (1 - margin):
        compute = "integer"
        reason = (
            f"integer kernels predicted at least as fast as float on {profile.name} with {runtime} "
            f"({pred['integer']:.3g} ms vs {pred['float']:.3g} ms"
            + (f", a gain above the kernel model's {100 * margin:g}% error)" if margin else ")")
        )
    elif pred["integer"] <= pred["float"]:
        compute = "float"
        reason = (
            f"integer kernels predicted faster than float on {profile.name} with {runtime} by less than the "
            f"kernel model's {100 * margin:g}% error ({pred['integer']:.3g} ms vs {pred['float']:.3g} ms): the "
            "file keeps the plan's integer weights and computes in float"
        )
    else:
        compute = "float"
        reason = (
            f"integer kernels predicted slower than float on {profile.name} with {runtime} "
            f"({pred['integer']:.3g} ms vs {pred['float']:.3g} ms): the file keeps the plan's integer "
            "weights and computes in float"
        )
    other = "integer" if compute == "float" else "float"
    return ComputeChoice(
        format=fmt,
        asked=asked,
        compute=compute,
        variant=WEIGHT_ONLY if compute == "float" else INTEGER_VARIANT[fmt],
        predicted_ms=pred,
        basis=basis,
        reason=reason,
        other=f"--compute {other} (ExportOptions(compute={other!r}))",
        widen_int4=widen and compute == "float",
        int8_weights=integer_int8_weights(profile, runtime)
        if fmt == "onnx" and compute == "integer"
        else None,
    )
