"""A nightly regression run: compile every (model, settings, budget, profile) once, measure
every cell on its target (targets in parallel, one job per device), judge each cell against its
baseline, and write each finished cell to the result store in one transaction.

``run_nightly(suite, store=...)`` returns a :class:`NightlyResult`; its ``exit_code`` is
0 clean, 1 regression (or a budget violation when the suite sets ``fail_on_budget_violation``),
3 infrastructure failures only (no regression). ``resume=True`` finishes only the missing cells
of the suite's last unfinished run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_compress.errors import UserError
from edge_compress.executor import CellJob, CellOutcome, Executor, LocalPoolExecutor, prepare_sequentially
from edge_compress.suite import FORMATS, RAW_METHOD, CellSpec, CompileSettings, Suite

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, EXIT_INFRA = 0, 1, 2, 3
Progress = Callable[..., None]


@dataclass
class PreparedArtifact:
    id: str
    directory: str
    model_file: str
    bytes: int
    manifest: dict[str, Any]
    plan_digest: str | None
    profile: str | None
    cached: bool


@dataclass
class NightlyResult:
    run_id: int
    suite: str
    exit_code: int
    resumed: bool
    accepted: bool
    store: str
    revision: str | None
    cells: list[dict[str, Any]] = field(default_factory=list)  # CellVerdict JSON, every cell of the run
    counts: dict[str, int] = field(default_factory=dict)
    measured_now: int = 0
    compiled: dict[str, int] = field(default_factory=dict)  # {"hits": n, "compiled": n, "failed": n}
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def exit_code_for(verdicts: list[dict[str, Any]], fail_on_budget_violation: bool = False) -> int:
    names = [v.get("verdict") for v in verdicts]
    if "regression" in names or (fail_on_budget_violation and "budget_violation" in names):
        return EXIT_REGRESSION
    if "infra_failure" in names:
        return EXIT_INFRA
    return EXIT_OK


def code_revision() -> str | None:
    """``$EDGE_COMPRESS_REVISION``, else ``git describe --always --tags`` of this checkout, with
    ``-dirty`` when tracked files changed (read-only: optional git locks are disabled)."""
    env = os.environ.get("EDGE_COMPRESS_REVISION")
    if env:
        return env
    root = Path(__file__).resolve().parent.parent
    genv = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False, env=genv
            )
        except (OSError, subprocess.TimeoutExpired):
            return None

    out = git("describe", "--always", "--tags")
    if out is None or out.returncode != 0 or not out.stdout.strip():
        return None
    rev = out.stdout.strip()
    status = git("status", "--porcelain", "--untracked-files=no")
    if status is not None and status.returncode == 0 and status.stdout.strip():
        rev += "-dirty"
    return rev


# ---------------------------------------------------------------------------------------------
# the run


def run_nightly(
    suite: Suite,
    *,
    store: Any,
    inventory: Any = None,
    resume: bool = False,
    accept: bool = False,
    artifacts_dir: str | os.PathLike[str] | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> NightlyResult:
    """Run (or resume) the suite; every finished cell is in ``store`` as soon as it completes."""
    from runners.inventory import Inventory, load_inventory

    t0 = time.monotonic()
    say = progress or (lambda *a, **k: None)
    inv = inventory if isinstance(inventory, Inventory) else load_inventory(inventory)
    targets = {name: inv.get(name) for name in suite.targets}
    profiles = {n: t.profile or ("host" if t.transport == "local" else None) for n, t in targets.items()}
    _check_profiles(suite, profiles)
    revision = code_revision()

    run = store.last_unfinished_run(suite.name) if resume else None
    if run is not None:
        run_id, done = int(run["id"]), store.completed_cells(int(run["id"]))
        say("resume", run_id=run_id, done=len(done))
    else:
        if resume:
            say("note", message=f"no unfinished run of suite {suite.name!r}: starting a new run")
        run_id, done = (
            store.start_run(
                suite.name,
                suite_digest=suite.digest(),
                revision=revision,
                settings=suite.model_dump(mode="json"),
            ),
            set(),
        )
        say("start", run_id=run_id)
    cells = [c for c in suite.cells() if c.key not in done]
    out_dir = Path(artifacts_dir) if artifacts_dir else default_artifacts_dir(suite, store)
    executor = executor or LocalPoolExecutor()
    prepared, compile_errors, compiled = _prepare_all(suite, cells, profiles, out_dir, store, say, executor)
    jobs = [
        _job(suite, run_id, c, targets[c.target], profiles[c.target], prepared, compile_errors, store)
        for c in cells
    ]
    ready = getattr(executor, "ready", None)  # the lab: a warm worker on each device's node
    if ready is not None and jobs:
        ready(jobs)
    say("measure", total=len(jobs), targets=len({j.target_name for j in jobs}))
    measured = 0
    for outcome in executor.run(jobs, run_cell, failed_outcome):
        store.record_cell(
            run_id,
            outcome.cell,
            outcome.measurement,
            artifact_id=outcome.artifact_id,
            target=outcome.target,
            verdict=outcome.verdict,
            interleaved=outcome.interleaved,
        )
        measured += 1
        say("cell", key=outcome.key, verdict=outcome.verdict)
    all_verdicts = store.verdicts(run_id)
    code = exit_code_for(all_verdicts, suite.fail_on_budget_violation)
    missing = {c.key for c in suite.cells()} - {v["key"] for v in all_verdicts}
    if missing:  # cannot happen unless the executor dropped cells; keep the run resumable
        raise RuntimeError(f"{len(missing)} cell(s) were not measured: {sorted(missing)[:3]}")
    store.finish_run(run_id, exit_code=code, accept=accept)
    from edge_compress.costmodel_store import after_nightly_run

    after_nightly_run(store, run_id, profiles, progress=say)  # the targets' cost models learn
    counts: dict[str, int] = {}
    for v in all_verdicts:
        counts[v["verdict"]] = counts.get(v["verdict"], 0) + 1
    return NightlyResult(
        run_id=run_id,
        suite=suite.name,
        exit_code=code,
        resumed=run is not None,
        accepted=accept,
        store=store.url,
        revision=revision,
        cells=all_verdicts,
        counts=counts,
        measured_now=measured,
        compiled=compiled,
        wall_s=time.monotonic() - t0,
    )


def default_artifacts_dir(suite: Suite, store: Any) -> Path:
    """``artifacts_dir`` of the suite (relative to it), else beside the SQLite store, else the cache."""
    if suite.artifacts_dir:
        p = Path(suite.artifacts_dir).expanduser()
        return p if p.is_absolute() else suite.base_dir / p
    if getattr(store, "path", None) is not None:
        return Path(store.path).parent / "edge-compress-artifacts"
    from edge_compress.zoo.data import cache_dir

    return cache_dir() / "nightly-artifacts"


def _check_profiles(suite: Suite, profiles: dict[str, str | None]) -> None:
    from edge_compress.profiles import load_profile

    compiles = any(c.method != RAW_METHOD for c in suite.compile)
    for name, prof in profiles.items():
        if prof is None:
            if compiles:
                raise UserError(
                    f"target {name!r} has no 'profile' in the inventory; the suite compiles for the "
                    "target's device profile: add one (edge-compress profiles list)."
                )
            continue
        load_profile(prof)  # UserError naming the unknown profile


# ---------------------------------------------------------------------------------------------
# artifacts


def _prepare_all(
    suite: Suite,
    cells: list[CellSpec],
    profiles: dict[str, str | None],
    out_dir: Path,
    store: Any,
    say: Progress,
    executor: Executor | None = None,
) -> tuple[dict[tuple, PreparedArtifact], dict[tuple, str], dict[str, int]]:
    settings = {c.name: c for c in suite.compile}
    groups: dict[tuple, CellSpec] = {}
    for c in cells:
        groups.setdefault(_group(c, settings[c.variant], profiles[c.target]), c)
    prepared: dict[tuple, PreparedArtifact] = {}
    errors: dict[tuple, str] = {}
    stats = {"hits": 0, "compiled": 0, "failed": 0}
    items = list(groups.items())
    calls = [
        (c.model_ref, settings[c.variant], c.budget_fields, g[3], out_dir, suite.measure.format, c.data)
        for g, c in items
    ]

    def started(i: int) -> None:
        g, c = items[i]
        say("compile", index=i, total=len(items), model=c.model, variant=c.variant, profile=g[3])

    # an executor may compile elsewhere (the Ray executor: anywhere in the cluster)
    prepare_many = getattr(executor, "prepare_artifacts", None) or prepare_sequentially
    for i, art in prepare_many(prepare_artifact, calls, started):
        g, c = items[i]
        if isinstance(art, BaseException):  # one failing compile does not stop the suite
            errors[g] = f"compile failed: {_one_line(art)}"
            stats["failed"] += 1
            continue
        stats["hits" if art.cached else "compiled"] += 1
        prepared[g] = art
        from edge_compress.store import ArtifactRecord

        store.put_artifact(
            ArtifactRecord(
                art.id,
                c.model,
                art.profile,
                c.variant,
                art.plan_digest,
                art.bytes,
                art.directory,
                art.manifest,
            )
        )
    return prepared, errors, stats


def _group(c: CellSpec, s: CompileSettings, profile: str | None) -> tuple:
    return (c.model_ref, c.variant, c.budget, None if s.method == RAW_METHOD else profile, c.data)


def prepare_artifact(
    model_ref: str,
    settings: CompileSettings,
    budget: dict[str, float],
    profile: str | None,
    out_dir: Path,
    fmt: str | None = None,
    data: str | None = None,
) -> PreparedArtifact:
    """The artifact of one (model, settings, budget, profile): copied as is for ``method: none``,
    else compiled (a cache hit when nothing changed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings.method == RAW_METHOD:
        directory, cached = raw_artifact(Path(model_ref), out_dir)
    else:
        directory, cached = _compile(model_ref, settings, budget, profile, out_dir, data)
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    name, desc = choose_file(manifest, fmt)
    plan = directory / "plan.json"
    return PreparedArtifact(
        id=str(manifest.get("id") or directory.name),
        directory=str(directory),
        model_file=str(directory / name),
        bytes=int(desc.get("bytes") or (directory / name).stat().st_size),
        manifest=manifest,
        plan_digest=str(manifest.get("plan_digest") or (_sha256(plan)[:16] if plan.is_file() else ""))
        or None,
        profile=manifest.get("profile") if isinstance(manifest.get("profile"), str) else profile,
        cached=cached,
    )


def choose_file(manifest: dict[str, Any], fmt: str | None) -> tuple[str, dict[str, Any]]:
    """The model file of an artifact: of format ``fmt``, else its first ONNX file, else any."""
    files = manifest.get("files") or {}
    entries = [(n, d) for n, d in files.items() if isinstance(d, dict) and d.get("format") in FORMATS]
    for want in [fmt] if fmt else ["onnx", "tflite"]:
        for n, d in entries:
            if d.get("format") == want:
                return n, d
    if fmt:
        raise UserError(f"artifact {manifest.get('id')} has no {fmt} file (measure.format).")
    if not entries:
        raise UserError(f"artifact {manifest.get('id')} lists no .onnx/.tflite file.")
    return entries[0]


def raw_artifact(path: Path, out_dir: Path) -> tuple[Path, bool]:
    """A content-addressed copy of a model file with a manifest (so the baseline survives edits)."""
    if not path.is_file():
        raise UserError(f"{path}: no such model file.")
    digest = _sha256(path)
    directory = out_dir / f"raw-{digest[:16]}"
    manifest_path = directory / "manifest.json"
    if manifest_path.is_file() and (directory / path.name).is_file():
        return directory, True
    tmp = out_dir / f".tmp-raw-{digest[:16]}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(path, tmp / path.name)
    fmt = path.suffix.lower().lstrip(".")
    manifest = {
        "id": f"raw-{digest[:16]}",
        "profile": None,
        "method": RAW_METHOD,
        "source": str(path),
        "files": {
            path.name: {"sha256": digest, "bytes": path.stat().st_size, "format": fmt, "variant": "asis"}
        },
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    try:
        os.replace(tmp, directory)
    except OSError:  # someone else made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return directory, False


def _compile(
    model_ref: str,
    s: CompileSettings,
    budget: dict[str, float],
    profile: str | None,
    out_dir: Path,
    data: str | None = None,
) -> tuple[Path, bool]:
    """Compile through ``edge_compress.compiler`` (cache hits for unchanged inputs)."""
    try:
        from edge_compress import compiler, modelspec
    except ImportError as e:
        raise UserError(f"the compiler is not available in this installation ({e}).") from None
    from edge_compress.profiles import load_profile

    spec = modelspec.resolve_model(model_ref, data=data)
    prof = load_profile(profile or "host")
    before = {p.name for p in out_dir.iterdir()} if out_dir.is_dir() else set()
    extra: dict[str, Any] = {}
    if s.parity_threshold is not None:
        extra["parity_threshold"] = s.parity_threshold
    art = compiler.compile_model(
        spec,
        prof,
        budget=budget or None,
        method=s.method,
        formats=tuple(s.formats),
        out_dir=out_dir,
        force=s.force,
        **extra,
    )
    directory = _artifact_dir(art, out_dir)
    cached = bool(getattr(art, "cached", getattr(art, "cache_hit", directory.name in before)))
    return directory, cached


def _artifact_dir(art: Any, out_dir: Path) -> Path:
    for attr in ("directory", "path", "dir", "out_dir"):
        p = getattr(art, attr, None)
        if p is not None and (Path(p) / "manifest.json").is_file():
            return Path(p)
    aid = getattr(art, "id", None)
    if aid and (out_dir / str(aid) / "manifest.json").is_file():
        return out_dir / str(aid)
    raise UserError(f"the compiler returned an artifact without a manifest.json ({art!r}).")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _one_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:400]


# ---------------------------------------------------------------------------------------------
# jobs


def _job(
    suite: Suite,
    run_id: int,
    c: CellSpec,
    target: Any,
    profile: str | None,
    prepared: dict[tuple, PreparedArtifact],
    compile_errors: dict[tuple, str],
    store: Any,
) -> CellJob:
    settings = next(s for s in suite.compile if s.name == c.variant)
    g = _group(c, settings, profile)
    art = prepared.get(g)
    m = suite.measure
    request = {
        "runtime": m.runtime,
        "threads": m.threads,
        "core_mask": m.core_mask,
        "warmup": m.warmup,
        "min_count": m.min_count,
        "min_duration_s": m.min_duration_s,
        "max_count": m.max_count,
        "timeout_s": m.timeout_s,
        "cooldown_s": m.cooldown_s,
        "detect_throttle": m.detect_throttle,
        "energy": m.energy,
        "profile": profile,
        "accuracy_npz": c.accuracy_npz or (accuracy_npz_for(c.model_ref) if m.accuracy else None),
    }
    budget, idle_w = {}, None
    if profile:
        from edge_compress.profiles import load_profile

        p = load_profile(profile)
        budget, idle_w = p.budgets.active(), p.power.idle_w
    budget.update(c.budget_fields)
    entry = target.model_dump()
    return CellJob(
        run_id=run_id,
        cell=c.to_json(),
        target=entry,
        profile=profile,
        artifact_id=art.id if art else None,
        model_file=art.model_file if art else None,
        artifact_bytes=art.bytes if art else None,
        request=request,
        thresholds=suite.thresholds.model_dump(),
        interleave=suite.interleave.model_dump(),
        budget=budget,
        idle_w=idle_w,
        baseline=baseline_ref(store, c.key, suite, run_id, suite.measure.format),
        compile_error=compile_errors.get(g),
    )


def accuracy_npz_for(model_ref: str) -> str | None:
    """An .npz (x, y) of a zoo model's test split, cached; None for other models."""
    from edge_compress.zoo import ZOO

    spec = ZOO.get(model_ref)
    if spec is None:
        return None
    import numpy as np

    from edge_compress.zoo.data import cache_dir, load_dataset

    path = cache_dir() / "nightly" / f"{spec.dataset}-test.npz"
    if not path.is_file():
        ds = load_dataset(spec.dataset)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, x=ds.x_test, y=ds.y_test)
        os.replace(tmp, path)
    return str(path)


