"""Where a target's cost model lives: the result store, and ``<cache>/costmodels/<target>.json``.

* The result store (:class:`edge_compress.store.ResultStore`, tables ``costmodel_observations`` and
  ``costmodel_fits``) holds every observation of a target and every refit of its coefficients.
  :func:`learn_from_run` is the nightly hook: after a run, each new ``ok`` measurement of an ONNX
  file on an onnxruntime target becomes an observation of that target's cost model (its fused
  kernels read from the measured file), the model is refitted on all observations and the fit is
  stored, so the coefficients improve as nightly runs accumulate.
* The file (``costmodels/<target>.json``, coefficients *and* observations, written atomically) is
  the per-machine copy ``select`` keeps when no result store is in use.

:func:`load_costmodel` prefers the result store's model of a target, then the file's, then an
uncalibrated (profile roofline) model.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_compress.errors import UserError

if TYPE_CHECKING:
    from edge_compress.costmodel import CostModel, Kernel
    from edge_compress.profiles import DeviceProfile

MAX_OBSERVATIONS = 20_000  # oldest dropped first beyond this (file store)


def costmodel_dir() -> Path:
    from edge_compress.zoo.data import cache_dir

    return cache_dir() / "costmodels"


def costmodel_path(target: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.=-]", "_", target)
    return costmodel_dir() / f"{safe}.json"


def _check_profile(doc: dict[str, Any], profile: DeviceProfile, target: Any, where: str) -> None:
    if doc.get("profile") not in (None, profile.name):
        raise UserError(
            f"{where}: the cost model of target {target!r} was calibrated for profile {doc.get('profile')!r}, "
            f"not {profile.name!r}; pass --profile {doc.get('profile')}."
        )


def load_costmodel(
    target: str | None,
    profile: DeviceProfile,
    *,
    threads: int = 1,
    runtime: str = "onnxruntime",
    path: str | os.PathLike[str] | None = None,
    store: Any = None,
) -> CostModel:
    """The stored cost model of ``target`` (the result store's, else the file's); an uncalibrated
    (profile-only) one if there is none.

    Raises:
        UserError: the stored model is unreadable or belongs to another profile.
    """
    from edge_compress.costmodel import CostModel

    if target is None and path is None:
        return CostModel(profile, target="(none)", runtime=runtime, threads=threads)
    if store is not None and target is not None and path is None:
        cm = load_from_store(store, target, profile)
        if cm is not None:
            cm.refit_if_stale()
            return cm
    p = Path(path) if path is not None else costmodel_path(str(target))
    if not p.exists():
        return CostModel(profile, target=str(target), runtime=runtime, threads=threads)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{p}: cannot read the stored cost model ({e}); delete it to recalibrate.") from None
    _check_profile(data, profile, target, str(p))
    cm = CostModel.from_json(data, profile)
    if target is not None:
        cm.target = str(target)
    cm.refit_if_stale()
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


# ---------------------------------------------------------------------------------------------
# the result store


def open_store(url_or_path: str | os.PathLike[str] | None = None) -> Any:
    """The result store at ``url_or_path`` (a path or SQLAlchemy URL); without one, the default
    store (``$EDGE_COMPRESS_STORE``, else ``./edge-compress.sqlite``) only when it already exists.
    None when there is none to use."""
    from edge_compress.store import DEFAULT_PATH, ResultStore

    if url_or_path is None:
        env = os.environ.get("EDGE_COMPRESS_STORE")
        if env and "://" in env:
            return ResultStore(env)
        candidate = Path(env or DEFAULT_PATH)
        if not candidate.is_file():
            return None
        return ResultStore(candidate)
    return ResultStore(url_or_path)


def publish_to_store(cm: CostModel, store: Any, *, run_id: int | None = None, source: str = "") -> bool:
    """Record ``cm`` (new observations and its current fit) in a result store; False when the store
    has no cost-model tables."""
    put = getattr(store, "put_costmodel", None)
    if put is None:
        return False
    put(cm.target, cm.to_json(), run_id=run_id, source=source or None)
    return True


def load_from_store(store: Any, target: str, profile: DeviceProfile) -> CostModel | None:
    """The cost model a result store holds for ``target``, or None (nothing stored)."""
    from edge_compress.costmodel import CostModel

    get = getattr(store, "get_costmodel", None)
    if get is None:
        return None
    doc = get(target)
    if not doc:
        return None
    _check_profile(doc, profile, target, f"result store {getattr(store, 'url', '')}")
    cm = CostModel.from_json(doc, profile)
    cm.target = target
    return cm


def costmodel_for_profile(profile: DeviceProfile, store: Any = None) -> tuple[CostModel, str]:
    """The cost model to plan for ``profile`` with no target named: the calibrated model of the
    target (in the result store, else in the file store) with the most observations among those of
    this profile, else the uncalibrated roofline. Returns (model, where it came from)."""
    from edge_compress.costmodel import CostModel

    best: tuple[int, CostModel, str] | None = None
    if store is not None and hasattr(store, "costmodel_fits"):
        latest: dict[str, dict[str, Any]] = {}
        for row in store.costmodel_fits():
            latest[row["target"]] = row
        for target, row in latest.items():
            if row.get("profile") == profile.name and (best is None or (row["observations"] or 0) > best[0]):
                cm = load_from_store(store, target, profile)
                if cm is not None and cm.calibrated:
                    best = (int(row["observations"] or 0), cm, f"target {target!r} (result store)")
    if best is None and costmodel_dir().is_dir():
        for p in sorted(costmodel_dir().glob("*.json")):
            try:
                doc = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            n = len(doc.get("observations") or [])
            if doc.get("profile") == profile.name and (best is None or n > best[0]):
                cm = CostModel.from_json(doc, profile)
                cm.refit_if_stale()
                if cm.calibrated:
                    best = (n, cm, f"target {cm.target!r} ({p.name})")
    if best is None:
        return CostModel(profile, target="(none)"), "uncalibrated: profile roofline"
    return best[1], best[2]


# ---------------------------------------------------------------------------------------------
# the nightly hook


def learn_from_run(
    store: Any,
    run_id: int,
    profiles: dict[str, str | None] | None = None,
    *,
    progress: Callable[..., None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Feed the ``ok`` cell measurements of ``run_id`` to their targets' cost models and refit.

    Each measurement of an ONNX file run by onnxruntime (with the model's thread count) that the
    target's model has not observed yet becomes an observation: the fused kernels of the measured
    file (:func:`edge_compress.costmodel_onnx.kernels_from_onnx`), its median / p99 latency, peak RSS
    and energy. Every target with new observations is refitted on all of them and the fit stored
    (``costmodel_fits``). ``profiles``: target -> device profile (default: the one the store
    recorded for the target). Returns per target ``{"new", "observations", "skipped", "fit"}``.
    """
    from edge_compress.profiles import load_profile

    rows = [
        m
        for m in store.measurements(run_id=run_id, kind="cell")
        if m.get("status") == "ok" and m.get("median_ms")
    ]
    by_target: dict[str, list[dict[str, Any]]] = {}
    for m in rows:
        by_target.setdefault(str(m["target"]), []).append(m)
    out: dict[str, dict[str, Any]] = {}
    kernel_cache: dict[str, list[Kernel] | str] = {}
    for target, ms in by_target.items():
        skipped: dict[str, int] = {}
        prof_name = (profiles or {}).get(target) or _stored_profile(store, ms)
        if not prof_name:
            out[target] = {"new": 0, "skipped": {"no device profile for the target": len(ms)}}
            continue
        profile = load_profile(prof_name)
        cm = load_costmodel(target, profile, store=store)
        seen = store.costmodel_measurement_ids(target)
        new = 0
        for m in ms:
            why = _unusable(m, cm, seen)
            if why is None:
                ks = _artifact_kernels(store, m.get("artifact_id"), kernel_cache)
                if isinstance(ks, str):
                    why = ks
                else:
                    obs = cm.observe(
                        ks,
                        latency_ms=float(m["median_ms"]),
                        p99_ms=m.get("p99_ms"),
                        label=f"{m.get('model')}/{m.get('variant')}",
                        source=f"nightly run {run_id}",
                    )
                    obs["rss_bytes"] = m.get("peak_rss_bytes")
                    obs["energy_j"] = m.get("energy_j")
                    obs["energy_measured"] = bool(m.get("energy_measured"))
                    obs["measurement_id"] = int(m["id"])
                    obs["run_id"] = run_id
                    new += 1
                    continue
            skipped[why] = skipped.get(why, 0) + 1
        info: dict[str, Any] = {"new": new, "observations": len(cm.observations), "skipped": skipped}
        if new:
            info["fit"] = cm.fit()
            publish_to_store(cm, store, run_id=run_id, source=f"nightly run {run_id}")
            if progress is not None:
                cv = info["fit"].get("cv_mape_pct")
                progress(
                    "note",
                    message=f"cost model of {target}: {new} new measurement(s), refitted on "
                    f"{len(cm.observations)} ({info['fit'].get('form')}"
                    + (f", cross-validated error {cv:.1f}%" if cv is not None else "")
                    + ")",
                )
        out[target] = info
    return out


