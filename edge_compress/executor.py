"""Executors run nightly cells and yield their outcomes as they complete.

A cell job and its outcome are plain, picklable dataclasses (:class:`CellJob`, :class:`CellOutcome`)
and the work is a top-level function ``fn(job) -> outcome``, so an executor only schedules:

- :class:`LocalPoolExecutor` (default): one worker thread per target; each target runs its
  cells one at a time (one job per device), different targets in parallel.
- :class:`edge_compress.lab.executor.RayExecutor` (``--cluster ray://HOST:PORT | HOST:PORT | auto``):
  a device lab of many hosts on Ray. Each cell is a task requesting its target's resource
  (``target:<name>: 1``, advertised by the one lab node reaching the device), so Ray routes it
  and runs one cell per device at a time; artifacts travel through the object store.

Executors never raise for a failing cell: an exception escaping ``fn`` becomes an outcome made by
``on_error(job, exc)`` (an infrastructure failure), and the other cells go on.

An executor may also prepare the artifacts (``prepare_artifacts(fn, calls, on_start)``, yielding
``(index, result or exception)`` as they finish): the Ray executor compiles anywhere in the
cluster. Without it, nightly prepares them here one by one (:func:`prepare_sequentially`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class CellJob:
    """Everything needed to measure and judge one cell, with no live objects (picklable)."""

    run_id: int
    cell: dict[str, Any]  # CellSpec.to_json()
    target: dict[str, Any]  # inventory entry incl. name (runners.inventory.Target fields)
    profile: str | None
    artifact_id: str | None
    model_file: str | None
    artifact_bytes: int | None
    request: dict[str, Any]  # RunRequest fields (without model_path)
    thresholds: dict[str, Any]
    interleave: dict[str, Any]
    budget: dict[str, float]  # profile budgets merged with the cell's own
    idle_w: float | None = None
    baseline: dict[str, Any] | None = None  # see nightly.baseline_ref
    compile_error: str | None = None

    @property
    def key(self) -> str:
        return str(self.cell["key"])

    @property
    def target_name(self) -> str:
        return str(self.target["name"])


@dataclass
class CellOutcome:
    """A finished cell: its measurement, paired re-measurements and verdict (all JSON-able)."""

    run_id: int
    cell: dict[str, Any]
    artifact_id: str | None
    target: dict[str, Any]  # name, profile, transport
    measurement: dict[str, Any]  # Measurement.to_json()
    verdict: dict[str, Any]  # CellVerdict.to_json()
    interleaved: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return str(self.cell["key"])


Work = Callable[[CellJob], CellOutcome]
OnError = Callable[[CellJob, BaseException], CellOutcome]


class Executor(Protocol):
    def run(self, jobs: Iterable[CellJob], fn: Work, on_error: OnError) -> Iterator[CellOutcome]:
        """Run ``fn`` on every job; yield outcomes in completion order."""
        ...


class LocalPoolExecutor:
    """One thread per target, cells of a target in order; yields outcomes as they complete."""

    def __init__(self, max_targets: int | None = None) -> None:
        self.max_targets = max_targets  # None: every target at once

    def run(self, jobs: Iterable[CellJob], fn: Work, on_error: OnError) -> Iterator[CellOutcome]:
        by_target: dict[str, list[CellJob]] = {}
        for job in jobs:
            by_target.setdefault(job.target_name, []).append(job)
        if not by_target:
            return
        done: queue.Queue[CellOutcome | None] = queue.Queue()
        stop = threading.Event()
        names = list(by_target)
        gate = threading.Semaphore(self.max_targets or len(names))

        def worker(name: str) -> None:
            with gate:
                for job in by_target[name]:
                    if stop.is_set():
                        break
                    try:
                        out = fn(job)
                    except BaseException as e:  # noqa: BLE001 - a cell never takes the others down
                        out = on_error(job, e)
                    done.put(out)
            done.put(None)

        threads = [threading.Thread(target=worker, args=(n,), name=f"cells:{n}", daemon=True) for n in names]
        for t in threads:
            t.start()
        finished = 0
        try:
            while finished < len(threads):
                item = done.get()
                if item is None:
                    finished += 1
                else:
                    yield item
        finally:
            stop.set()  # the consumer stopped early (error or interrupt): no new cells start


def prepare_sequentially(
    fn: Callable[..., Any], calls: list[tuple], on_start: Callable[[int], None] | None = None
) -> Iterator[tuple[int, Any]]:
    """``fn(*call)`` for each call here, in order: ``(index, result or the exception raised)``."""
    for i, call in enumerate(calls):
        if on_start is not None:
            on_start(i)
        try:
            out = fn(*call)
        except Exception as e:  # noqa: BLE001 - one failing artifact does not stop the others
            out = e
        yield i, out


def get_executor(name: str = "local", **options: Any) -> Executor:
    """The executor called ``name``: ``local`` (the default pool), or a Ray cluster address
    (``auto``, ``ray://HOST:PORT``, ``HOST:PORT``) for the device lab (the ``lab`` extra);
    ``options`` go to the Ray executor (e.g. ``wait_for_targets_s``)."""
    from edge_compress.errors import UserError

    if name == "local":
        return LocalPoolExecutor()
    if name == "auto" or name.startswith("ray://") or ":" in name:
        from edge_compress.lab.executor import RayExecutor

        return RayExecutor(name, **options)
    raise UserError(
        f"unknown executor {name!r}; use local, or a lab cluster: auto, ray://HOST:PORT or HOST:PORT."
    )
