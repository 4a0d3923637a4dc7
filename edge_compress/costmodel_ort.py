"""onnxruntime as a source of cost-model observations.

* :func:`parse_ort_profile` reads the JSON trace onnxruntime writes when
  ``SessionOptions.enable_profiling = True`` (Chrome trace format: one ``cat: "Node"`` event per
  executed operator with ``name`` = ``<node name>_kernel_time``, ``dur`` in microseconds and
  ``args.op_name`` / ``input_type_shape`` / ``output_type_shape``; one ``model_run`` event per
  ``session.run``), into per-node timings (median over runs).
* :func:`attribute_to_kernels` maps those operator timings onto the cost model's fused kernels:
  each Conv / Gemm / MatMul-like operator is matched to a layer (by weight shape, then by the
  module path in its node name, then by order); the element-wise operators after it (ReLU,
  pools, adds, activation Q/DQ, layout reorders) are charged to it, the weight / bias
  DequantizeLinear before it too; what runs before the first layer is the model's prologue.
* :func:`time_interleaved` times several ONNX files in one process, interleaved round by round
  so background load hits them alike (the medians of per-run samples are what the model fits);
  :func:`profile_onnx` runs one file with the profiler on.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_compress.costmodel import Kernel

LAYER_OPS = {
    "Conv",
    "FusedConv",
    "NchwcConv",
    "QLinearConv",
    "ConvInteger",
    "ConvTranspose",
    "Gemm",
    "FusedGemm",
    "QGemm",
    "MatMul",
    "FusedMatMul",
    "MatMulInteger",
    "QLinearMatMul",
    "MatMulNBits",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
}
_WEIGHT_DTYPES = {"int32", "int4x2", "int4", "int8", "uint4x2"}
_SUFFIX = "_kernel_time"


@dataclass
class OpTiming:
    """One operator of the executed (optimized) graph, timed over several runs."""

    name: str
    op_type: str
    dur_us: float  # median over runs
    order: int  # position in execution order
    input_shapes: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    output_shapes: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    weight_like: bool = False  # a weight / bias DequantizeLinear (runs before its layer)
    runs: int = 1


@dataclass
class OrtProfile:
    ops: list[OpTiming]
    run_us: float | None  # median of the model_run events
    runs: int

    @property
    def ops_us(self) -> float:
        return sum(o.dur_us for o in self.ops)


def _shapes(items: Any) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for d in items or []:
        if isinstance(d, dict):
            for dtype, dims in d.items():
                out.append((str(dtype).lower(), tuple(int(x) for x in dims)))
    return out


def parse_ort_profile(
    trace: str | os.PathLike[str] | list[dict[str, Any]], weight_inputs: set[str] | None = None
) -> OrtProfile:
    """Per-node median timings from an onnxruntime profile (a path or the loaded event list).

    ``weight_inputs``: node names known (from the optimized model) to dequantize a weight; without
    it a DequantizeLinear is weight-like when its input is int32 / int4 / signed int8.
    """
    events = trace if isinstance(trace, list) else json.loads(Path(trace).read_text(encoding="utf-8"))
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    per: dict[str, OpTiming] = {}
    durs: dict[str, list[float]] = {}
    order = 0
    for e in sorted((e for e in events if e.get("cat") == "Node"), key=lambda e: e.get("ts", 0)):
        name = str(e.get("name", ""))
        if not name.endswith(_SUFFIX):
            continue  # fence events
        node = name[: -len(_SUFFIX)]
        args = e.get("args") or {}
        if node not in per:
            ins = _shapes(args.get("input_type_shape"))
            op = str(args.get("op_name", ""))
            if weight_inputs is not None:
                weight_like = node in weight_inputs
            else:
                weight_like = op == "DequantizeLinear" and bool(ins) and ins[0][0] in _WEIGHT_DTYPES
            per[node] = OpTiming(
                node, op, 0.0, order, ins, _shapes(args.get("output_type_shape")), weight_like
            )
            order += 1
        durs.setdefault(node, []).append(float(e.get("dur", 0.0)))
    for node, d in durs.items():
        per[node].dur_us = float(statistics.median(d))
        per[node].runs = len(d)
    run_us = float(statistics.median([float(e["dur"]) for e in runs])) if runs else None
    return OrtProfile(sorted(per.values(), key=lambda o: o.order), run_us, len(runs))


# ---------------------------------------------------------------------------------------------
# operator -> kernel attribution


def _segments(name: str) -> list[str]:
    return [s for s in re.split(r"[/.:]", name) if s]


def _name_score(layer: str, node: str) -> float:
    """Fraction of the layer's path segments found, in order, among the node name's segments."""
    want, have = _segments(layer), _segments(node)
    i = 0
    for s in have:
        if i < len(want) and s == want[i]:
            i += 1
    return i / max(1, len(want))


def _weight_shapes(op: OpTiming) -> list[tuple[int, ...]]:
    return [s for _, s in op.input_shapes[1:] if len(s) >= 2]


def _kernel_weight_shapes(k: Kernel) -> list[tuple[int, ...]]:
    if k.kind == "linear":
        return [(k.cout, k.cin), (k.cin, k.cout)]
    return [(k.cout, k.cin // max(1, k.groups))]


def _shape_match(op: OpTiming, k: Kernel) -> bool:
    want = _kernel_weight_shapes(k)
    for s in _weight_shapes(op):
        for w in want:
            if s[: len(w)] == w and math_prod(s[len(w) :]) == k.kernel_area:
                return True
            if k.kind == "linear" and s == w:
                return True
    return False


def math_prod(xs: tuple[int, ...]) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


def attribute_to_kernels(
    profile: OrtProfile, kernels: list[Kernel], node_overhead_us: float | None = None
) -> tuple[dict[str, float], float, dict[str, str]]:
    """(kernel name -> ms of its fused ops, prologue ms, kernel name -> matched node name).

    The profiler adds a few microseconds to every node it times; ``node_overhead_us`` is
    subtracted from each (default: 90% of the fastest node of this profile, a Flatten or a
    Transpose that does next to nothing). What runs before the first layer (input quantize,
    layout transpose) is the prologue, charged to the ``io`` kernel when the list has one.

    Raises ValueError when fewer layer operators than kernels were executed (nothing to match).
    """
    layers = [k for k in kernels if k.kind != "io"]
    io = next((k for k in kernels if k.kind == "io"), None)
    layer_ops = [o for o in profile.ops if o.op_type in LAYER_OPS]
    if len(layer_ops) < len(layers):
        raise ValueError(f"the profile has {len(layer_ops)} layer operators for {len(layers)} kernels")
    if node_overhead_us is None:
        node_overhead_us = 0.9 * min((o.dur_us for o in profile.ops), default=0.0)
    pairs = []
    for i, o in enumerate(layer_ops):
        for j, k in enumerate(layers):
            score = (
                4.0 * _shape_match(o, k) + 2.0 * _name_score(k.name.split("#")[0], o.name) - 0.01 * abs(i - j)
            )
            if "#" in k.name:  # the halves of a factorized layer keep their order
                score -= 0.5 * abs(i - j)
            pairs.append((score, i, j))
    pairs.sort(key=lambda t: -t[0])
    op_of: dict[int, int] = {}
    used: set[int] = set()
    for _, i, j in pairs:
        if j in op_of or i in used:
            continue
        op_of[j] = i
        used.add(i)
    owner: dict[str, str] = {layer_ops[i].name: layers[j].name for j, i in op_of.items()}
    times = {k.name: 0.0 for k in layers}
    prologue = 0.0
    current: str | None = None
    pending_weights = 0.0
    for o in profile.ops:
        d = max(0.2, o.dur_us - node_overhead_us)
        if o.name in owner:
            current = owner[o.name]
            times[current] += (d + pending_weights) / 1e3
            pending_weights = 0.0
        elif o.weight_like:
            pending_weights += d
        elif current is None:
            prologue += d / 1e3
        else:
            times[current] += d / 1e3
    if current is not None:
        times[current] += pending_weights / 1e3
    else:
        prologue += pending_weights / 1e3
    if io is not None:
        times[io.name] = prologue
    return times, prologue, {layers[j].name: layer_ops[i].name for j, i in op_of.items()}


# ---------------------------------------------------------------------------------------------
# running onnxruntime here


def ort_session(
    path: str | os.PathLike[str],
    threads: int = 1,
    *,
    profile_prefix: str | None = None,
    optimized_path: str | None = None,
) -> Any:
    """A CPU session with the agent's options (threads, sequential execution)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if optimized_path is not None:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def random_feeds(sess: Any, seed: int = 0) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        if "float" in i.type:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
        elif "uint8" in i.type:
            feeds[i.name] = rng.integers(0, 255, shape).astype(np.uint8)
        elif "int8" in i.type:
            feeds[i.name] = rng.integers(-127, 127, shape).astype(np.int8)
        else:
            feeds[i.name] = rng.integers(0, 10, shape).astype(np.int64)
    return feeds