def agent_mode(extra: dict[str, Any] | None) -> str:
    """How the agent process of a measurement started: ``warm`` (forked from a warm agent) or
    ``cold`` (a process of its own: every measurement stored before warm agents existed)."""
    return str((extra or {}).get("agent_mode") or "cold")


def _stored_extra(row: dict[str, Any]) -> dict[str, Any]:
    try:
        doc = json.loads(row.get("extra_json") or "{}")
    except ValueError:
        return {}
    extra = doc.get("extra") if isinstance(doc, dict) else None
    return extra if isinstance(extra, dict) else {}


def baseline_ref(store: Any, key: str, suite: Suite, run_id: int, fmt: str | None) -> dict[str, Any] | None:
    """What a cell job needs of its baseline: the measurement, its raw samples, its artifact file
    (verified, for the paired re-measure) and the run-to-run history of the cell."""
    pinned = suite.baseline.run_id if suite.baseline.policy == "pinned" else None
    row = store.baseline(key, pinned_run_id=pinned, exclude_run_id=run_id)
    if row is None:
        return None
    lat, flags = store.samples(row["id"], with_flags=True)
    art = store.get_artifact(row["artifact_id"]) if row.get("artifact_id") else None
    model_file, note = None, ""
    if art is not None and art.path:
        try:
            name, desc = choose_file(art.manifest, fmt)
            p = Path(art.path) / name
            if not p.is_file():
                note = f"baseline artifact file {p} is gone"
            elif desc.get("sha256") and _sha256(p) != desc["sha256"]:
                note = f"baseline artifact file {p} was modified"
            else:
                model_file = str(p)
        except UserError as e:
            note = str(e)
    else:
        note = "baseline artifact not recorded"
    hist_rows = store.history(key, limit=max(suite.thresholds.history, 1), exclude_run_id=run_id)
    same = [h for h in hist_rows if h["artifact_id"] == row["artifact_id"]]
    hist_rows = same if len(same) >= 3 else hist_rows
    if suite.thresholds.history == 0:
        hist_rows = []
    return {
        "run_id": row["run_id"],
        "measurement_id": row["id"],
        "artifact_id": row["artifact_id"],
        "model_file": model_file,
        "model_file_note": note,
        "bytes": art.bytes if art else None,
        "samples": lat.tolist(),
        "throttled": flags.tolist(),
        "throttled_samples": row.get("throttled_samples") or 0,
        "peak_rss_bytes": row.get("peak_rss_bytes"),
        "agent_mode": agent_mode(_stored_extra(row)),
        "energy_j": row.get("energy_j"),
        "accuracy": row.get("accuracy"),
        "accuracy_samples": row.get("accuracy_samples"),
        "history": {
            "latency_median": [h["median_ms"] for h in hist_rows],
            "latency_p99": [h["p99_ms"] for h in hist_rows],
            "peak_memory": [h["peak_rss_bytes"] for h in hist_rows],
            "energy": [h["energy_j"] for h in hist_rows],
        },
    }


