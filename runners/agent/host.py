"""Host-side half of the agent protocol, shared by the local, ssh and adb runners.

* the agent bundle: the plain files pushed to a target (``agent.py``, ``runtimes.py`` and the
  optional ``energy.py`` / ``throttle.py``) and their content hash, which names the directory
  they are cached in on the target;
* the agent request JSON built from a :class:`~runners.base.RunRequest`;
* parsing the agent's stdout into a :class:`~runners.base.Measurement`;
* the per-device lock: one run per device at a time, across threads and processes.

Not pushed to targets. Stdlib-only apart from reading a device profile for the power model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.base import Measurement, RunRequest, model_suffix

AGENT_DIR = Path(__file__).resolve().parent
RUNNERS_DIR = AGENT_DIR.parent
CACHE_ENV = "EDGE_COMPRESS_CACHE"
# (name on the target, file on the host, required)
BUNDLE_SOURCES = (
    ("agent.py", AGENT_DIR / "agent.py", True),
    ("runtimes.py", AGENT_DIR / "runtimes.py", True),
    ("energy.py", RUNNERS_DIR / "energy.py", False),
    ("throttle.py", RUNNERS_DIR / "throttle.py", False),
)
MODEL_SUFFIXES = (".onnx", ".tflite")


# ---------------------------------------------------------------------------------------------
# hashing and the bundle

_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, memoized by (path, size, mtime) so big models are hashed once."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _hash_lock:
        _hash_cache[key] = digest
    return digest


@dataclass(frozen=True)
class Bundle:
    """The agent files to push, and the hash of them all (names the cache directory)."""

    files: tuple[tuple[str, Path], ...]
    sha256: str

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for _, p in self.files)


def agent_bundle() -> Bundle:
    """The agent files present in this installation; energy.py / throttle.py are optional."""
    files = []
    h = hashlib.sha256()
    for name, path, required in BUNDLE_SOURCES:
        if not path.is_file():
            if required:
                raise FileNotFoundError(f"the agent file {path} is missing from this installation")
            continue
        files.append((name, path))
        h.update(f"{name}\0{sha256_file(path)}\n".encode())
    return Bundle(tuple(files), h.hexdigest())


def host_cache_dir() -> Path:
    """Per-user cache on the host: ``$EDGE_COMPRESS_CACHE``, else ``$XDG_CACHE_HOME/edge-compress``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "edge-compress"


def stage_bundle(cache_dir: Path | None = None) -> Path:
    """Copy the bundle into ``<cache>/agent/<sha256>/`` once (atomically); returns that directory."""
    bundle = agent_bundle()
    dest = (cache_dir or host_cache_dir()) / "agent" / bundle.sha256
    if (dest / "agent.py").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".stage-", dir=dest.parent))
    for name, path in bundle.files:
        shutil.copyfile(path, tmp / name)
    try:
        os.rename(tmp, dest)
    except OSError:  # another process staged it first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# ---------------------------------------------------------------------------------------------
# the request


def check_request(req: RunRequest) -> str | None:
    """A one-sentence usage error for a request that cannot run anywhere, else None."""
    if not os.path.isfile(req.model_path):
        return f"model file {req.model_path} does not exist."
    if model_suffix(req.model_path) not in MODEL_SUFFIXES:
        return f"model file {req.model_path} is neither .onnx nor .tflite."
    for field in ("inputs_npz", "accuracy_npz"):
        value = getattr(req, field)
        if value is not None and not os.path.isfile(value):
            return f"{field.replace('_npz', '')} file {value} does not exist."
    if req.core_mask is not None and not re.fullmatch(r"(0[xX])?[0-9a-fA-F]+", req.core_mask):
        return f"core mask {req.core_mask!r} is not hexadecimal (e.g. f0)."
    if req.threads < 1 or req.min_count < 1 or req.warmup < 0 or req.max_count < 1:
        return "threads, min_count and max_count must be at least 1 and warmup at least 0."
    if req.min_duration_s < 0 or req.timeout_s <= 0:
        return "min_duration_s must be >= 0 and timeout_s > 0."
    if req.paired_model_path is not None:
        if not os.path.isfile(req.paired_model_path):
            return f"paired model file {req.paired_model_path} does not exist."
        if model_suffix(req.paired_model_path) != model_suffix(req.model_path):
            return "a paired A/B run needs two models of the same format."
        if req.paired_rounds < 1 or req.paired_first_round < 0:
            return "a paired A/B run needs at least one round (paired_rounds >= 1)."
    return None