def _weight_dq_nodes(optimized: str) -> set[str]:
    import onnx

    m = onnx.load(optimized, load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    return {
        n.name for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input and n.input[0] in inits
    }


def profile_onnx(
    path: str | os.PathLike[str], runs: int = 50, threads: int = 1, warmup: int = 5
) -> OrtProfile:
    """Run ``path`` ``runs`` times with onnxruntime's profiler on and parse the trace."""
    with tempfile.TemporaryDirectory(prefix="ec-prof-") as tmp:
        opt = os.path.join(tmp, "optimized.onnx")
        sess = ort_session(path, threads, profile_prefix=os.path.join(tmp, "trace"), optimized_path=opt)
        feeds = random_feeds(sess)
        for _ in range(warmup):
            sess.run(None, feeds)
        for _ in range(runs):
            sess.run(None, feeds)
        trace = sess.end_profiling()
        try:
            weights = _weight_dq_nodes(opt)
        except Exception:  # noqa: BLE001 - fall back to the dtype heuristic
            weights = None
        events = json.loads(Path(trace).read_text(encoding="utf-8"))
    # the warm-up runs are in the trace too: keep the last ``runs`` model_run windows
    run_events = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    if len(run_events) > runs:
        t0 = run_events[-runs]["ts"]
        events = [e for e in events if e.get("ts", 0) >= t0]
    return parse_ort_profile(events, weights)


def time_interleaved(
    paths: list[str | os.PathLike[str]],
    *,
    rounds: int = 20,
    per_round: int = 10,
    warmup: int = 3,
    threads: int = 1,
    max_seconds: float | None = None,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Per-run latency samples (ms) of each file, measured round-robin in this process.

    Each round visits every model in a shuffled order and times ``per_round`` runs after
    ``warmup`` untimed ones, so slow drifts of the machine's load are shared by all models.
    """
    import random

    rng = random.Random(seed)
    sessions = {}
    for p in paths:
        s = ort_session(p, threads)
        sessions[str(p)] = (s, random_feeds(s))
    samples: dict[str, list[float]] = {str(p): [] for p in paths}
    keys = list(sessions)
    start = time.monotonic()
    for _ in range(rounds):
        rng.shuffle(keys)
        for k in keys:
            s, feeds = sessions[k]
            for _ in range(warmup):
                s.run(None, feeds)
            buf = samples[k]
            for _ in range(per_round):
                t0 = time.perf_counter_ns()
                s.run(None, feeds)
                buf.append((time.perf_counter_ns() - t0) / 1e6)
        if max_seconds is not None and time.monotonic() - start > max_seconds:
            break
    return samples


@dataclass
class PairedTiming:
    """Samples of one model, each taken right after a sample of the shared reference model."""

    samples_ms: list[float]
    reference_ms: list[float]
    rounds: list[int]

    def ratio_median(self, mask: Any = None) -> float:
        import numpy as np

        x, r = np.asarray(self.samples_ms), np.asarray(self.reference_ms)
        if mask is not None:
            x, r = x[mask], r[mask]
        return float(np.median(x / r))


def time_paired(
    paths: list[str | os.PathLike[str]],
    reference: str | os.PathLike[str],
    *,
    rounds: int = 40,
    per_round: int = 8,
    threads: int = 1,
    max_seconds: float | None = None,
    seed: int = 0,
) -> tuple[dict[str, PairedTiming], float]:
    """Interleaved timing with a reference model run before every sample (paired measurement).

    On a shared machine the speed available to one process drifts by tens of percent within
    seconds; the ratio of a model's run time to the reference run just before it cancels most
    of that. Returns (per-file timings, median of all reference samples in ms): a model's
    latency at the session's typical speed is ``ratio_median() x reference median``.
    """
    import random

    rng = random.Random(seed)
    ref = ort_session(reference, threads)
    ref_feeds = random_feeds(ref)
    sessions = {}
    for p in paths:
        s = ort_session(p, threads)
        sessions[str(p)] = (s, random_feeds(s))
    out = {k: PairedTiming([], [], []) for k in sessions}
    keys = list(sessions)
    clock = time.perf_counter_ns
    start = time.monotonic()
    for rnd in range(rounds):
        rng.shuffle(keys)
        for k in keys:
            s, feeds = sessions[k]
            s.run(None, feeds)
            ref.run(None, ref_feeds)
            pt = out[k]
            for _ in range(per_round):
                t0 = clock()
                ref.run(None, ref_feeds)
                t1 = clock()
                s.run(None, feeds)
                t2 = clock()
                pt.reference_ms.append((t1 - t0) / 1e6)
                pt.samples_ms.append((t2 - t1) / 1e6)
                pt.rounds.append(rnd)
        if max_seconds is not None and time.monotonic() - start > max_seconds:
            break
    import numpy as np

    ref_all = np.concatenate([np.asarray(p.reference_ms) for p in out.values()]) if out else np.array([1.0])
    return out, float(np.median(ref_all))


def _empty_model(path: str) -> str:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def calibrate_here(
    cm: Any,
    items: list[tuple[str | os.PathLike[str], list[Kernel], str]],
    *,
    rounds: int = 40,
    per_round: int = 8,
    profile_runs: int = 30,
    fit: bool = True,
) -> dict[str, Any]:
    """Calibrate ``cm`` (a local target) from ONNX files: (path, kernels, label) per model.

    Every file is timed with the paired, interleaved protocol (the first file as the reference)
    and profiled per operator; the empty-model latency sets the per-call overhead; each becomes
    an observation (whole-model latency + per-kernel times), then the model is refitted on all
    its observations. Returns the fit statistics. For a remote target, feed ``CostModel.observe``
    with runner measurements instead (whole-model timings only).
    """
    with tempfile.TemporaryDirectory(prefix="ec-calib-") as tmp:
        empty = _empty_model(os.path.join(tmp, "empty.onnx"))
        paths = [str(p) for p, _, _ in items]
        timings, ref_med = time_paired(paths + [empty], paths[0], rounds=rounds, per_round=per_round)
    cm.fit_info["call_overhead_ms"] = timings[empty].ratio_median() * ref_med
    import numpy as np

    for path, kernels, label in items:
        pt = timings[str(path)]
        lat = pt.ratio_median() * ref_med
        kms: dict[str, float] = {}
        try:
            kms, _, _ = attribute_to_kernels(
                profile_onnx(path, runs=profile_runs, threads=cm.threads), kernels
            )
        except ValueError:
            pass  # the operators could not be matched to layers: whole-model timing only
        cm.observe(
            kernels,
            latency_ms=lat,
            p99_ms=float(np.percentile(pt.samples_ms, 99)),
            kernel_ms=kms,
            label=label,
            source=f"calibrate:{cm.target}",
        )
    return cm.fit() if fit else {}
