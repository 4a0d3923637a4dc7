#!/usr/bin/env python3
"""edge-compress benchmark agent: runs ON the target and prints one JSON result.

Usage on the target::

    python3 agent.py request.json     # measure a model, print one JSON result on stdout
    python3 agent.py --probe          # describe the target (runtimes, sensors), print JSON
    python3 agent.py --serve          # warm agent: one JSON line per run dir on stdin (see serve())

Pushed as plain files with its siblings ``runtimes.py``, ``energy.py`` and ``throttle.py`` and
imported as top-level modules; it needs only the standard library, numpy and one runtime
(onnxruntime for .onnx; ai_edge_litert or tflite_runtime for .tflite). ``energy`` and ``throttle``
are optional: without them the result says so instead of failing.

The request is the JSON written by ``runners.agent.host.agent_request``: model path on the target,
threads, core mask, warm-up, ``min_count`` / ``min_duration_s`` / ``max_count``, optional inputs /
accuracy .npz paths, seed, throttle cool-down, energy switch and the profile's power model.

The result holds the fields of ``runners.base.Measurement`` (the host adds ``target`` and
``model_path``). Times are milliseconds unless a name says otherwise. ``cpu_freq_mhz`` is
``[before, after]`` (mean over the CPUs in the affinity set) and ``temperature_c`` is
``[before, after]`` (hottest thermal zone); per-CPU / per-zone details are in ``extra``.
Failures (model does not load, runtime missing, bad request) are a JSON result with ``ok: false``,
``error_kind`` and a one-sentence ``error``, never a bare traceback.

The sysfs root used for CPU frequency, thermal zones and power meters is ``/`` unless the
environment variable ``EDGE_COMPRESS_SYSFS_ROOT`` names another directory (tests).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

_T_START = time.perf_counter()  # for the phase timings reported in extra["phases_s"]
AGENT_VERSION = "1"
SYSFS_ENV = "EDGE_COMPRESS_SYSFS_ROOT"
THROTTLE_BATCH = 64  # samples fed to the throttle detector at a time, between timed iterations


class AgentError(Exception):
    """A failure reported as data: ``kind`` is a ``runners.base.ErrorKind``."""

    def __init__(self, message: str, kind: str = "agent") -> None:
        super().__init__(message)
        self.kind = kind


def sysfs_root() -> str:
    return os.environ.get(SYSFS_ENV) or "/"


# ---------------------------------------------------------------------------------------------
# entry point


def main(argv: list[str] | None = None) -> int:
    """Run the request named on the command line; print exactly one JSON document on stdout."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = _claim_stdout()
    try:
        if argv[:1] == ["--serve"]:
            return serve(out)
        if argv[:1] == ["--probe"]:
            result = probe()
        elif len(argv) == 1:
            result = run_request(read_request(argv[0]))
        else:
            result = failure("usage: agent.py request.json | agent.py --probe | agent.py --serve", "usage")
    except Exception as e:  # every failure must become a JSON result
        result = _failure_from(e)
    out.write(json.dumps(result, default=_json_default) + "\n")
    out.flush()
    return 0 if result.get("ok") else 1


# ---------------------------------------------------------------------------------------------
# warm agent


def preload(suffix: str | None = None, runtime: str = "auto") -> list[str]:
    """Import what a run imports, once, in the warm agent, so each forked run starts with it
    loaded: numpy and the agent's modules at start; a runtime when the first model of its
    format comes (``suffix``), so a run's process holds the same modules as a cold agent running
    that model would (and its peak RSS is not inflated by a runtime it does not use).
    Returns what is loaded."""
    if suffix is None:
        wanted: list[tuple[str, ...]] = [("numpy",), ("runtimes",), ("energy",), ("throttle",)]
    elif suffix == ".onnx":
        wanted = [("onnxruntime",)]
    elif suffix == ".tflite":
        order = ["ai_edge_litert.interpreter", "tflite_runtime.interpreter"]
        if runtime == "tflite_runtime":
            order.reverse()
        wanted = [tuple(order)]  # the first one that imports, as runtimes.load_session picks
    else:
        wanted = []
    for alternatives in wanted:
        for module in alternatives:
            try:
                __import__(module)
                _PRELOADED.add(module.split(".")[0])
                break
            except Exception:  # absent or broken: the run imports (and reports) it itself
                continue
    return sorted(_PRELOADED)


