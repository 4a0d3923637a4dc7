"""LocalRunner: measure on this machine through the same agent, request JSON in, JSON out.

The agent runs in a child process of the current interpreter (or the target's ``python``),
from the staged bundle in the host cache, exactly as it runs on a remote target: by default
through a warm agent (``agent.py --serve``: one process per target that has imported numpy and
the runtimes and forks a fresh child per run, as on ssh targets), else one process per run.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from runners.agent import host
from runners.base import Measurement, RunRequest


class LocalRunner:
    """Runs the agent in a subprocess here. ``run`` never raises for measurement failures."""

    supports_paired = True  # RunRequest.paired_model_path: A/B blocks in one agent process

    def __init__(
        self,
        name: str = "local",
        *,
        python: str | None = None,
        profile: str | None = "host",
        env: dict[str, str] | None = None,
        emulated: bool = False,
        warm_agent: bool = True,
    ) -> None:
        self.name = name
        self.python = python or sys.executable
        self.profile = profile
        self.env = dict(env or {})
        self.emulated = emulated
        self.warm_agent = warm_agent

    def run(self, request: RunRequest) -> Measurement:
        """Measure ``request.model_path`` here; failures come back as ``Measurement.failure``."""
        t0 = time.monotonic()
        problem = host.check_request(request)
        if problem:
            return Measurement.failure(self.name, request.model_path, problem, "usage")
        try:
            power = host.power_model(request.profile or self.profile)
        except Exception as e:  # UserError: unknown profile
            return Measurement.failure(self.name, request.model_path, str(e), "usage")
        try:
            with host.device_lock(f"local:{self.name}", request.timeout_s):
                m = self._run_locked(request, power)
        except host.DeviceBusy as e:
            m = Measurement.failure(self.name, request.model_path, f"{e}.", "infrastructure")
        m.wall_s = time.monotonic() - t0
        m.emulated = self.emulated
        return m

    def probe(self, timeout_s: float = 60.0) -> dict:
        """The agent's ``--probe`` answer for this machine (runtimes, sensors)."""
        agent = host.stage_bundle() / "agent.py"
        proc = subprocess.run(
            [self.python, str(agent), "--probe"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=self._env(),
            check=False,
        )
        data = host.find_result(proc.stdout)
        if data is None:
            raise RuntimeError(host.no_result_message(proc.stderr, proc.returncode, self.python))
        return data

    # -- steps -----------------------------------------------------------------------------

    def _run_locked(self, request: RunRequest, power: dict | None) -> Measurement:
        rundir = Path(tempfile.mkdtemp(prefix="edge-compress-run-"))
        try:
            req_path = self._write_request(rundir, request, power)
            return self._execute(rundir, req_path, request)
        finally:
            shutil.rmtree(rundir, ignore_errors=True)

    @staticmethod
    def _write_request(rundir: Path, request: RunRequest, power: dict | None) -> Path:
        payload = host.agent_request(
            request,
            model=os.path.abspath(request.model_path),
            inputs_npz=os.path.abspath(request.inputs_npz) if request.inputs_npz else None,
            accuracy_npz=os.path.abspath(request.accuracy_npz) if request.accuracy_npz else None,
            power=power,
            paired_model=os.path.abspath(request.paired_model_path) if request.paired_model_path else None,
        )
        path = rundir / "request.json"
        path.write_text(json.dumps(payload), encoding="utf-8")
        return path

    def _execute(self, rundir: Path, req_path: Path, request: RunRequest) -> Measurement:
        agent = host.stage_bundle() / "agent.py"
        mode: dict[str, Any] = {"agent_mode": "cold"}
        if self.warm_agent:
            fmt = os.path.splitext(request.model_path)[1].lower()  # one warm agent per model format
            key = json.dumps([self.name, self.python, str(agent), sorted(self.env.items()), fmt])
            w, why = _warm_agent(key, [self.python, str(agent), "--serve"], self._env())
            if w is not None:
                reply = w.run(rundir, request.timeout_s)
                if reply is None:
                    return Measurement.failure(
                        self.name,
                        request.model_path,
                        f"the run exceeded its timeout of {request.timeout_s:g} s and was killed.",
                        "timeout",
                    )
                if "rc" in reply:
                    m = host.parse_agent_output(
                        str(reply.get("stdout", "")),
                        str(reply.get("stderr", "")),
                        int(reply["rc"]),
                        target=self.name,
                        model_path=request.model_path,
                        python=self.python,
                    )
                    m.pushed_bytes = 0
                    m.extra.update(
                        agent_mode="warm",
                        warm_agent_pid=w.pid,
                        warm_agent_runs=w.runs,
                        run_pid=reply.get("pid"),
                    )
                    return m
                why = str(reply.get("error", reply))
                _drop_warm(key, why, disable=w.alive())  # a dead agent is restarted next time
            mode["warm_agent_unavailable"] = why
        argv = [self.python, str(agent), str(req_path)]
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=request.timeout_s,
                cwd=rundir,
                env=self._env(),
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Measurement.failure(
                self.name,
                request.model_path,
                f"the run exceeded its timeout of {request.timeout_s:g} s and was killed.",
                "timeout",
            )
        except OSError as e:
            return Measurement.failure(
                self.name, request.model_path, f"cannot start {self.python!r} ({e.strerror}).", "agent"
            )
        m = host.parse_agent_output(
            proc.stdout,
            proc.stderr,
            proc.returncode,
            target=self.name,
            model_path=request.model_path,
            python=self.python,
        )
        m.pushed_bytes = 0
        m.extra.update(mode)
        return m

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        return env


# ---------------------------------------------------------------------------------------------
# warm agents on this machine (one per target and interpreter; used under the device lock)


class _LocalWarmAgent:
    def __init__(self, argv: list[str], env: dict[str, str], timeout_s: float = 120.0) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        self._buf = b""
        hello = self._read(time.monotonic() + timeout_s)
        if hello is None or not hello.get("ready"):
            self.close()
            raise RuntimeError("the warm agent did not start")
        self.pid = int(hello["pid"])
        self.runs = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def run(self, rundir: Path, timeout_s: float) -> dict[str, Any] | None:
        """One run; None after killing it at the timeout (the agent then serves the next one)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps({"dir": str(rundir)}) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as e:
            return {"error": f"the warm agent is gone ({e.strerror})"}
        reply = self._read(time.monotonic() + timeout_s)
        if reply is None:
            _kill_run(rundir)
            if self._read(time.monotonic() + 20.0) is None:
                self.close()
            return None
        self.runs += 1
        return reply

    def _read(self, deadline: float) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line, self._buf = self._buf[:i], self._buf[i + 1 :]
                try:
                    return json.loads(line)
                except ValueError:
                    continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                data = os.read(fd, 65536)
                if not data:
                    return {"error": "the warm agent ended"}
                self._buf += data


def _kill_run(rundir: Path) -> None:
    import signal

    try:
        pid = int((rundir / "agent.pid").read_text())
    except (OSError, ValueError):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.05)


_warm: dict[str, _LocalWarmAgent] = {}
_warm_failed: dict[str, str] = {}
_warm_lock = threading.Lock()


def _warm_agent(key: str, argv: list[str], env: dict[str, str]) -> tuple[_LocalWarmAgent | None, str]:
    with _warm_lock:
        if key in _warm_failed:
            return None, _warm_failed[key]
        w = _warm.get(key)
        if w is not None and w.alive():
            return w, ""
        try:
            w = _LocalWarmAgent(argv, env)
        except (OSError, RuntimeError) as e:
            _warm_failed[key] = str(e)
            return None, str(e)
        _warm[key] = w
        return w, ""


def _drop_warm(key: str, why: str, disable: bool) -> None:
    with _warm_lock:
        w = _warm.pop(key, None)
        if disable:
            _warm_failed[key] = why
    if w is not None:
        w.close()


@atexit.register
def close_warm_agents() -> int:
    """End every warm agent of this process (returns how many)."""
    with _warm_lock:
        agents = list(_warm.values())
        _warm.clear()
    for w in agents:
        w.close()
    return len(agents)
