"""LocalRunner: measure on this machine through the same agent, request JSON in, JSON out.

The agent runs in a child process of the current interpreter (or the target's ``python``),
from the staged bundle in the host cache, exactly as it runs on a remote target.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    ) -> None:
        self.name = name
        self.python = python or sys.executable
        self.profile = profile
        self.env = dict(env or {})
        self.emulated = emulated

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
        return m

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        return env
