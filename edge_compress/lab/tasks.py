"""What Ray runs on lab nodes. Plain functions (the executor wraps them with ``ray.remote``), so
they are importable and testable without a cluster.

Files travel by content: the head puts a file's bytes in Ray's object store once per run and
sends a :class:`FileRef` (name, sha256, size, object ref); a node writes it into its own cache
(``$EDGE_COMPRESS_LAB_CACHE``, else ``<cache>/lab``) under its hash and fetches the bytes only
when that cache does not have them yet, so an artifact crosses the network once per node.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_compress.lab.node import CACHE_ENV, NODE_ENV

PUBLIC_FIELDS = ("name", "transport", "host", "port", "user", "profile", "serial", "emulated")


@dataclass(frozen=True)
class FileRef:
    """A file shipped through the object store: its name (the suffix matters), hash and bytes."""

    name: str
    sha256: str
    size: int
    ref: Any  # ray.ObjectRef of the bytes


def lab_cache_dir() -> Path:
    """This node's cache of files and artifacts received from (or compiled for) the head."""
    env = os.environ.get(CACHE_ENV)
    if env:
        p = Path(env)
    else:
        from edge_compress.zoo.data import cache_dir

        p = cache_dir() / "lab"
    p.mkdir(parents=True, exist_ok=True)
    return p


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def materialize(f: FileRef) -> str:
    """The local path of a shipped file, fetched from the object store only on a cache miss."""
    d = lab_cache_dir() / "files" / f.sha256[:2] / f.sha256
    path = d / f.name
    if path.is_file() and path.stat().st_size == f.size:
        return str(path)
    import ray

    data = ray.get(f.ref)
    if len(data) != f.size or sha256_bytes(data) != f.sha256:
        raise RuntimeError(f"{f.name}: the bytes received do not match their sha256 {f.sha256[:12]}")
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{f.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return str(path)


def node_identity() -> dict[str, Any]:
    """Which Ray node (id, lab name, host) this code runs on."""
    import psutil
    import ray

    host = socket.gethostname()
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "node": os.environ.get(NODE_ENV) or host,
        "host": host,
        "pid": os.getpid(),
        "worker_started_unix": psutil.Process().create_time(),  # a fresh worker, or a warm one
    }


def localize(job: Any, files: dict[str, FileRef]) -> Any:
    """The job as this node runs it: its target from the node's own inventory, its files from
    the node's cache."""
    from runners.inventory import load_inventory

    target = load_inventory(None).get(job.target_name)  # the node's inventory (EDGE_COMPRESS_INVENTORY)
    repl: dict[str, Any] = {"target": target.model_dump()}
    if "model" in files:
        repl["model_file"] = materialize(files["model"])
    if "baseline" in files and job.baseline:
        repl["baseline"] = {**job.baseline, "model_file": materialize(files["baseline"])}
    if "accuracy_npz" in files:
        repl["request"] = {**job.request, "accuracy_npz": materialize(files["accuracy_npz"])}
    return dataclasses.replace(job, **repl)


def run_cell_task(fn: Any, job: Any, files: dict[str, FileRef], board: Any = None) -> Any:
    """Measure one cell on this node (``fn`` is ``nightly.run_cell``); the outcome records the
    node, the local model file and when the cell started and finished here."""
    ident = node_identity()
    t0 = time.time()
    if board is not None:
        try:
            board.started.remote(job.key, job.target_name, ident["node_id"], ident["node"], t0)
        except Exception:  # noqa: BLE001 - the status board is informational
            pass
    local = localize(job, files)
    out = fn(local)
    extra = out.measurement.get("extra")
    if not isinstance(extra, dict):
        extra = out.measurement["extra"] = {}
    extra["lab"] = {**ident, "started_unix": t0, "finished_unix": time.time(), "model_file": local.model_file}
    return out


def compile_task(fn: Any, call: tuple, files: dict[str, FileRef]) -> dict[str, Any]:
    """Prepare one artifact on this node (``fn`` is ``nightly.prepare_artifact``) into the node's
    artifact cache, and send its files back to the head."""
    model_ref, settings, budget, profile, _head_dir, fmt, data = call
    if "model" in files:
        model_ref = materialize(files["model"])
    if "data" in files:
        data = materialize(files["data"])
    art = fn(model_ref, settings, budget, profile, lab_cache_dir() / "artifacts", fmt, data)
    directory = Path(art.directory)
    blobs = {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
    return {
        "prepared": dataclasses.asdict(art),
        "dirname": directory.name,
        "model_file": Path(art.model_file).relative_to(directory).as_posix(),
        "files": blobs,
        "node": node_identity(),
    }


def warm_task(target: str = "") -> dict[str, Any]:
    """Start a worker on a device's node with what a cell imports. The executor sends one per
    device (requesting the device's resource) while the head prepares the artifacts, and waits
    for them before the first cell, so no cell pays for a worker process starting and importing;
    the record says which node and process ran it, and when."""
    t0 = time.time()
    import edge_compress.nightly  # noqa: F401
    import edge_compress.regression  # noqa: F401 - the verdict (numpy)
    from runners.inventory import load_inventory
    from runners.registry import runner_for

    prepared: dict[str, Any] = {}
    if target:  # the device's runner module (paramiko for ssh), as its cells construct it
        runner = runner_for(load_inventory(None).get(target))
        prepare = getattr(runner, "prepare", None)
        if prepare is not None:  # connection, agent files and warm agent, ready for the first cell
            try:
                prepared = prepare()
            except Exception as e:  # the cell reports the device's problem; warming is best effort
                prepared = {"error": str(e)}
    return {
        **node_identity(),
        "target": target,
        "prepared": prepared,
        "started_unix": t0,
        "finished_unix": time.time(),
    }


class DeviceWorker:
    """One device's worker on its node (the executor makes it a Ray actor that holds the device's
    resource ``target:<name>``): the device's cells run here one after another, in one process,
    so its open connection and warm agent (the runner's per-process pool) carry from cell to
    cell. A plain task per cell lands on whichever worker process of the node is idle, which
    for a device with a few cells per night means a new connection and a new agent almost
    every time."""

    def __init__(self, target: str) -> None:
        self.target = target

    def warm(self) -> dict[str, Any]:
        return warm_task(self.target)

    def run_cell(self, fn: Any, job: Any, files: dict[str, FileRef], board: Any = None) -> Any:
        return run_cell_task(fn, job, files, board)


def describe_task(names: list[str]) -> dict[str, Any]:
    """The public part of this node's inventory entries for ``names`` (no keys, no paths)."""
    from edge_compress import __version__
    from edge_compress.errors import UserError
    from runners.inventory import load_inventory

    inv = load_inventory(None)
    targets: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for n in names:
        try:
            t = inv.get(n)
        except UserError:
            missing.append(n)
            continue
        targets[n] = {k: v for k, v in t.model_dump().items() if k in PUBLIC_FIELDS}
    return {"node": node_identity(), "targets": targets, "missing": missing, "version": __version__}