# ---------------------------------------------------------------------------------------------
# the work of one cell (runs in an executor worker; plain data in, plain data out)


def _target_info(job: CellJob) -> dict[str, Any]:
    return {"name": job.target_name, "profile": job.profile, "transport": job.target.get("transport")}


def failed_outcome(job: CellJob, exc: BaseException) -> CellOutcome:
    """An unexpected exception in a cell: an infrastructure failure of that cell only."""
    from runners.base import Measurement

    m = Measurement.failure(job.target_name, job.model_file or "", f"{type(exc).__name__}: {_one_line(exc)}")
    return _infra_outcome(job, m)


def _infra_outcome(job: CellJob, m: Any) -> CellOutcome:
    from edge_compress.regression import CellVerdict

    v = CellVerdict(
        job.key,
        "infra_failure",
        error=m.error,
        error_kind=m.error_kind,
        candidate_artifact_id=job.artifact_id,
    )
    if job.baseline:
        v.baseline_run_id, v.baseline_measurement_id = job.baseline["run_id"], job.baseline["measurement_id"]
    return CellOutcome(job.run_id, job.cell, job.artifact_id, _target_info(job), m.to_json(), v.to_json())


def _request(job: CellJob, model_file: str, **over: Any) -> Any:
    from runners.base import RunRequest

    fields = dict(job.request)
    fields.update(over)
    return RunRequest(model_path=model_file, label=job.key, **fields)