_PRELOADED: set[str] = set()


def serve(out: Any) -> int:
    """Warm agent: a process that has imported numpy and the runtimes and forks one child per run.

    Protocol (JSON lines): the agent writes ``{"ready": true, "pid", "agent_version", "preloaded"}``
    once, then reads ``{"dir": RUN_DIR}`` lines on stdin (or ``{"preload": ".onnx" | ".tflite"}``,
    answered with ``{"preloaded"}``: import that format's runtime now). For each run dir it forks;
    the child runs
    ``RUN_DIR/request.json`` exactly as ``agent.py request.json`` would (its pid in
    ``RUN_DIR/agent.pid``, stdin from /dev/null, stderr to a file) and exits. The agent then
    replies ``{"dir", "rc", "pid", "preloaded", "stdout", "stderr"}`` (the child's one JSON document
    and its stderr), removes RUN_DIR, and waits for the next line. It exits at end of input: when the
    host closes the channel, or the connection drops.

    A forked child is a fresh process for everything measured: its own address space (the
    kernel starts its peak-RSS mark at the RSS inherited from the agent, which matches a cold
    process after the same imports), its own runtime sessions and thread pools, and the
    request's thread count and CPU affinity; only interpreter start-up and the imports are
    saved. Runs are sequential: one device, one measurement at a time. The host keeps one warm
    agent per model format, so a run inherits only its own runtime whatever ran before it.
    """
    loaded = preload()
    _reply(out, {"ready": True, "pid": os.getpid(), "agent_version": AGENT_VERSION, "preloaded": loaded})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            job = json.loads(line)
            if "preload" in job:
                _reply(out, {"preloaded": preload(str(job["preload"]), str(job.get("runtime", "auto")))})
                continue
            rundir = str(job["dir"])
        except (ValueError, KeyError, TypeError, AttributeError):
            _reply(out, {"error": 'bad job line (expected {"dir": RUN_DIR})'})
            continue
        _reply(out, _serve_one(rundir))
    return 0


def _serve_one(rundir: str) -> dict[str, Any]:
    import shutil

    try:  # the model's runtime, imported here once so this and later runs inherit it
        with open(os.path.join(rundir, "request.json"), encoding="utf-8") as f:
            req = json.load(f)
        preload(os.path.splitext(str(req.get("model", "")))[1].lower(), str(req.get("runtime", "auto")))
    except Exception:  # the run itself reports an unreadable request
        pass

    res_path, err_path = os.path.join(rundir, ".result.json"), os.path.join(rundir, ".stderr.txt")
    try:
        pid = os.fork()
    except OSError as e:
        return {"dir": rundir, "error": f"fork failed ({e.strerror})"}
    if pid == 0:  # the run
        rc = 1
        try:
            global _T_START
            _T_START = time.perf_counter()
            os.chdir(rundir)
            with open("agent.pid", "w", encoding="ascii") as f:
                f.write(str(os.getpid()))
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            res = os.open(res_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(err, 2)
            os.dup2(res, 1)
            sys.stdout = os.fdopen(1, "w", closefd=False)
            sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
            rc = main(["request.json"])
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            with contextlib.suppress(BaseException):
                traceback.print_exc()
                sys.stderr.flush()
        finally:
            os._exit(rc)
    _, status = os.waitpid(pid, 0)
    rc = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status >> 8
    reply: dict[str, Any] = {"dir": rundir, "rc": rc, "pid": pid, "preloaded": sorted(_PRELOADED)}
    for key, path in (("stdout", res_path), ("stderr", err_path)):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                reply[key] = f.read()
        except OSError:
            reply[key] = ""
    shutil.rmtree(rundir, ignore_errors=True)
    return reply


def _reply(out: Any, obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj, default=_json_default) + "\n")
    out.flush()


def _claim_stdout() -> Any:
    """Keep the real stdout for the result and send everything else printed (runtimes, C++
    logging on fd 1) to stderr, so stdout carries exactly one JSON document."""
    try:
        fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return os.fdopen(fd, "w")
    except OSError:
        return sys.__stdout__


