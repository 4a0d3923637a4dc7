"""Artifacts: a directory of runnable model files with ``plan.json`` and ``manifest.json``.

The id is a content hash (Olive-style) of everything that determines the result: the input model
(weights hash + architecture; after pruning / factorization those of the transformed model), the
plan digest (with the kept channels and ranks), the profile JSON, the export options, the tool
versions with a fingerprint of this package's code, and the pruning / factorization settings. Compiling the same request again is a cache
hit found *before* any work, through the ``request_key`` stored in each manifest (a hash of the
inputs known before planning: model, data, profile, budget, method, options, versions and the
resolved transform settings; planning, pruning and fine-tuning are seeded, so deterministic).

An artifact is built in a temporary directory beside its final place and renamed into place
only when complete (manifest last), so a failed compile never leaves a partial artifact that
looks complete. ``manifest.json``::

    {"id", "created", "request_key", "model": {...}, "profile": {...}, "plan": "plan.json",
     "plan_digest", "method", "budget",
     "files": {"<filename>": {"sha256", "bytes", "format", "variant", "planned_bytes"}},
     "layers": {"<filename>": {"<layer>": {"weight_bits", "act_bits", "op"}}},
     "parity": {"<filename>": {...}}, "accuracy": {...}, "predicted": {...},
     "fallbacks": [{"layer", "format", "variant", "planned", "actual", "reason"}], "notes": [...],
     "transforms": ["prune", "factorize"],   # the stages that ran, each with its record:
     "prune": {"method", "flops_budget", "budget_source", "channel_multiple", "finetune_epochs",
               "flops": {"before", "after", "ratio", "budget"}, "params": {"before", "after", "ratio"},
               "accuracy": {"original", "before_finetune", "after_finetune"},
               "channels": {"<layer>": {"before", "after"}}, "kept": {"<layer>": [...]},
               "skipped": {"<group>": "<reason>"}, "rounded": {"<group>": [before, after]},
               "trajectory": [...], "notes": [...]},
     "factorize": {"mode", "value", "how", "finetune_epochs",
                   "layers": {"<layer>": {"rank", "full_rank", "how", "into", "weight_params", "macs"}},
                   "flops": {...}, "params": {...}, "accuracy": {"before_finetune", "after_finetune"},
                   "skipped": {"<layer>": "<reason>"}},
     "export_options": {...}, "versions": {...}, "stages_s": {...}}

``accuracy`` holds ``fp32`` (the input model) and, after pruning / factorization, ``transformed``
(the fine-tuned float model that was quantized; ``predicted`` is relative to it).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_compress.errors import UserError

MANIFEST = "manifest.json"
PLAN = "plan.json"
FILE_KEYS = ("sha256", "bytes", "format", "variant", "planned_bytes")
_TOOLS = {
    "edge_compress": "edge-compress",
    "torch": "torch",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "ai_edge_quantizer": "ai-edge-quantizer",
    "litert_torch": "litert-torch",
    "ai_edge_litert": "ai-edge-litert",
    "numpy": "numpy",
}


def tool_versions() -> dict[str, str]:
    """Installed versions of every tool whose behaviour changes the exported bytes, and a
    fingerprint of this package's own code (``edge_compress_code``): a version number does not
    change with every fix, and an artifact compiled by older code must not be a cache hit."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for key, dist in _TOOLS.items():
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = "missing"
    out["edge_compress_code"] = code_fingerprint()
    return out


# The parts of the package that cannot change an artifact's bytes (command line, lab scheduling,
# result store); everything else counts.
_NOT_IN_FINGERPRINT = (
    "cli",
    "lab",
    "migrations",
    "repro",
    "store",
    "nightly",
    "regression",
    "report",
    "suite",
    "executor",
    "quickstart",
    "selection",
)


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 (first 16 hex digits) of this package's source and data files, by relative path."""
    return package_fingerprint(Path(__file__).resolve().parent)