def run_cell(job: CellJob) -> CellOutcome:
    """Measure the cell on its target, compare with the baseline, re-measure paired if needed."""
    from runners.base import Measurement
    from runners.inventory import Target
    from runners.registry import runner_for

    if job.compile_error or not job.model_file:
        m = Measurement.failure(job.target_name, "", job.compile_error or "no artifact", "infrastructure")
        m.error_kind = "compile"  # type: ignore[assignment]
        return _infra_outcome(job, m)
    runner = runner_for(Target(**job.target))
    m = runner.run(_request(job, job.model_file))
    if not m.ok:
        return _infra_outcome(job, m)
    verdict = judge(job, m)
    interleaved: list[dict[str, Any]] = []
    suspects = [
        x.metric
        for x in verdict.metrics
        if x.suspect and x.metric in ("latency_median", "latency_p99", "peak_memory", "energy")
    ]
    il = job.interleave
    if suspects and job.baseline is not None:
        if not il.get("enabled", True):
            verdict.notes.append("paired re-measure disabled: decided on historical evidence")
        elif not job.baseline.get("model_file"):
            verdict.notes.append(
                f"paired re-measure impossible ({job.baseline.get('model_file_note')}): decided on historical evidence"
            )
        else:
            verdict, interleaved = _paired_decision(runner, job, m, verdict, suspects)
    return CellOutcome(
        job.run_id, job.cell, job.artifact_id, _target_info(job), m.to_json(), verdict.to_json(), interleaved
    )


