"""Where a target's cost model lives: ``<cache>/costmodels/<target>.json`` (+ the ResultStore hook).

The file holds the fitted coefficients *and* every observation they were fitted on, so a refit
after new measurements uses all of them (:func:`record_and_refit`). Writes are atomic.

ResultStore: :func:`publish_to_store` / :func:`load_from_store` use the store's
``put_costmodel(target, document)`` / ``get_costmodel(target)`` methods when
``edge_compress.store.ResultStore`` offers them; until it does they return False / None and the
file store is the only one. Call them after a calibration or a ``select`` run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_compress.errors import UserError

if TYPE_CHECKING:
    from edge_compress.costmodel import CostModel
    from edge_compress.profiles import DeviceProfile

MAX_OBSERVATIONS = 20_000  # oldest dropped first beyond this


def costmodel_dir() -> Path:
    from edge_compress.zoo.data import cache_dir

    return cache_dir() / "costmodels"


def costmodel_path(target: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.=-]", "_", target)
    return costmodel_dir() / f"{safe}.json"


def load_costmodel(
    target: str | None,
    profile: DeviceProfile,
    *,
    threads: int = 1,
    runtime: str = "onnxruntime",
    path: str | os.PathLike[str] | None = None,
) -> CostModel:
    """The stored cost model of ``target``; an uncalibrated (profile-only) one if there is none.

    Raises:
        UserError: the stored file is unreadable or belongs to another profile.
    """
    from edge_compress.costmodel import CostModel

    if target is None and path is None:
        return CostModel(profile, target="(none)", runtime=runtime, threads=threads)
    p = Path(path) if path is not None else costmodel_path(str(target))
    if not p.exists():
        return CostModel(profile, target=str(target), runtime=runtime, threads=threads)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{p}: cannot read the stored cost model ({e}); delete it to recalibrate.") from None
    if data.get("profile") not in (None, profile.name):
        raise UserError(
            f"{p}: the cost model of target {target!r} was calibrated for profile {data.get('profile')!r}, "
            f"not {profile.name!r}; pass --profile {data.get('profile')} or delete the file."
        )
    cm = CostModel.from_json(data, profile)
    if target is not None:
        cm.target = str(target)
    return cm


def save_costmodel(cm: CostModel, path: str | os.PathLike[str] | None = None) -> Path:
    """Write ``cm`` (coefficients and observations) atomically; returns the file."""
    p = Path(path) if path is not None else costmodel_path(cm.target)
    p.parent.mkdir(parents=True, exist_ok=True)
    if len(cm.observations) > MAX_OBSERVATIONS:
        cm.observations = cm.observations[-MAX_OBSERVATIONS:]
    tmp = p.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(cm.to_json(), sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, p)
    return p


def record_and_refit(cm: CostModel, save: bool = True, **fit_kw: Any) -> dict[str, Any]:
    """Refit ``cm`` on all its observations (after :meth:`CostModel.observe`) and store it."""
    info = cm.fit(**fit_kw)
    if save:
        save_costmodel(cm)
    return info


def publish_to_store(cm: CostModel, store: Any) -> bool:
    """Put the cost model document in a ResultStore that supports it; False when it does not (yet)."""
    put = getattr(store, "put_costmodel", None)
    if put is None:
        return False
    put(cm.target, cm.to_json())
    return True


def load_from_store(store: Any, target: str, profile: DeviceProfile) -> CostModel | None:
    """The cost model a ResultStore holds for ``target``, or None (no hook, or nothing stored)."""
    from edge_compress.costmodel import CostModel

    get = getattr(store, "get_costmodel", None)
    if get is None:
        return None
    doc = get(target)
    return CostModel.from_json(doc, profile) if doc else None