def power_model(profile: str | None) -> dict[str, Any] | None:
    """The profile's power model for energy estimates: name, idle_w, active_w, cores_total (W).

    Raises:
        edge_compress.errors.UserError: the profile is unknown or invalid.
    """
    if not profile:
        return None
    from edge_compress.profiles import load_profile

    p = load_profile(profile)
    return {"name": p.name, "idle_w": p.power.idle_w, "active_w": p.power.active_w, "cores_total": p.cores}


def agent_request(
    req: RunRequest,
    *,
    model: str,
    inputs_npz: str | None = None,
    accuracy_npz: str | None = None,
    power: dict[str, Any] | None = None,
    paired_model: str | None = None,
) -> dict[str, Any]:
    """The JSON the agent reads; paths are the ones on the target."""
    paired = (
        {
            "model": paired_model,
            "rounds": req.paired_rounds,
            "first_round": req.paired_first_round,
            "warmup": req.paired_warmup,
        }
        if paired_model
        else None
    )
    return {
        "paired": paired,
        "model": model,
        "runtime": req.runtime,
        "threads": req.threads,
        "core_mask": req.core_mask,
        "warmup": req.warmup,
        "min_count": req.min_count,
        "min_duration_s": req.min_duration_s,
        "max_count": req.max_count,
        "inputs_npz": inputs_npz,
        "accuracy_npz": accuracy_npz,
        "seed": req.seed,
        "detect_throttle": req.detect_throttle,
        "cooldown_s": req.cooldown_s,
        "energy": req.energy,
        "power": power if req.energy else None,
        "label": req.label,
        "reference_every": req.reference_every,
    }


# ---------------------------------------------------------------------------------------------
# the result


def find_result(stdout: str) -> dict[str, Any] | None:
    """The agent's JSON result: the last stdout line that is a JSON object with ``ok``."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "ok" in data:
            return data
    return None


def parse_agent_output(
    stdout: str, stderr: str, exit_code: int | None, *, target: str, model_path: str, python: str = "python3"
) -> Measurement:
    """Turn the agent's output into a Measurement; no result at all becomes an 'agent' failure."""
    data = find_result(stdout)
    if data is None:
        return Measurement.failure(target, model_path, no_result_message(stderr, exit_code, python), "agent")
    data = {k: v for k, v in data.items() if k not in ("target", "model_path")}
    data.setdefault("extra", {})
    known = {"ok", "error", "error_kind", "extra"}
    if not data["ok"]:
        data = {k: v for k, v in data.items() if k in known}
        if stderr.strip():
            data["extra"]["stderr_tail"] = stderr.strip()[-2000:]
    return Measurement.from_json({**data, "target": target, "model_path": model_path})


def no_result_message(stderr: str, exit_code: int | None, python: str) -> str:
    """One sentence for an agent that printed no JSON (python missing, killed, crashed)."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    last = lines[-1][:300] if lines else "no output"
    if exit_code == 127 or "not found" in last or "No such file" in last:
        return f"the target cannot run {python!r} ({last}); set 'python' for this target in the inventory."
    if exit_code is not None and exit_code < 0 or exit_code in (137, 143):
        return f"the agent was killed on the target (exit code {exit_code}): {last}."
    return f"the agent printed no result (exit code {exit_code}): {last}."


# ---------------------------------------------------------------------------------------------
# one run per device at a time


class DeviceBusy(Exception):
    """Another run held the device for longer than the wait allowed."""


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def lock_file(key: str, cache_dir: Path | None = None) -> Path:
    """The lock file of a device key under ``<cache>/locks/`` (name sanitized, hash-suffixed)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:60]
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return (cache_dir or host_cache_dir()) / "locks" / f"{safe}-{digest}.lock"


@contextlib.contextmanager
def device_lock(key: str, timeout_s: float = 600.0, cache_dir: Path | None = None) -> Iterator[None]:
    """Hold the device ``key`` exclusively: a threading lock plus an ``fcntl.flock`` on a file.

    ``key`` identifies the device (e.g. ``ssh:user@host:port``); different devices run in
    parallel. Waits up to ``timeout_s`` seconds, then raises :class:`DeviceBusy`.
    """
    import fcntl

    with _thread_locks_guard:
        tlock = _thread_locks.setdefault(key, threading.Lock())
    deadline = time.monotonic() + timeout_s
    if not tlock.acquire(timeout=max(0.0, timeout_s)):
        raise DeviceBusy(f"device {key} is busy with another run in this process")
    try:
        path = lock_file(key, cache_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise DeviceBusy(
                            f"device {key} is busy with a run of another process ({path})"
                        ) from None
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)  # releases the flock
    finally:
        tlock.release()