def _failure_from(e: BaseException) -> dict[str, Any]:
    kind = getattr(e, "kind", None)
    if kind is not None:
        return failure(str(e), kind)
    if isinstance(e, ImportError) and getattr(e, "name", None) == "numpy":
        return failure(
            f"numpy is not installed for {sys.executable} on the target; run edge-compress targets setup.",
            "agent",
        )
    if isinstance(e, MemoryError):
        return failure("the target ran out of memory while running the model.", "agent")
    msg = str(e).strip().splitlines()
    detail = msg[0][:300] if msg else ""
    result = failure(
        "the agent failed with {}{}.".format(type(e).__name__, ": " + detail if detail else ""), "agent"
    )
    result["extra"]["traceback"] = traceback.format_exc()
    return result


def failure(message: str, kind: str = "agent") -> dict[str, Any]:
    return {"ok": False, "error": message, "error_kind": kind, "extra": {"agent_version": AGENT_VERSION}}


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def read_request(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            req = json.load(f)
    except (OSError, ValueError) as e:
        raise AgentError(f"cannot read the request {path} ({e}).", "usage") from None
    if not isinstance(req, dict) or "model" not in req:
        raise AgentError(f"the request {path} has no 'model' field.", "usage")
    return req


# ---------------------------------------------------------------------------------------------
# measurement


def run_request(req: dict[str, Any]) -> dict[str, Any]:
    """Load, warm up, measure (with throttle handling), and summarize one model."""
    if req.get("paired"):
        return run_paired(req)
    phases = {"start_s": time.perf_counter() - _T_START}
    t_phase = time.perf_counter()
    import numpy as np
    from runtimes import accuracy, load_session, npz_inputs, random_inputs, reference_agreement

    phases["import_numpy_s"] = time.perf_counter() - t_phase

    threads = int(req.get("threads", 1))
    if threads < 1:
        raise AgentError("threads must be at least 1.", "usage")
    affinity = set_affinity(req.get("core_mask"))
    root = sysfs_root()
    freq_before, temp_before = cpu_freqs(root, affinity), temperatures(root)
    rss_before = peak_rss_bytes()

    t0 = time.perf_counter()
    session = load_session(str(req["model"]), str(req.get("runtime", "auto")), threads)
    load_ms = (time.perf_counter() - t0) * 1e3
    if req.get("inputs_npz"):
        feeds = npz_inputs(str(req["inputs_npz"]), session.inputs)
    else:
        feeds = random_inputs(session.inputs, int(req.get("seed", 0)))
    once = session.bind(feeds)

    t0 = time.perf_counter()
    once()
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(max(0, int(req.get("warmup", 10)))):
        once()
    phases["load_and_warmup_s"] = time.perf_counter() - t0 + load_ms / 1e3

    loop = LoopConfig.from_request(req)
    t_phase = time.perf_counter()
    meter, energy_note = pick_meter(root) if req.get("energy", True) else (None, "energy disabled")
    result = measure(once, loop, meter=meter, detect=bool(req.get("detect_throttle", True)))
    samples = result.pop("samples")
    extra = result.pop("extra")
    phases["measure_s"] = time.perf_counter() - t_phase
    t_phase = time.perf_counter()

    acc = None
    if req.get("accuracy_npz"):
        acc, n_acc = accuracy(session, str(req["accuracy_npz"]))
        extra["accuracy_samples"] = n_acc
        ref = reference_agreement(session, str(req["accuracy_npz"]))
        if ref is not None:
            extra["reference"] = ref

    energy, note = energy_reading(result.pop("meter_result"), samples, loop.wall_s_last, req, threads)
    if not req.get("energy", True):
        energy, note = None, ""
    if note or energy_note:
        extra["energy_note"] = "; ".join(x for x in (energy_note, note) if x)
    freq_after, temp_after = cpu_freqs(root, affinity), temperatures(root)
    extra.update(
        {
            "agent_version": AGENT_VERSION,
            "inputs": [s.describe() for s in session.inputs],
            "inputs_source": "npz" if req.get("inputs_npz") else "random",
            "rss_before_load_bytes": rss_before,
            "cpu_freq_mhz_before": freq_before,
            "cpu_freq_mhz_after": freq_after,
            "thermal_c_before": temp_before,
            "thermal_c_after": temp_after,
            "loop_wall_s": loop.wall_s_last,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "phases_s": phases,
        }
    )
    stats = summarize(samples, int(req.get("seed", 0)))
    if loop.reference is not None and loop.reference_ms:
        ref_median = float(np.median(loop.reference_ms))
        extra["host_reference"] = {
            "workload": REFERENCE_WORKLOAD,
            "every": loop.reference_every,
            "count": len(loop.reference_ms),
            "median_ms": ref_median,
            "latency_median_over_reference": float(np.median(samples)) / ref_median,
        }
    phases["accuracy_energy_summary_s"] = time.perf_counter() - t_phase
    return {
        "ok": True,
        "latency_ms": samples,
        "stats": stats,
        "load_ms": load_ms,
        "first_inference_ms": first_ms,
        "peak_rss_bytes": peak_rss_bytes(),
        "energy": energy,
        "accuracy": acc,
        "runtime": session.name,
        "runtime_version": session.version,
        "threads": threads,
        "cpu_affinity": affinity,
        "machine": platform.machine(),
        "cpu_freq_mhz": [_mean(freq_before), _mean(freq_after)] if freq_before and freq_after else [],
        "temperature_c": [max(temp_before.values()), max(temp_after.values())]
        if temp_before and temp_after
        else [],
        "extra": extra,
        **result,
    }


BLOCK_WARMUP = 5  # untimed iterations before each paired block (the other model just ran)


def run_paired(req: dict[str, Any]) -> dict[str, Any]:
    """Paired A/B: load the baseline A (``model``) and the candidate B (``paired.model``) in this
    one process, then time blocks alternately (round r: A B when r is even, B A when odd), each
    block bounded like a normal timed loop. No process start, import or model load falls between
    the two blocks of a round, so what differs between them is the model (and whatever the device
    does at that moment, which alternation spreads over both). Each block is summarized like a
    single run (latency samples, stats, energy); peak memory is not per block (one process holds
    both models), so it is left out. The reply is the last block's fields with every block in
    ``extra.paired_blocks`` as ``{"role", "round", "result"}`` (role: warmup | baseline | candidate).
    """
    phases = {"start_s": time.perf_counter() - _T_START}
    t_phase = time.perf_counter()
    from runtimes import load_session, npz_inputs, random_inputs

    phases["import_numpy_s"] = time.perf_counter() - t_phase
    paired = req["paired"]
    threads = int(req.get("threads", 1))
    if threads < 1:
        raise AgentError("threads must be at least 1.", "usage")
    rounds, first = int(paired.get("rounds", 0)), int(paired.get("first_round", 0))
    if rounds < 1:
        raise AgentError("a paired run needs at least one round.", "usage")
    affinity = set_affinity(req.get("core_mask"))
    root = sysfs_root()
    runtime = str(req.get("runtime", "auto"))
    t0 = time.perf_counter()
    sessions = {
        "baseline": load_session(str(req["model"]), runtime, threads),
        "candidate": load_session(str(paired["model"]), runtime, threads),
    }
    load_ms = (time.perf_counter() - t0) * 1e3
    calls = {}
    for role, session in sessions.items():
        if req.get("inputs_npz"):
            feeds = npz_inputs(str(req["inputs_npz"]), session.inputs)
        else:
            feeds = random_inputs(session.inputs, int(req.get("seed", 0)))
        calls[role] = session.bind(feeds)
    for once in calls.values():
        for _ in range(max(1, int(req.get("warmup", 10)))):
            once()
    phases["load_and_warmup_s"] = time.perf_counter() - t0
    loop = LoopConfig.from_request(req)
    meter, energy_note = pick_meter(root) if req.get("energy", True) else (None, "energy disabled")
    order: list[tuple[str, int]] = [("warmup", -1)] if paired.get("warmup") else []
    for r in range(first, first + rounds):
        pair = [("baseline", r), ("candidate", r)]
        order += pair[::-1] if r % 2 else pair
    blocks = []
    t_phase = time.perf_counter()
    for role, r in order:
        once = calls["baseline" if role == "warmup" else role]
        for _ in range(BLOCK_WARMUP):
            once()
        freq = cpu_freqs(root, affinity)
        samples, reading = _pass(once, loop, meter, None, False)
        energy, note = energy_reading(reading, samples, loop.wall_s_last, req, threads)
        session = sessions["baseline" if role == "warmup" else role]
        block = {
            "ok": True,
            "latency_ms": samples,
            "stats": summarize(samples, int(req.get("seed", 0))),
            "energy": energy if req.get("energy", True) else None,
            "peak_rss_bytes": None,
            "runtime": session.name,
            "runtime_version": session.version,
            "threads": threads,
            "cpu_affinity": affinity,
            "machine": platform.machine(),
            "cpu_freq_mhz": [_mean(freq), _mean(cpu_freqs(root, affinity))] if freq else [],
            "throttled": False,
            "remeasured": False,
            "throttled_samples": 0,
            "extra": {
                "paired_block": True,
                "loop_wall_s": loop.wall_s_last,
                **(
                    {"energy_note": "; ".join(x for x in (energy_note, note) if x)}
                    if note or energy_note
                    else {}
                ),
            },
        }
        blocks.append({"role": role, "round": r, "result": block})
    phases["measure_s"] = time.perf_counter() - t_phase
    last = dict(blocks[-1]["result"])
    last["load_ms"] = load_ms
    last["extra"] = {
        **last["extra"],
        "agent_version": AGENT_VERSION,
        "paired_blocks": blocks,
        "phases_s": phases,
        "python": platform.python_version(),
    }
    return last


class LoopConfig:
    """Timed-loop bounds: run until both ``min_count`` and ``min_duration_s``, at most ``max_count``."""

    def __init__(self, min_count: int, min_duration_s: float, max_count: int, cooldown_s: float) -> None:
        self.min_count = max(1, min_count)
        self.min_duration_s = max(0.0, min_duration_s)
        self.max_count = max(self.min_count, max_count)
        self.cooldown_s = max(0.0, cooldown_s)
        self.wall_s_last = 0.0  # wall time (s) of the last timed loop
        # host-speed reference (see RunRequest.reference_every): a callable returning ms, timed every
        # ``reference_every`` samples between calls; its samples of the last loop
        self.reference: Callable[[], float] | None = None
        self.reference_every = 0
        self.reference_ms: list[float] = []

    @classmethod
    def from_request(cls, req: dict[str, Any]) -> LoopConfig:
        cfg = cls(
            int(req.get("min_count", 50)),
            float(req.get("min_duration_s", 1.0)),
            int(req.get("max_count", 100_000)),
            float(req.get("cooldown_s", 5.0)),
        )
        every = int(req.get("reference_every") or 0)
        if every < 0:
            raise AgentError("reference_every must be 0 (off) or a positive call count.", "usage")
        if every:
            cfg.reference, cfg.reference_every = host_reference(), every
        return cfg


REFERENCE_WORKLOAD = "2 x (96x96 @ 96x96) float32 numpy matmul"


def host_reference() -> Callable[[], float]:
    """A fixed CPU workload timed in ms (:data:`REFERENCE_WORKLOAD`): the host's speed at that moment."""
    import numpy as np

    a = np.random.default_rng(0).random((96, 96), dtype=np.float32)

    def run() -> float:
        t = time.perf_counter()
        a @ a
        a @ a
        return (time.perf_counter() - t) * 1e3

    for _ in range(5):
        run()
    return run


class Watch:
    """Feeds latency samples (ms) to a throttle detector; counts flagged samples and the onset.

    A sample is flagged when it lies inside one of the detector's episodes (``episodes``:
    ``(start, end | None)`` index pairs); detectors without episodes flag the samples after
    which ``throttled`` is true.
    """

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.fed = 0
        self._seen = 0  # fallback count for detectors without ``episodes``
        self._first: int | None = None

    def feed(self, samples: list[float]) -> None:
        update = self.detector.update
        for i in range(self.fed, len(samples)):
            update(samples[i])
            if self.detector.throttled:
                self._seen += 1
                if self._first is None:
                    self._first = i
        self.fed = len(samples)

    def _episodes(self) -> list[tuple[int, int]] | None:
        eps = getattr(self.detector, "episodes", None)
        if eps is None:
            return None
        return [(int(a), self.fed if b is None else int(b)) for a, b in eps]

    @property
    def flagged(self) -> int:
        """Samples taken while throttled."""
        eps = self._episodes()
        return self._seen if eps is None else sum(b - a for a, b in eps)

    @property
    def onset(self) -> int | None:
        """Index of the first throttled sample, None if none."""
        eps = self._episodes()
        return self._first if eps is None else (eps[0][0] if eps else None)


def timed_loop(
    once: Callable[[], Any],
    cfg: LoopConfig,
    watch: Watch | None = None,
    stop_on_throttle: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Time ``once()`` until the bounds are met; returns every sample in ms.

    The throttle watch sees every sample, in order, in batches fed *between* timed iterations, so
    it adds nothing to a sample. With ``stop_on_throttle`` the loop ends as soon as it fires.
    """
    samples: list[float] = []
    append = samples.append
    n, min_count, max_count, min_dur = 0, cfg.min_count, cfg.max_count, cfg.min_duration_s
    ref, every = cfg.reference, cfg.reference_every
    cfg.reference_ms = []
    start = clock()
    while True:
        t0 = clock()
        once()
        t1 = clock()
        append((t1 - t0) * 1e3)
        n += 1
        if n >= max_count or (n >= min_count and t1 - start >= min_dur):
            break
        if ref is not None and n % every == 0:
            cfg.reference_ms.append(ref())
        if watch is not None and n - watch.fed >= THROTTLE_BATCH:
            watch.feed(samples)
            if stop_on_throttle and watch.flagged:
                break
    cfg.wall_s_last = clock() - start
    if watch is not None:
        watch.feed(samples)
    return samples


def measure(
    once: Callable[[], Any],
    cfg: LoopConfig,
    *,
    meter: Any = None,
    detect: bool = True,
    detector_factory: Callable[[], Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """The timed loop with throttle handling: if the detector fires, cool down and re-measure once.

    Returns ``samples`` (the reported pass), ``throttled`` (fired in any pass), ``remeasured``,
    ``throttled_samples`` (flagged samples of the discarded first pass), ``meter_result`` and
    ``extra`` (discarded sample count, whether the reported pass is still throttled).
    """
    extra: dict[str, Any] = {}
    factory = detector_factory
    if detect and factory is None:
        factory, note = _detector_factory()
        if note:
            extra["throttle_note"] = note
    watch = Watch(factory()) if detect and factory else None
    samples, reading = _pass(once, cfg, meter, watch, True, clock)
    if watch is None or not watch.flagged:
        return {
            "samples": samples,
            "throttled": False,
            "remeasured": False,
            "throttled_samples": 0,
            "meter_result": reading,
            "extra": extra,
        }
    extra["discarded_samples"] = len(samples)
    extra["throttle_onset_sample"] = watch.onset
    sleep(cfg.cooldown_s)
    watch2 = Watch(factory()) if factory else None
    samples2, reading2 = _pass(once, cfg, meter, watch2, False, clock)
    extra["still_throttled"] = bool(watch2 and watch2.flagged)
    extra["throttled_samples_reported"] = watch2.flagged if watch2 else 0
    return {
        "samples": samples2,
        "throttled": True,
        "remeasured": True,
        "throttled_samples": watch.flagged,
        "meter_result": reading2,
        "extra": extra,
    }


def _pass(
    once: Callable[[], Any],
    cfg: LoopConfig,
    meter: Any,
    watch: Watch | None,
    stop: bool,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[float], Any]:
    """One timed loop with the meter around it; the reading is a MeterResult, an error dict or None."""
    started = _start_meter(meter)
    samples = timed_loop(once, cfg, watch, stop_on_throttle=stop, clock=clock)
    if isinstance(started, dict):
        return samples, started
    return samples, (_stop_meter(meter) if started else None)


def _start_meter(meter: Any) -> Any:
    """True when started, False without a meter, an error dict when the meter failed to start."""
    if meter is None:
        return False
    try:
        meter.start()
        return True
    except Exception as e:  # a meter failing must not fail the measurement
        return {"error": "{} did not start ({})".format(getattr(meter, "source", "meter"), _line(e))}


def _stop_meter(meter: Any) -> Any:
    try:
        return meter.stop()
    except Exception as e:
        return {"error": "{} failed ({})".format(getattr(meter, "source", "meter"), _line(e))}


def _line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200].rstrip(".")


def _detector_factory() -> tuple[Callable[[], Any] | None, str]:
    try:
        from throttle import IMMDetector
    except Exception as e:  # throttle.py missing or too new for this python
        return None, f"throttle detector unavailable on the target ({type(e).__name__})"
    return IMMDetector, ""


# ---------------------------------------------------------------------------------------------
# statistics


def summarize(samples_ms: list[float], seed: int = 0, resamples: int | None = None) -> dict[str, Any]:
    """count, mean, median, p90, p99, std (ddof=1), min, max (ms) and a bootstrap 95% CI of the median
    (fixed seed: the same samples give the same interval)."""
    import numpy as np

    a = np.asarray(samples_ms, dtype=np.float64)
    n = len(a)
    if n == 0:
        raise ValueError("no samples")
    p50, p90, p99 = (float(x) for x in np.percentile(a, [50, 90, 99]))
    return {
        "count": n,
        "mean_ms": float(a.mean()),
        "median_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "std_ms": float(a.std(ddof=1)) if n > 1 else 0.0,
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
        "median_ci95_ms": list(bootstrap_median_ci(a, seed, resamples)),
    }


def bootstrap_median_ci(a: Any, seed: int = 0, resamples: int | None = None) -> tuple[float, float]:
    """Percentile-bootstrap 95% confidence interval of the median (ms), numpy only.

    Each bootstrap median is drawn directly instead of by resampling n values and taking their
    median: the k-th smallest of n draws from the sample is the sorted sample's element
    ``ceil(n * U)`` where ``U`` is the k-th smallest of n uniforms, ``U ~ Beta(k, n - k + 1)``
    (for even n the next one follows as the smallest of the n - k uniforms above it). This has
    exactly the distribution of resampling, at O(resamples) instead of O(resamples x n) work
    (a 10,000-sample series: under a millisecond instead of a few hundred on a small core), so
    the default is 4,000 resamples at any length.
    """
    import numpy as np

    x = np.sort(np.asarray(a, dtype=np.float64))
    n = len(x)
    if n < 2:
        return float(x[0]), float(x[0])
    b = resamples or 4000
    rng = np.random.default_rng(seed)

    def at(u: Any) -> Any:  # the sorted sample's element for uniform order statistics u
        return x[np.clip(np.ceil(u * n).astype(np.int64) - 1, 0, n - 1)]

    k = (n + 1) // 2 if n % 2 else n // 2
    u1 = rng.beta(k, n - k + 1, size=b)
    if n % 2:
        meds = at(u1)
    else:
        u2 = u1 + (1.0 - u1) * (1.0 - rng.random(b) ** (1.0 / (n - k)))
        meds = 0.5 * (at(u1) + at(u2))
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return float(lo), float(hi)


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values)


# ---------------------------------------------------------------------------------------------
# energy


def pick_meter(root: str) -> tuple[Any, str]:
    """The best power meter of the target, or (None, reason)."""
    try:
        import energy
    except Exception as e:
        return None, f"energy.py unavailable on the target ({type(e).__name__}): no meter, estimate only"
    try:
        meters = energy.discover_meters(root)
    except Exception as e:
        return None, f"meter discovery failed ({str(e).splitlines()[0][:200]})"
    return (meters[0], "") if meters else (None, "no power meter found on the target")


def energy_reading(
    reading: Any, samples: list[float], wall_s: float, req: dict[str, Any], threads: int
) -> tuple[dict[str, Any] | None, str]:
    """Per-inference energy from a meter reading, else an estimate from the request's power model.

    Returns (EnergyReading fields or None, note). A failed meter falls back to the estimate and
    says so in the note.
    """
    n = len(samples)
    note = ""
    if isinstance(reading, dict):
        note = reading.get("error", "")
    elif reading is not None and n and reading.seconds > 0:
        out = {
            "joules_per_inference": reading.joules / n,
            "avg_watts": reading.avg_watts,
            "source": reading.source,
            "measured": bool(reading.measured),
        }
        return out, reading.note
    power = req.get("power")
    if not power or not n:
        return None, note or ("" if power else "no power model given: no energy estimate")
    try:
        import energy
    except Exception as e:
        return None, f"energy.py unavailable on the target ({type(e).__name__})"
    busy_s = min(sum(samples) / 1e3, wall_s)
    cores = max(1, int(power.get("cores_total") or 1))
    est = energy.estimate_energy(
        busy_s,
        wall_s,
        float(power["idle_w"]),
        float(power["active_w"]),
        cores_used=min(threads, cores),
        cores_total=cores,
    )
    source = est.source + (" ({})".format(power["name"]) if power.get("name") else "")
    out = {
        "joules_per_inference": est.joules / n,
        "avg_watts": est.avg_watts,
        "source": source,
        "measured": False,
    }
    return out, note


# ---------------------------------------------------------------------------------------------
# system information


def set_affinity(core_mask: str | None) -> list[int] | None:
    """Pin the process to the CPUs of a hex mask (before the runtime starts threads).

    Returns the CPUs the process may run on, or None where affinity is not supported.
    """
    getter = getattr(os, "sched_getaffinity", None)
    if core_mask:
        text = str(core_mask).lower()
        text = text[2:] if text.startswith("0x") else text
        try:
            mask = int(text, 16)
        except ValueError:
            raise AgentError(f"core mask {core_mask!r} is not hexadecimal (e.g. f0).", "usage") from None
        cpus = [i for i in range(mask.bit_length()) if mask >> i & 1]
        if not cpus:
            raise AgentError(f"core mask {core_mask!r} selects no CPU.", "usage")
        setter = getattr(os, "sched_setaffinity", None)
        if setter is None:
            raise AgentError("this target cannot set CPU affinity; drop --core-mask.", "usage")
        try:
            setter(0, cpus)
        except OSError:
            have = sorted(getter(0)) if getter else []
            raise AgentError(
                f"core mask {core_mask!r} selects no CPU available on this target (available: {have}).",
                "usage",
            ) from None
    return sorted(getter(0)) if getter else None


def cpu_freqs(root: str, cpus: list[int] | None = None) -> dict[str, float]:
    """Current frequency (MHz) per CPU from cpufreq's scaling_cur_freq (kHz)."""
    out = {}
    pattern = os.path.join(root, "sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")
    for path in sorted(glob.glob(pattern)):
        cpu = path.split(os.sep)[-3]
        if cpus is not None and int(cpu[3:]) not in cpus:
            continue
        value = _read_float(path)
        if value is not None:
            out[cpu] = value / 1e3
    return out


def temperatures(root: str) -> dict[str, float]:
    """Temperature (deg C) per thermal zone (``type`` name) from temp (millidegrees C)."""
    out = {}
    for zone in sorted(glob.glob(os.path.join(root, "sys/class/thermal/thermal_zone[0-9]*"))):
        value = _read_float(os.path.join(zone, "temp"))
        if value is None:
            continue
        name = os.path.basename(zone)
        try:
            with open(os.path.join(zone, "type"), encoding="ascii", errors="replace") as f:
                name = f"{name}:{f.read().strip()}"
        except OSError:
            pass
        out[name] = value / 1e3
    return out


def _read_float(path: str) -> float | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return None


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process (bytes): VmHWM, else getrusage, else psutil's RSS.

    psutil has no peak RSS on Linux, so /proc/self/status VmHWM comes first; psutil's current
    RSS is the last resort on systems without /proc or getrusage.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(kb if sys.platform != "darwin" else kb / 1024) * 1024
    except (ImportError, OSError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def probe() -> dict[str, Any]:
    """What the target offers: machine, python, runtimes with versions, power meters, sensors."""
    root = sysfs_root()
    runtimes = {}
    for module, name in (
        ("numpy", "numpy"),
        ("onnxruntime", "onnxruntime"),
        ("ai_edge_litert", "litert"),
        ("tflite_runtime", "tflite_runtime"),
    ):
        runtimes[name] = _module_version(module)
    meters, unavailable = _probe_meters(root)
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "ok": True,
        "machine": platform.machine(),
        "system": platform.system(),
        "release": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "runtimes": runtimes,
        "meters": meters,
        "meters_unavailable": unavailable,
        "cpus": os.cpu_count(),
        "cpu_affinity": sorted(affinity(0)) if affinity else None,
        "cpu_freq_mhz": cpu_freqs(root),
        "temperature_c": temperatures(root),
        "extra": {"agent_version": AGENT_VERSION},
    }


def _module_version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # broken installs count as absent
        return None
    return str(getattr(mod, "__version__", "unknown"))


def _probe_meters(root: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    try:
        import energy
    except Exception as e:
        return [], [{"source": "energy.py", "reason": f"unavailable ({type(e).__name__})"}]
    found = energy.probe_meters(root) if hasattr(energy, "probe_meters") else None
    if found is None:
        return [{"source": m.source, "measured": m.measured} for m in energy.discover_meters(root)], []
    return (
        [{"source": m.source, "measured": m.measured} for m in found.meters],
        [{"source": s, "reason": r} for s, r in found.unavailable],
    )


if __name__ == "__main__":
    sys.exit(main())