def _stored_profile(store: Any, ms: list[dict[str, Any]]) -> str | None:
    from sqlalchemy import select

    from edge_compress.store import targets

    ids = {m["target_id"] for m in ms if m.get("target_id") is not None}
    if not ids:
        return None
    with store.engine.connect() as conn:
        found = [
            p for p in conn.execute(select(targets.c.profile).where(targets.c.id.in_(ids))).scalars() if p
        ]
    return found[0] if found else None


def _unusable(m: dict[str, Any], cm: CostModel, seen: set[int]) -> str | None:
    if int(m["id"]) in seen:
        return "already observed"
    if (m.get("runtime") or "onnxruntime") != cm.runtime:
        return f"runtime {m.get('runtime')} (the model is for {cm.runtime})"
    if m.get("threads") not in (None, cm.threads):
        return f"{m.get('threads')} threads (the model is for {cm.threads})"
    if m.get("throttled"):
        return "throttled"
    if not m.get("artifact_id"):
        return "no artifact"
    return None


def _artifact_kernels(store: Any, artifact_id: str | None, cache: dict[str, Any]) -> list[Kernel] | str:
    """The fused kernels of the ONNX file of an artifact, or why there are none."""
    from edge_compress.costmodel_onnx import kernels_from_onnx

    if artifact_id in cache:
        return cache[artifact_id]  # type: ignore[index]
    art = store.get_artifact(artifact_id) if artifact_id else None
    result: list[Kernel] | str
    if art is None or not art.path:
        result = "artifact not in the store"
    else:
        from edge_compress.nightly import choose_file

        try:  # the file a nightly run measures with onnxruntime
            path: Path | None = Path(art.path) / choose_file(art.manifest or {}, "onnx")[0]
        except UserError:
            path = None
        if path is None or not path.is_file():
            result = "no ONNX file in the artifact"
        else:
            try:
                result = kernels_from_onnx(path)
            except ValueError as e:
                result = f"kernels unreadable ({str(e)[:80]})"
    cache[str(artifact_id)] = result
    return result