PAIRED_METRICS = ("latency_median", "latency_p99", "peak_memory", "energy")
LOOKS = 2  # the paired evidence is examined after ``rounds`` and, if needed, after ``max_rounds``


def _paired_decision(
    runner: Any, job: CellJob, m: Any, historical: Any, suspects: list[str]
) -> tuple[Any, list[dict[str, Any]]]:
    """Re-measure baseline and candidate interleaved; decide on the paired rounds.

    One warm-up run (stored with role ``warmup``, never used) goes first. After ``rounds`` rounds,
    a metric whose effect exceeds its threshold without being significant yet gets more rounds,
    up to ``max_rounds``; when such a second look is possible both looks test at alpha / 2
    (Bonferroni), so looking twice does not raise the false-alarm rate.
    """
    il = job.interleave
    one_process = _one_process(runner, suspects)
    if one_process:
        rounds = int(il.get("block_rounds", 40))
        max_rounds = int(il.get("max_block_rounds", rounds))
        duration = il.get("block_s", 0.05)
    else:
        rounds, max_rounds = int(il.get("rounds", 6)), int(il.get("max_rounds", il.get("rounds", 6)))
        duration = il.get("min_duration_s")
    looks = LOOKS if max_rounds > rounds else 1
    items, error = _interleave(runner, job, 0, rounds, duration, warmup=True, one_process=one_process)
    if error:
        historical.notes.append(f"paired re-measure failed ({error}): decided on historical evidence")
        return historical, items
    verdict = judge(job, m, interleaved=items, suspects=suspects, looks=looks)
    if max_rounds > rounds and _undecided(verdict):
        more, error = _interleave(runner, job, rounds, max_rounds, duration, one_process=one_process)
        items += more
        if error:
            verdict.notes.append(
                f"extra paired rounds failed ({error}): decided on the first {rounds} rounds"
            )
        else:
            verdict = judge(job, m, interleaved=items, suspects=suspects, looks=looks)
    return verdict, items


