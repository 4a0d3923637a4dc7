"""AdbRunner: measure on an Android device over adb.

Every host-side command is an argument list (``adb -s SERIAL ...``, never a host shell string);
the one string that reaches the device shell (``adb shell CMD``) is built with ``shlex.quote`` on
every value. Files go to ``/data/local/tmp/edge-compress`` (the target's ``workdir``), cached by
content hash like the SSH runner (``blobs/<sha256>/<name>``).

Two modes:

* **agent**: the device has a python with numpy (Termux, a rooted image): the agent runs there,
  exactly as on a Linux board, and reads the battery meter itself;
* **benchmark_model**: otherwise, for .tflite models, TFLite's ``benchmark_model`` binary runs
  (``taskset MASK`` in front when a core mask is given) and its output is parsed with
  :mod:`runners.benchmark_model`. It prints statistics only, so ``latency_ms`` stays empty and the
  parsed statistics go to ``stats``; energy comes from ``current_now`` x ``voltage_now`` of the
  battery read before and after (``measured``), else the profile's power model (estimate).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shlex
import subprocess
import tempfile
import time
import uuid
from typing import Any

from runners.agent import host
from runners.base import EnergyReading, ErrorKind, LatencyStats, Measurement, RunRequest, model_suffix
from runners.inventory import Target

BATTERY_DIR = "/sys/class/power_supply/battery"
DEVICE_BENCHMARK_MODEL = "/data/local/tmp/benchmark_model"
UA_THRESHOLD = 20_000  # |current_now| at or above this is in uA, below in mA (see runners.energy)


class AdbError(Exception):
    """A failed adb step; ``kind`` is the Measurement error kind."""

    def __init__(self, message: str, kind: ErrorKind = "connection") -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


class AdbRunner:
    """Measures artifacts on one Android device; ``run`` never raises for device failures."""

    def __init__(
        self,
        target: Target,
        *,
        op_profiling: bool = False,
        battery_dir: str = BATTERY_DIR,
        command_timeout_s: float = 120.0,
    ) -> None:
        if target.transport != "adb":
            raise ValueError(f"target {target.name!r} is not an adb target")
        self.target = target
        self.name = target.name
        self.workdir = target.remote_workdir.rstrip("/")
        self.op_profiling = op_profiling
        self.battery_dir = battery_dir
        self.command_timeout_s = command_timeout_s
        self._has_python: bool | None = None

    @property
    def lock_key(self) -> str:
        return f"adb:{self.target.serial or 'default'}"

    # -- adb primitives (argument lists only) ------------------------------------------------------

    def adb_argv(self, *args: str) -> list[str]:
        """``[adb, -s, SERIAL, *args]``."""
        serial = ["-s", self.target.serial] if self.target.serial else []
        return [self.target.adb_path, *serial, *args]

    def adb(self, *args: str, timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run adb; raises AdbError for a missing adb / device, 'timeout' for the deadline."""
        argv = self.adb_argv(*args)
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout_s or self.command_timeout_s, check=False
            )
        except FileNotFoundError:
            raise AdbError(
                f"adb not found ({self.target.adb_path!r}); install it or set adb_path", "usage"
            ) from None
        except subprocess.TimeoutExpired:
            raise AdbError(f"adb {args[0]} on {self.name!r} timed out", "timeout") from None
        text = (proc.stderr + proc.stdout).lower()
        if proc.returncode != 0 and (
            "device" in text and ("not found" in text or "offline" in text or "no devices" in text)
        ):
            last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]
            raise AdbError(f"device {self.target.serial or '(default)'} is not reachable: {' '.join(last)}")
        return proc

    def shell(self, command: str, timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:
        """``adb shell COMMAND``: ``command`` is one device-shell string, values already quoted."""
        return self.adb("shell", command, timeout_s=timeout_s)

    def push(self, local: str, name: str | None = None, blob: str | None = None) -> tuple[str, int]:
        """Push to ``<workdir>/blobs/<sha256>/<name>`` unless there already; (device path, bytes sent)."""
        return self.push_files([(local, name, blob)])[0]

    def push_files(self, items: list[tuple[str, str | None, str | None]]) -> list[tuple[str, int]]:
        """Push ``(local, name, blob)`` files to the blob cache; ``[(device path, bytes sent)]``.

        One ``adb shell`` asks for the sizes of all the cached copies; only missing files are
        pushed (to a temporary name, then renamed in one more call), so a fully cached push
        costs a single adb round trip.
        """
        plan = []
        for local, name, blob in items:
            digest = blob or host.sha256_file(local)
            remote = posixpath.join(self.workdir, "blobs", digest, name or os.path.basename(local))
            plan.append((local, remote, os.path.getsize(local)))
        quoted = " ".join(shlex.quote(r) for _, r, _ in plan)
        res = self.shell(f'for f in {quoted}; do stat -c %s "$f" 2>/dev/null || echo -1; done')
        have = res.stdout.split() if res.returncode == 0 else []
        missing = [(loc, r, n) for i, (loc, r, n) in enumerate(plan) if i >= len(have) or have[i] != str(n)]
        if missing:
            dirs = " ".join(sorted({shlex.quote(posixpath.dirname(r)) for _, r, _ in missing}))
            self._check(self.shell(f"mkdir -p {dirs}"), "mkdir")
            moves = []
            for local, remote, _ in missing:
                tmp = posixpath.join(posixpath.dirname(remote), f".{uuid.uuid4().hex}.part")
                self._check(self.adb("push", local, tmp), "push")
                moves.append(f"mv -f {shlex.quote(tmp)} {shlex.quote(remote)}")
            self._check(self.shell(" && ".join(moves)), "push")
        sent = {r for _, r, _ in missing}
        return [(r, n if r in sent else 0) for _, r, n in plan]

    @staticmethod
    def _check(proc: subprocess.CompletedProcess[str], step: str) -> None:
        if proc.returncode != 0:
            last = ((proc.stderr.strip() or proc.stdout.strip()).splitlines() or ["no output"])[-1]
            raise AdbError(f"adb {step} failed: {last}", "infrastructure")

    # -- run ----------------------------------------------------------------------------------------

    def run(self, request: RunRequest) -> Measurement:
        """Measure on the device; failures come back as ``Measurement.failure``."""
        t0 = time.monotonic()
        m = self._run(request)
        m.wall_s = time.monotonic() - t0
        m.emulated = self.target.emulated
        return m

    def _run(self, request: RunRequest) -> Measurement:
        problem = host.check_request(request)
        if problem:
            return Measurement.failure(self.name, request.model_path, problem, "usage")
        try:
            power = host.power_model(request.profile or self.target.profile)
        except Exception as e:  # UserError: unknown profile
            return Measurement.failure(self.name, request.model_path, str(e), "usage")
        try:
            with host.device_lock(self.lock_key, request.timeout_s):
                if request.runtime != "benchmark_model" and self.has_python():
                    return self._run_agent(request, power)
                return self._run_benchmark_model(request, power)
        except AdbError as e:
            return Measurement.failure(self.name, request.model_path, f"{e}.", e.kind)
        except host.DeviceBusy as e:
            return Measurement.failure(self.name, request.model_path, f"{e}.", "infrastructure")

    def has_python(self) -> bool:
        """Whether the device's ``python`` can run the agent (imports numpy); asked once."""
        if self._has_python is None:
            res = self.shell(f"{self._python()} -c 'import numpy' 2>/dev/null && echo ok", timeout_s=60)
            self._has_python = res.returncode == 0 and res.stdout.strip().endswith("ok")
        return self._has_python

    def _python(self) -> str:
        envs = " ".join(shlex.quote(f"{k}={v}") for k, v in self.target.env.items())
        py = shlex.quote(self.target.python)
        return f"env {envs} {py}" if envs else py

    def _rundir(self) -> str:
        rundir = posixpath.join(self.workdir, "runs", uuid.uuid4().hex)
        self._check(self.shell(f"mkdir -p {shlex.quote(rundir)}"), "mkdir")
        return rundir

    def _cleanup(self, rundir: str) -> None:
        with contextlib.suppress(AdbError, OSError):
            self.shell(f"rm -rf -- {shlex.quote(rundir)}", timeout_s=60)

    def _kill(self, rundir: str, pidfile: str) -> None:
        path = shlex.quote(posixpath.join(rundir, pidfile))
        with contextlib.suppress(AdbError, OSError):
            self.shell(f'p=$(cat {path} 2>/dev/null); [ -n "$p" ] && kill -9 "$p"; true', timeout_s=30)

    def _exec(
        self, command: str, rundir: str, pidfile: str, timeout_s: float
    ) -> subprocess.CompletedProcess[str]:
        try:
            return self.shell(command, timeout_s=timeout_s)
        except AdbError as e:
            if e.kind == "timeout":
                self._kill(rundir, pidfile)
                raise AdbError(
                    f"the run on {self.name!r} exceeded its timeout of {timeout_s:g} s; it was killed",
                    "timeout",
                ) from None
            raise

    # -- agent mode -----------------------------------------------------------------------------------

    def _run_agent(self, request: RunRequest, power: dict[str, Any] | None) -> Measurement:
        bundle = host.agent_bundle()
        keys = [k for k in ("model_path", "inputs_npz", "accuracy_npz") if getattr(request, k)]
        items = [(str(p), n, bundle.sha256) for n, p in bundle.files]
        items += [(getattr(request, k), None, None) for k in keys]
        done = self.push_files(items)
        agent = posixpath.join(self.workdir, "blobs", bundle.sha256, "agent.py")
        pushed = {"agent": sum(n for _, n in done[: len(bundle.files)])}
        paths: dict[str, str] = {}
        for key, (remote, n) in zip(keys, done[len(bundle.files) :], strict=True):
            paths[key], pushed[key] = remote, n
        rundir = self._rundir()
        try:
            payload = host.agent_request(
                request,
                model=paths["model_path"],
                inputs_npz=paths.get("inputs_npz"),
                accuracy_npz=paths.get("accuracy_npz"),
                power=power,
            )
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump(payload, f)
            try:
                self._check(self.adb("push", f.name, posixpath.join(rundir, "request.json")), "push")
            finally:
                os.unlink(f.name)
            command = (
                f"cd {shlex.quote(rundir)} && echo $$ > agent.pid && "
                f"exec {self._python()} {shlex.quote(agent)} request.json"
            )
            proc = self._exec(command, rundir, "agent.pid", request.timeout_s)
        finally:
            self._cleanup(rundir)
        m = host.parse_agent_output(
            proc.stdout,
            proc.stderr,
            proc.returncode,
            target=self.name,
            model_path=request.model_path,
            python=self.target.python,
        )
        m.pushed_bytes = sum(pushed.values())
        m.extra.update(pushed=pushed, mode="agent")
        return m

    # -- benchmark_model mode -------------------------------------------------------------------------

    def benchmark_model_argv(self, binary: str, model: str, request: RunRequest) -> list[str]:
        """benchmark_model's command words (before quoting), ``taskset MASK`` first if a mask is set."""
        words = [] if not request.core_mask else ["taskset", request.core_mask.lower().removeprefix("0x")]
        words += [
            binary,
            f"--graph={model}",
            f"--num_threads={request.threads}",
            f"--warmup_runs={request.warmup}",
            f"--num_runs={request.min_count}",
            f"--min_secs={request.min_duration_s:g}",
        ]
        if self.op_profiling:
            words.append("--enable_op_profiling=true")
        return words

    def _run_benchmark_model(self, request: RunRequest, power: dict[str, Any] | None) -> Measurement:
        if model_suffix(request.model_path) != ".tflite":
            return Measurement.failure(
                self.name,
                request.model_path,
                f"target {self.name!r} has no python with numpy for the agent, and benchmark_model runs "
                ".tflite models only; export a .tflite or install python on the device.",
                "usage",
            )
        if request.inputs_npz or request.accuracy_npz:
            return Measurement.failure(
                self.name,
                request.model_path,
                "benchmark_model mode cannot use --inputs or --accuracy; these need python on the device.",
                "usage",
            )
        items: list[tuple[str, str | None, str | None]] = [(request.model_path, None, None)]
        if self.target.benchmark_model:
            items.append((self.target.benchmark_model, "benchmark_model", None))
        done = self.push_files(items)
        (model, sent), binary = done[0], DEVICE_BENCHMARK_MODEL
        pushed = {"model_path": sent}
        if self.target.benchmark_model:
            binary, pushed["benchmark_model"] = done[1]
            if pushed["benchmark_model"]:
                self._check(self.shell(f"chmod 755 {shlex.quote(binary)}"), "chmod")
        rundir = self._rundir()
        try:
            words = self.benchmark_model_argv(binary, model, request)
            command = f"cd {shlex.quote(rundir)} && echo $$ > bm.pid && exec " + " ".join(
                shlex.quote(w) for w in words
            )
            before = self.read_battery()
            proc = self._exec(command + " 2>&1", rundir, "bm.pid", request.timeout_s)
            after = self.read_battery()
        finally:
            self._cleanup(rundir)
        m = self._parse_benchmark(proc, request, before, after, power)
        m.pushed_bytes = sum(pushed.values())
        m.extra.update(pushed=pushed, mode="benchmark_model", command=words)
        return m

    def _parse_benchmark(
        self,
        proc: subprocess.CompletedProcess[str],
        request: RunRequest,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        power: dict[str, Any] | None,
    ) -> Measurement:
        from runners.benchmark_model import parse_benchmark_model

        text = proc.stdout + proc.stderr
        try:
            r = parse_benchmark_model(text)
        except Exception as e:  # noqa: BLE001 - an unparsable output is an agent failure
            last = (text.strip().splitlines() or ["no output"])[-1][:200]
            return Measurement.failure(
                self.name,
                request.model_path,
                f"benchmark_model output could not be parsed ({e}); exit code {proc.returncode}: {last}.",
                "agent",
            )
        if proc.returncode != 0 or not getattr(r, "count", 0):
            last = (text.strip().splitlines() or ["no output"])[-1][:200]
            return Measurement.failure(
                self.name,
                request.model_path,
                f"benchmark_model failed (exit code {proc.returncode}): {last}.",
                "agent",
            )
        stats, extra = benchmark_stats(r)
        m = Measurement(
            target=self.name,
            model_path=request.model_path,
            ok=True,
            latency_ms=[],
            stats=stats,
            load_ms=_ms(getattr(r, "init_us", None)),
            first_inference_ms=_ms(getattr(r, "first_inference_us", None)),
            peak_rss_bytes=_mb_to_bytes(getattr(r, "peak_memory_mb", None)),
            runtime="benchmark_model",
            threads=request.threads,
            extra=extra,
        )
        m.energy, note = self._energy(before, after, stats, request.threads, power)
        if note:
            m.extra["energy_note"] = note
        return m

    # -- battery energy ---------------------------------------------------------------------------------

    def read_battery(self) -> dict[str, Any] | None:
        """current_now, voltage_now and status of the battery through ``adb shell cat``; None if absent."""
        d = self.battery_dir
        files = " ".join(shlex.quote(posixpath.join(d, n)) for n in ("current_now", "voltage_now", "status"))
        try:
            res = self.shell(f"cat {files}", timeout_s=30)
        except AdbError:
            return None
        parts = res.stdout.split()
        if res.returncode != 0 or len(parts) < 2:
            return None
        try:
            return {"current": float(parts[0]), "voltage": float(parts[1]), "status": " ".join(parts[2:])}
        except ValueError:
            return None

    def _energy(
        self,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        stats: LatencyStats,
        threads: int,
        power: dict[str, Any] | None,
    ) -> tuple[EnergyReading | None, str]:
        per_s = stats.mean_ms / 1e3
        if before and after:
            watts = (battery_watts(before) + battery_watts(after)) / 2
            note = "2 battery readings around the run"
            if "Charging" in (before["status"], after["status"]) or "Full" in (
                before["status"],
                after["status"],
            ):
                note += "; on external power: readings contaminated"
            return EnergyReading(watts * per_s, watts, "android-battery:current_now*voltage_now", True), note
        if power is None:
            return None, "no battery reading and no power model"
        from runners.energy import estimate_energy

        cores = max(1, int(power["cores_total"]))
        est = estimate_energy(
            per_s,
            per_s,
            power["idle_w"],
            power["active_w"],
            cores_used=min(threads, cores),
            cores_total=cores,
        )
        return EnergyReading(
            est.joules, est.avg_watts, f"{est.source} ({power['name']})", False
        ), "no battery reading"

    # -- probe ---------------------------------------------------------------------------------------

    def probe(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Reachability, ABI, python / agent probe or benchmark_model presence; failures are data."""
        try:
            res = self.shell("uname -m; getprop ro.product.cpu.abi", timeout_s=30)
            if res.returncode != 0:
                raise AdbError((res.stderr.strip() or "adb shell failed").splitlines()[-1])
            machine = (res.stdout.split() or ["?"])[0]
            if self.has_python():
                bundle = host.agent_bundle()
                self.push_files([(str(p), n, bundle.sha256) for n, p in bundle.files])
                agent = shlex.quote(posixpath.join(self.workdir, "blobs", bundle.sha256, "agent.py"))
                out = self.shell(f"{self._python()} {agent} --probe", timeout_s=timeout_s)
                data = host.find_result(out.stdout) or {
                    "ok": False,
                    "error": host.no_result_message(out.stderr, out.returncode, self.target.python),
                    "error_kind": "agent",
                }
                return {**data, "reachable": True}
            bm = self.target.benchmark_model or DEVICE_BENCHMARK_MODEL
            has_bm = (
                bool(self.target.benchmark_model)
                or self.shell(f"[ -x {shlex.quote(bm)} ] && echo ok").stdout.strip() == "ok"
            )
            battery = self.read_battery() is not None
            return {
                "ok": True,
                "reachable": True,
                "machine": machine,
                "python": None,
                "runtimes": {"benchmark_model": "present" if has_bm else None},
                "meters": [{"source": "android-battery", "measured": True}] if battery else [],
            }
        except AdbError as e:
            return {"ok": False, "reachable": False, "error": f"{e}.", "error_kind": e.kind}


def battery_watts(reading: dict[str, Any]) -> float:
    """Battery power (W) from raw current_now (uA, or mA on some devices) and voltage_now (uV)."""
    raw_i, raw_v = abs(reading["current"]), abs(reading["voltage"])
    amps = raw_i / (1e6 if raw_i >= UA_THRESHOLD else 1e3)
    volts = raw_v / 1e6 if raw_v > 100_000 else raw_v / 1e3 if raw_v > 100 else raw_v
    return amps * volts


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1e3


def _mb_to_bytes(mb: float | None) -> int | None:
    return None if mb is None else int(mb * 2**20)


def benchmark_stats(r: Any) -> tuple[LatencyStats, dict[str, Any]]:
    """LatencyStats (ms) from a parsed benchmark_model result, and the extra fields.

    The tool prints a summary only: p90 / p99 and the median's confidence interval are unknown
    and set to NaN (never made up); its own p5 / p95, delegation and memory figures go to extra.
    """
    from runners.benchmark_model import stats_ms

    d = stats_ms(r)
    nan = float("nan")

    def f(key: str) -> float:
        v = d.get(key)
        return nan if v is None else float(v)

    stats = LatencyStats(
        count=int(d["count"] or 0),
        mean_ms=f("mean"),
        median_ms=f("median"),
        p90_ms=nan,
        p99_ms=nan,
        std_ms=f("std"),
        min_ms=f("min"),
        max_ms=f("max"),
        median_ci95_ms=(nan, nan),
    )
    extra = {
        "benchmark_model": {k: v for k, v in d.items()},
        "delegate": {
            "name": getattr(r, "delegate_name", None),
            "nodes_delegated": getattr(r, "nodes_delegated", None),
            "nodes_total": getattr(r, "nodes_total", None),
            "fallback": getattr(r, "delegate_fallback", False),
            "warnings": list(getattr(r, "fallback_warnings", []))[:20],
        },
        "memory_mb": {
            "init": getattr(r, "memory_init_mb", None),
            "overall": getattr(r, "memory_overall_mb", None),
            "is_delta": getattr(r, "memory_is_delta", None),
        },
        "stats_note": "benchmark_model prints no samples: p90, p99 and the median CI are unknown (NaN)",
    }
    profile = getattr(r, "op_profile", None)
    if profile:
        extra["op_profile"] = [row._asdict() for row in profile]
    return stats, extra
