"""A real Ray cluster on this machine for the device-lab tests.

``lab`` (module scope) starts, with the product's own commands, a head node
(``edge-compress lab head --num-cpus 0``: compilation has to go to the lab nodes) and two lab
nodes (``edge-compress lab join``), each a separate process group with its own inventory of two
loopback sshd targets (``lab-a``: a0, a1; ``lab-b``: b0, b1) and its own artifact cache. Ray is
kept small (object stores of 80-100 MB, one CPU per lab node, no dashboard, no log monitor). The
head checks node health every second, so a killed node is noticed within seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.runners.models import make_linear_onnx
from tests.sshd import SKIP_REASON, SSHServer, free_port, sshd_available, start_many

NODES = {"lab-a": ("a0", "a1"), "lab-b": ("b0", "b1")}
FAST_HEALTH_CHECKS = {  # a lost node is noticed in about 5 s (Ray's default: about 15-30 s)
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "4",
}
SMALL_RAY = ["--", "--include-log-monitor=false"]


def cli(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_compress", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **(env or {})},
        check=False,
    )


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``edge-compress ARGS`` in its own process group (so the whole node can be killed)."""
    with open(log, "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_compress", *args],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
            start_new_session=True,
        )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@dataclass
class LabNode:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    inventory: Path | None = None
    cache: Path | None = None
    targets: tuple[str, ...] = ()

    def kill(self) -> None:
        """SIGKILL the node's whole process group: Ray's raylet and everything it started."""
        kill_group(self.proc)


@dataclass
class Lab:
    address: str  # HOST:PORT of the head (GCS)
    client_address: str  # ray://127.0.0.1:PORT
    work: Path
    temp_dir: Path
    head: LabNode
    nodes: dict[str, LabNode]
    servers: list[SSHServer]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # target -> inventory entry

    def status(self) -> dict[str, Any]:
        r = cli("lab", "status", "--cluster", self.address, "--json", timeout=120)
        assert r.returncode == 0, r.stderr + r.stdout
        return json.loads(r.stdout)

    def node_ids(self) -> dict[str, str]:
        """Node name -> Ray node id, of the nodes alive now."""
        return {n["name"]: n["node_id"] for n in self.status()["nodes"]}

    def join(self, name: str) -> LabNode:
        """Start lab node ``name`` (again) with its inventory and cache."""
        inv, cache = self.work / f"{name}.yaml", self.work / name / "cache"
        log = self.work / f"{name}-{time.monotonic_ns()}.log"
        args = [
            "lab", "join", "--address", self.address, "--inventory", str(inv), "--name", name,
            "--num-cpus", "1", "--object-store-memory", "80MB", "--cache-dir", str(cache),
            "--temp-dir", str(self.temp_dir), "--no-check", "--block", *SMALL_RAY,
        ]  # fmt: skip
        node = LabNode(name, spawn(args, log), log, inv, cache, NODES[name])
        self.nodes[name] = node
        return node

    def wait_for_devices(self, names: list[str], timeout_s: float = 180.0) -> dict[str, Any]:
        """Wait until the lab advertises ``names``; a node that failed to join (a busy machine
        can make ``ray start`` time out) is started once more."""
        deadline = time.monotonic() + timeout_s
        retried: set[str] = set()
        while True:
            st = self.status()
            seen = {d["target"] for d in st["devices"]}
            if set(names) <= seen:
                return st
            for n in list(self.nodes.values()):
                if n.proc.poll() is not None and n.name not in retried:
                    retried.add(n.name)
                    self.join(n.name)
            dead = [n.name for n in [self.head, *self.nodes.values()] if n.proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in self.work.glob("*.log"))
                raise RuntimeError(f"lab did not come up (exited: {dead}; devices {sorted(seen)}):\n{logs}")
            time.sleep(1.0)

    def write_inventory(self, path: Path, names: list[str]) -> Path:
        path.write_text(yaml.safe_dump({"targets": {n: self.entries[n] for n in names}}, sort_keys=False))
        return path


def _wait_for_address(
    temp_dir: Path, head: subprocess.Popen[bytes], log: Path, timeout_s: float = 120
) -> str:
    f = temp_dir / "ray_current_cluster"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"lab head exited: {log.read_text(errors='replace')[-3000:]}")
        if f.is_file() and f.read_text().strip() and "Ray runtime started" in log.read_text(errors="replace"):
            return f.read_text().strip()
        time.sleep(0.5)
    raise RuntimeError(f"lab head did not start: {log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    pytest.importorskip("ray", reason="the lab extra (Ray) is not installed")
    if not sshd_available():
        pytest.skip(SKIP_REASON)
    work = tmp_path_factory.mktemp("lab")
    # Ray's unix sockets live under the temp dir: keep its path short
    temp_dir = Path(tempfile.mkdtemp(prefix="ecl-"))
    servers = start_many(4, work / "sshd")
    port, client_port = free_port(), free_port()
    (work / "head-inventory.yaml").write_text("targets: {}\n")  # the head reaches no device
    head_log = work / "head.log"
    head = LabNode(
        "head",
        spawn(
            [
                "lab",
                "head",
                "--port",
                str(port),
                "--client-port",
                str(client_port),
                "--num-cpus",
                "0",
                "--object-store-memory",
                "100MB",
                "--name",
                "head",
                "--temp-dir",
                str(temp_dir),
                "--inventory",
                str(work / "head-inventory.yaml"),
                "--block",
                *SMALL_RAY,
            ],  # fmt: skip
            head_log,
            env=FAST_HEALTH_CHECKS,
        ),
        head_log,
    )
    lab = Lab("", f"ray://127.0.0.1:{client_port}", work, temp_dir, head, {}, servers)
    try:
        lab.address = _wait_for_address(temp_dir, head.proc, head_log)
        it = iter(servers)
        for name, targets in NODES.items():
            for t in targets:
                s = next(it)
                lab.entries[t] = s.inventory_entry(
                    python=sys.executable, workdir=str(work / "remote" / t), profile="host"
                )
            lab.write_inventory(work / f"{name}.yaml", list(targets))
        for name, targets in NODES.items():  # one after the other: a busy machine makes ray start time out
            lab.join(name)
            lab.wait_for_devices(list(targets))
        yield lab
    finally:
        for node in [*lab.nodes.values(), head]:
            kill_group(node.proc)
        for s in servers:
            s.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def make_models(directory: Path, n: int, *, k: int = 16, classes: int = 5, samples: int = 300) -> list[dict]:
    """``n`` different linear ONNX models, each with a labelled .npz: suite model entries whose
    on-device accuracy is exact (the same file and data give the same number on any host)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((samples, k)).astype(np.float32)
    y = rng.integers(0, classes, samples)
    np.savez(directory / "test.npz", x=x, y=y)
    out = []
    for i in range(n):
        make_linear_onnx(directory / f"m{i}.onnx", rng.standard_normal((k, classes)))
        out.append({"model": f"m{i}.onnx", "accuracy": "test.npz"})
    return out


def write_suite(path: Path, models: list[Any], targets: list[str], **fields: Any) -> Path:
    data: dict[str, Any] = {
        "name": fields.pop("name", "lab"),
        "models": models,
        "compile": [{"name": "asis", "method": "none"}],
        "targets": targets,
        "measure": {"min_count": 20, "min_duration_s": 0.3, "warmup": 2, "cooldown_s": 0.1, "timeout_s": 120},
        "interleave": {"enabled": False},
    }
    data.update(fields)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