def _undecided(verdict: Any) -> bool:
    """Some paired metric is above its threshold but not (yet) significant."""
    return any(
        x.metric in PAIRED_METRICS
        and x.evidence == "interleaved"
        and x.verdict == "ok"
        and x.effect_pct is not None
        and x.effect_pct > x.effective_threshold_pct
        for x in verdict.metrics
    )


def _one_process(runner: Any, suspects: list[str]) -> bool:
    """Re-measure A and B in one agent process (the runner supports it and no suspect metric
    needs a process of its own: peak memory is per process)."""
    return bool(getattr(runner, "supports_paired", False)) and "peak_memory" not in suspects


def _interleave(
    runner: Any,
    job: CellJob,
    first: int,
    last: int,
    min_duration_s: float | None,
    *,
    warmup: bool = False,
    one_process: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    """Baseline A and candidate B on the same device, rounds ``first..last-1``, A B / B A alternating.

    ``one_process``: one agent run loads both models and times the blocks back to back (no
    process start, import or model load between A and B: far less noise per round on a busy
    device); otherwise every block is a run of its own."""
    base_file = job.baseline["model_file"]  # type: ignore[index]
    base_id = job.baseline["artifact_id"]  # type: ignore[index]
    over = {"min_duration_s": min_duration_s} if min_duration_s is not None else {}
    if one_process:
        return _interleave_one_process(runner, job, first, last, over, warmup, base_file, base_id)
    out: list[dict[str, Any]] = []
    plan: list[tuple[str, int, str, str | None]] = []
    if warmup:  # the first run of a session is often slower: measured, stored, never compared
        plan.append(("warmup", -1, base_file, base_id))
    for r in range(first, last):
        pair = [("baseline", r, base_file, base_id), ("candidate", r, job.model_file, job.artifact_id)]
        plan += pair[::-1] if r % 2 else pair
    for role, r, f, aid in plan:
        mm = runner.run(_request(job, f, **over))  # type: ignore[arg-type]
        if not mm.ok:
            return out, f"{mm.error_kind}: {mm.error}"
        out.append({"role": role, "round": r, "artifact_id": aid, "measurement": mm.to_json()})
    return out, None


def _interleave_one_process(
    runner: Any,
    job: CellJob,
    first: int,
    last: int,
    over: dict[str, Any],
    warmup: bool,
    base_file: str,
    base_id: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    from runners.base import Measurement

    blocks = 2 * (last - first) + (1 if warmup else 0)
    base = _request(job, base_file, **over)
    req = dataclasses.replace(
        base,
        paired_model_path=job.model_file,
        paired_rounds=last - first,
        paired_first_round=first,
        paired_warmup=warmup,
        min_count=5,  # blocks are bounded by their duration (block_s)
        detect_throttle=False,  # blocks are short and alternate: a drift shows in both roles
        timeout_s=max(base.timeout_s, blocks * (base.min_duration_s + 5.0) + 60.0),
    )
    mm = runner.run(req)
    if not mm.ok:
        return [], f"{mm.error_kind}: {mm.error}"
    out: list[dict[str, Any]] = []
    for b in mm.extra.get("paired_blocks") or []:
        role = b["role"]
        f, aid = (job.model_file, job.artifact_id) if role == "candidate" else (base_file, base_id)
        block = Measurement.from_json({**b["result"], "target": mm.target, "model_path": f})
        block.extra["one_process"] = True
        out.append(
            {"role": role, "round": int(b["round"]), "artifact_id": aid, "measurement": block.to_json()}
        )
    if len(out) != blocks:
        return out, f"agent: {len(out)} paired blocks instead of {blocks}"
    return out, None


def judge(
    job: CellJob,
    m: Any,
    *,
    interleaved: list[dict[str, Any]] | None = None,
    suspects: list[str] | None = None,
    looks: int = 1,
) -> Any:
    """The cell verdict from the candidate measurement, the baseline and (if any) paired rounds."""
    from edge_compress import regression as rg

    th = job.thresholds
    alpha, k, trig = float(th["alpha"]), float(th["noise_k"]), float(job.interleave.get("trigger", 0.5))
    b = job.baseline
    energy_j = m.energy.joules_per_inference if m.energy else None
    cand_flags = (m.extra or {}).get("throttled_mask")
    v = rg.CellVerdict(job.key, "ok", candidate_artifact_id=job.artifact_id)
    v.throttled_excluded = {"candidate": int(m.throttled_samples or 0)}
    v.budget_violations = rg.check_budgets(
        job.budget,
        p99_ms=m.stats.p99_ms if m.stats else None,
        peak_rss_bytes=m.peak_rss_bytes,
        model_bytes=job.artifact_bytes,
        energy_j=energy_j,
        energy_measured=bool(m.energy and m.energy.measured),
        median_ms=m.stats.median_ms if m.stats else None,
        idle_w=job.idle_w,
    )
    if m.emulated:
        v.notes.append("emulated target: timings are not performance figures")
    if b is None:
        v.verdict = rg.cell_verdict_name([], v.budget_violations, has_baseline=False)
        return v
    v.baseline_run_id, v.baseline_measurement_id = b["run_id"], b["measurement_id"]
    v.baseline_artifact_id = b["artifact_id"]
    v.throttled_excluded["baseline"] = int(b.get("throttled_samples") or 0)
    hist = b.get("history") or {}
    metrics: list[rg.MetricVerdict] = []
    for metric in rg.LATENCY:
        metrics.append(
            rg.compare_latency(
                metric,
                b["samples"],
                m.latency_ms,
                threshold_pct=float(th[metric]),
                alpha=alpha,
                history=hist.get(metric) or [],
                noise_k=k,
                trigger=trig,
                baseline_throttled=b.get("throttled"),
                candidate_throttled=cand_flags,
            )
        )
    b_mode, c_mode = b.get("agent_mode") or "cold", agent_mode(m.extra)
    if b_mode != c_mode:  # a forked child's peak RSS is not a cold process's: no verdict either way
        metrics.append(
            rg.MetricVerdict(
                "peak_memory",
                "not_comparable",
                baseline=b.get("peak_rss_bytes"),
                candidate=m.peak_rss_bytes,
                threshold_pct=float(th["peak_memory"]),
                note=f"baseline measured by a {b_mode} agent, candidate by a {c_mode} one: peak RSS not "
                "comparable (accept this run to make it the baseline)",
            )
        )
    else:
        metrics.append(
            rg.compare_scalar(
                "peak_memory",
                b.get("peak_rss_bytes"),
                m.peak_rss_bytes,
                history=hist.get("peak_memory"),
                threshold_pct=float(th["peak_memory"]),
                alpha=alpha,
                noise_k=k,
                trigger=trig,
            )
        )
    metrics.append(
        rg.compare_scalar(
            "energy",
            b.get("energy_j"),
            energy_j,
            history=hist.get("energy"),
            threshold_pct=float(th["energy"]),
            alpha=alpha,
            noise_k=k,
            trigger=trig,
        )
    )
    metrics.append(
        rg.compare_accuracy(
            b.get("accuracy"),
            m.accuracy,
            n_baseline=b.get("accuracy_samples"),
            n_candidate=(m.extra or {}).get("accuracy_samples"),
            threshold_pts=float(th["accuracy"]),
            alpha=alpha,
        )
    )
    metrics.append(rg.compare_bytes(b.get("bytes"), job.artifact_bytes, threshold_pct=float(th["bytes"])))
    v.evidence = "historical"
    if interleaved:
        metrics = _paired(metrics, interleaved, th, alpha / looks, trig)
        v.evidence = "interleaved"
        v.interleaved_rounds = len({i["round"] for i in interleaved if i["round"] >= 0})
        v.notes.append(
            f"re-measured baseline and candidate interleaved ({', '.join(suspects or [])} looked changed)"
        )
    v.metrics = metrics
    v.verdict = rg.cell_verdict_name(metrics, v.budget_violations, has_baseline=True)
    return v


def _paired(
    metrics: list[Any], interleaved: list[dict[str, Any]], th: dict[str, Any], alpha: float, trig: float
) -> list[Any]:
    from edge_compress import regression as rg

    rounds: dict[int, dict[str, dict[str, Any]]] = {}
    for item in interleaved:
        rounds.setdefault(int(item["round"]), {})[item["role"]] = item["measurement"]
    complete = [r for _, r in sorted(rounds.items()) if "baseline" in r and "candidate" in r]
    out = []
    for mv in metrics:
        name = mv.metric
        if name in rg.LATENCY:
            new = rg.interleaved_latency(
                name,
                [(r["baseline"]["latency_ms"], r["candidate"]["latency_ms"]) for r in complete],
                threshold_pct=float(th[name]),
                alpha=alpha,
                trigger=trig,
            )
        elif name == "peak_memory":
            new = rg.paired_effect(
                name,
                [
                    (r["baseline"].get("peak_rss_bytes"), r["candidate"].get("peak_rss_bytes"))
                    for r in complete
                ],
                threshold_pct=float(th[name]),
                alpha=alpha,
                trigger=trig,
            )
        elif name == "energy":
            new = rg.paired_effect(
                name,
                [
                    (
                        (r["baseline"].get("energy") or {}).get("joules_per_inference"),
                        (r["candidate"].get("energy") or {}).get("joules_per_inference"),
                    )
                    for r in complete
                ],
                threshold_pct=float(th[name]),
                alpha=alpha,
                trigger=trig,
            )
        else:
            out.append(mv)
            continue
        # nothing to replace it with: the metric was not measured in the rounds (one-process paired
        # blocks have no peak RSS of their own), or there was no comparable value before either
        no_pairs = (new.n_baseline or 0) < 2
        if new.verdict == "inconclusive" and (
            no_pairs or mv.verdict in ("not_measured", "no_baseline", "not_comparable")
        ):
            out.append(mv)
            continue
        hist_note = f"historical: {mv.verdict}, {mv.effect_pct:+.1f}%" if mv.effect_pct is not None else ""
        new.note = "; ".join(x for x in (new.note, hist_note) if x)
        out.append(new)
    return out