def after_nightly_run(
    store: Any,
    run_id: int,
    profiles: dict[str, str | None] | None = None,
    *,
    progress: Callable[..., None] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`learn_from_run` for the end of a nightly run: a failure to learn is reported as a
    note and never fails the run (its measurements are already stored; the next run retries)."""
    try:
        return learn_from_run(store, run_id, profiles, progress=progress)
    except Exception as e:  # noqa: BLE001 - the cost model is a by-product of the run
        if progress is not None:
            progress("note", message=f"cost models not updated: {type(e).__name__}: {str(e)[:200]}")
        return {}


# ---------------------------------------------------------------------------------------------
# the planner's latency / energy budgets


def planner_constraints(
    profile: DeviceProfile, graph: Any, budget: dict[str, float] | None, *, store: Any = None
) -> tuple[list[Any], list[str]]:
    """The latency / energy budgets of a compile (``budget``; None: the profile's) as constraints
    of the bit allocation, priced by the best stored cost model of the profile
    (:func:`costmodel_for_profile`; the default result store is consulted when it exists), with
    notes saying which. ([], []) when no such budget is set."""
    from edge_compress.costmodel import PLANNER_BUDGETS, budget_constraints
    from edge_compress.costmodel_export import float_compute_layers

    eff = profile.budgets.active() if budget is None else budget
    if not any(k in PLANNER_BUDGETS for k in eff):
        return [], []
    opened = None
    if store is None:
        try:
            store = opened = open_store()
        except UserError:
            store = None  # an unreadable default store: plan from the file store
    try:
        cm, where = costmodel_for_profile(profile, store)
    finally:
        if opened is not None:
            opened.close()
    constraints, notes = budget_constraints(cm, graph, eff, float_compute=float_compute_layers(graph))
    return constraints, [f"{n} ({where})" for n in notes]