def package_fingerprint(root: Path) -> str:
    """The fingerprint of the package tree at ``root`` (see :func:`code_fingerprint`)."""
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if not f.is_file() or f.suffix not in (".py", ".json", ".yaml") or "__pycache__" in rel.parts:
            continue
        if rel.parts[0] in _NOT_IN_FINGERPRINT or rel.stem in _NOT_IN_FINGERPRINT:
            continue
        h.update(rel.as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def stable_hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def artifact_id(
    model: dict[str, Any],
    plan_digest: str,
    profile: dict[str, Any],
    export_options: dict[str, Any],
    versions: dict[str, str],
    transforms: dict[str, Any] | None = None,
) -> str:
    """sha256 of (model weights hash + architecture, plan digest, profile JSON, options, versions,
    and the pruning / factorization settings when any ran).

    ``model`` is the model that was exported: after pruning or factorization, the hashes of the
    transformed model (the plan digest then also covers the kept channels and ranks)."""
    key: dict[str, Any] = {
        "model": {k: model.get(k) for k in ("weights_sha256", "arch_sha256")},
        "plan": plan_digest,
        "profile": profile,
        "export": export_options,
        "versions": versions,
    }
    if transforms:  # absent otherwise: ids of artifacts compiled without transforms do not change
        key["transforms"] = transforms
    return stable_hash(key)


@dataclass
class Artifact:
    """A compiled artifact directory (or the cached one a request resolved to)."""

    path: Path
    manifest: dict[str, Any]
    cached: bool = False
    stages_s: dict[str, float] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    def file(self, fmt: str, variant: str | None = None) -> Path:
        for name, d in self.manifest["files"].items():
            if d["format"] == fmt and (variant is None or d["variant"] == variant):
                return self.path / name
        raise UserError(
            f"{self.path}: no {fmt} file{' of variant ' + variant if variant else ''} in the artifact."
        )


def load_artifact(path: str | Path, *, verify: bool = True) -> Artifact:
    """Read an artifact directory; with ``verify``, check every file's size and sha256.

    Raises:
        UserError: not an artifact, unreadable manifest, missing or modified file.
    """
    from edge_compress.export.base import sha256_file

    p = Path(path)
    if p.is_file() and p.name == MANIFEST:
        p = p.parent
    mf = p / MANIFEST
    if not p.is_dir():
        raise UserError(f"{p}: no such artifact directory.")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{p}: not an artifact directory (no {MANIFEST}).") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{mf}: cannot read the manifest ({e}).") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or "id" not in manifest:
        raise UserError(f"{mf}: not an edge-compress manifest (no 'id' / 'files').")
    if verify:
        for name, d in files.items():
            f = p / name
            if not f.is_file():
                raise UserError(f"{mf}: lists {name}, which is missing from the artifact directory.")
            if f.stat().st_size != d.get("bytes") or sha256_file(f) != d.get("sha256"):
                raise UserError(
                    f"{f}: size or SHA-256 differs from the manifest (modified after compiling?); recompile with --force."
                )
    return Artifact(p, manifest)


def find_cached(out_dir: str | Path, request_key: str) -> Artifact | None:
    """The complete, intact artifact under ``out_dir`` that answered ``request_key`` before."""
    root = Path(out_dir)
    if not root.is_dir():
        return None
    for mf in sorted(root.glob(f"*/{MANIFEST}")):
        if mf.parent.name.startswith("."):
            continue
        try:
            data = json.loads(mf.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("request_key") == request_key:
            try:
                art = load_artifact(mf.parent, verify=True)
            except UserError:
                continue  # damaged: rebuild
            art.cached = True
            return art
    return None


class ArtifactBuilder:
    """Build an artifact in ``<out_dir>/.tmp-<token>`` and move it into place on :meth:`commit`.

    Use as a context manager: leaving the block without committing (an exception) deletes the
    temporary directory, so nothing partial is left behind.
    """

    def __init__(self, out_dir: str | Path, token: str) -> None:
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{self.out_dir}: cannot create the artifact directory ({e.strerror}).") from None
        self.tmp = self.out_dir / f".tmp-{token[:16]}-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self.committed: Path | None = None

    def __enter__(self) -> ArtifactBuilder:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.committed is None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, name: str) -> Path:
        return self.tmp / name

    def commit(self, name: str, manifest: dict[str, Any], *, replace: bool = False) -> Path:
        """Write the manifest (last) and rename the directory to ``<out_dir>/<name>``."""
        from edge_compress.export.base import sha256_file

        for fname, d in manifest["files"].items():
            f = self.tmp / fname
            d.update({"sha256": sha256_file(f), "bytes": f.stat().st_size})
            missing = [k for k in FILE_KEYS if k not in d]
            if missing:
                raise ValueError(f"manifest entry {fname} lacks {missing}")
        tmp_mf = self.tmp / (MANIFEST + ".tmp")
        tmp_mf.write_text(
            json.dumps(manifest, indent=2, sort_keys=True, default=_json_default) + "\n", encoding="utf-8"
        )
        os.replace(tmp_mf, self.tmp / MANIFEST)
        final = self.out_dir / name
        old = None
        if final.exists():
            if not replace:
                raise UserError(f"{final} already exists; use --force to rebuild it.")
            old = self.out_dir / f".old-{name}-{os.getpid()}"
            os.replace(final, old)
        os.replace(self.tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.committed = final
        return final


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _json_default(o: Any) -> Any:
    with contextlib.suppress(Exception):
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and (o != o or o in (float("inf"), float("-inf"))):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
