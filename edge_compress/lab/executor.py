"""The Ray executor: nightly cells on a device lab of many hosts.

Each device gets a worker for the run: a Ray actor (``tasks.DeviceWorker``) requesting exactly
its target's resource (``target:<name>: 1``), which only the node reaching that device
advertises. Ray places it on that host, and while it lives no other cell can use the device;
its cells are calls on it, run one at a time in one process, so the device's open SSH
connection and warm agent carry from cell to cell. The executor keeps at most ``depth`` cells
of a target in Ray (one running, the next one queued at its worker) and the rest in its own
queue, so that a device that leaves the cluster costs only its own cells:

- a cell running on a node that dies fails with Ray's actor / node error; it is recorded as an
  infrastructure failure of that cell (with the node it ran on), measured again on the next run;
- when a target's resource disappears from the cluster (its node is gone), its waiting cells are
  failed the same way (its worker is ended), and the suite goes on with the other devices;
- a target no node advertises (after ``wait_for_targets_s``) or advertised by several nodes
  fails its cells the same way, without running them.

Device workers start before the measure phase: the nightly calls :meth:`RayExecutor.ready`,
which waits until every device's worker is up with the cell's imports, its connection open and
its warm agent started (sent early by :meth:`RayExecutor.warm_up`, so it overlaps with
compilation), so the first cell on a device does not pay for any of it. They end with the
measure phase (:meth:`RayExecutor.run`) or the executor, which frees the devices.

Compilation (:meth:`RayExecutor.prepare_artifacts`) runs as CPU tasks anywhere in the cluster;
artifacts come back to the head's artifact directory, and reach device hosts through the object
store into each node's content-hash cache (:mod:`edge_compress.lab.tasks`). Results are yielded
to the driver (the head), which writes them into its ResultStore as before.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from edge_compress.executor import CellJob, CellOutcome, OnError, Work
from edge_compress.lab.resources import target_resource

Call = tuple  # the arguments of nightly.prepare_artifact
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class LabError(RuntimeError):
    """A cell the lab could not measure: its device's node left, or no node reaches the device."""


class RayExecutor:
    """Run nightly cells (and compilations) on a Ray cluster; see the module doc."""

    def __init__(
        self,
        address: str = "auto",
        *,
        wait_for_targets_s: float = 60.0,
        poll_s: float = 0.25,
        depth: int = 2,
        cancel_grace_s: float = 10.0,
        label: str = "",
        warm_timeout_s: float = 120.0,
    ) -> None:
        from edge_compress.lab.cluster import check_cluster_address

        self.address = check_cluster_address(address)
        self.wait_for_targets_s = wait_for_targets_s
        self.poll_s = poll_s
        self.depth = max(1, depth)
        self.cancel_grace_s = cancel_grace_s
        self.label = label
        self.warm_timeout_s = warm_timeout_s
        self.compiled_on: dict[str, str] = {}  # artifact id -> node name that compiled it
        self.notes: list[str] = []
        self._ray: Any = None
        self._owns = False
        self._shipped: dict[tuple, Any] = {}
        self._waited: set[str] = set()
        self._warming: dict[str, Any] = {}  # target -> ref of its warm-up call
        self._devices: dict[str, Any] = {}  # target -> its DeviceWorker actor (holds the device)
        self._ready_board: tuple[int, Any] | None = None  # (run id, board) made by ready()
        self.warmed: list[dict[str, Any]] = []  # where and when each device's worker got ready

    # -- connection ------------------------------------------------------------------------------

    def connect(self) -> Any:
        if self._ray is None:
            from edge_compress.lab.cluster import connect

            self._ray, self._owns = connect(self.address)
        return self._ray

    def close(self) -> None:
        self._shipped.clear()
        self._warming.clear()
        self._release_devices()
        if self._ready_board is not None:
            self._kill(self._ready_board[1])
            self._ready_board = None
        if self._ray is not None and self._owns:
            self._ray.shutdown()
        self._ray, self._owns = None, False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- targets ---------------------------------------------------------------------------------

    def target_capacity(self, names: Iterable[str]) -> dict[str, float]:
        """How many nodes advertise each target now (1 is right; 0 unreachable; >1 a conflict)."""
        total = self.connect().cluster_resources()
        return {n: float(total.get(target_resource(n), 0.0)) for n in names}

    def wait_for_targets(self, names: Iterable[str]) -> dict[str, float]:
        """Wait up to ``wait_for_targets_s`` for every target to be advertised (nodes joining);
        only once per target name and executor."""
        names = sorted(set(names))
        wait = self.wait_for_targets_s if set(names) - self._waited else 0.0
        deadline = time.monotonic() + wait
        while True:
            cap = self.target_capacity(names)
            if all(v >= 1 for v in cap.values()) or time.monotonic() >= deadline:
                self._waited.update(names)
                return cap
            time.sleep(0.5)

    def lab_inventory(self, base: Any = None, wait_for: Iterable[str] = ()) -> Any:
        """``base`` (an Inventory) plus every target the lab nodes advertise, described by the
        nodes themselves (name, transport, host, profile; never keys). A node's own entry wins."""
        ray = self.connect()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from edge_compress.lab import tasks
        from edge_compress.lab.resources import targets_of
        from runners.inventory import Inventory, Target

        if wait_for:
            self.wait_for_targets(wait_for)
        describe = ray.remote(tasks.describe_task)
        refs: dict[Any, dict[str, Any]] = {}
        for node in ray.nodes():
            names = targets_of(node.get("Resources") or {}) if node.get("Alive") else []
            if names:
                strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                ref = describe.options(num_cpus=0, max_retries=0, scheduling_strategy=strategy).remote(names)
                refs[ref] = node
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=max(self.wait_for_targets_s, 30.0))
        targets = dict(base.targets) if base is not None else {}
        for ref in late:
            self.notes.append(f"lab node {_node_label(refs[ref])} did not describe its targets in time")
            ray.cancel(ref, force=True)
        for ref in ready:
            try:
                desc = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - one broken node does not stop the suite
                self.notes.append(
                    f"lab node {_node_label(refs[ref])} could not describe its targets: {_line(e)}"
                )
                continue
            for name in desc["missing"]:
                self.notes.append(
                    f"lab node {desc['node']['node']} advertises {name!r} but has no such target"
                )
            for name, entry in desc["targets"].items():
                targets[name] = Target(**entry)
        if wait_for:
            self.warm_up(wait_for)
        return Inventory(targets=targets, path=getattr(base, "path", None))

    def warm_up(self, names: Iterable[str]) -> None:
        """Start a Ray worker for each device now (on its node, importing what a cell needs), so
        that it is ready when the device's first cell comes. Ray starts worker processes per job
        (a nightly run), and on a busy lab host starting one and importing takes seconds: sent
        early, this overlaps with loading the suite and compiling; :meth:`ready` waits for it."""

        names = [n for n in sorted(set(names)) if n not in self._warming and n not in self._devices]
        if not names:
            return
        for n, cap in self.target_capacity(names).items():
            if cap == 1:
                self._warming[n] = self._device(n).warm.remote()

    def _device(self, n: str) -> Any:
        """The device's worker actor (created on first use): it holds the device's resource, so
        Ray places it on the node that reaches the device and no other cell can use the device
        while it lives; its calls run one at a time."""
        from edge_compress.lab import tasks

        actor = self._devices.get(n)
        if actor is None:
            ray = self.connect()
            actor = (
                ray.remote(tasks.DeviceWorker)
                .options(
                    resources={target_resource(n): 1},
                    num_cpus=0,
                    max_restarts=0,
                    max_task_retries=0,
                    max_concurrency=1,
                )
                .remote(n)
            )
            self._devices[n] = actor
        return actor

    def _release_devices(self, names: Iterable[str] | None = None) -> None:
        """End device workers (all by default), which frees their devices for other drivers."""
        for n in list(self._devices if names is None else names):
            actor = self._devices.pop(n, None)
            if actor is not None and self._ray is not None:
                try:
                    self._ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone with its node
                    pass

    def ready(self, jobs: Iterable[CellJob]) -> list[dict[str, Any]]:
        """Get the lab ready for ``jobs`` before the nightly's measure phase: wait (up to
        ``warm_timeout_s``) until each device's node has a worker ready for its cells
        (:meth:`warm_up`, sent now for devices not warmed yet) and the run's status board is up,
        so this time is part of the run, not of its first cells. A device whose warm-up fails or
        is late only gets a note: its cells run (or fail) as usual."""
        jobs = list(jobs)
        names = sorted({j.target_name for j in jobs})
        self.warm_up(names)
        refs = {self._warming[n]: n for n in names if n in self._warming}
        ray = self.connect()
        board = self._board(jobs) if jobs else None  # its actor starts while the workers do
        if board is not None:
            self._ready_board = (jobs[0].run_id, board)
        t0 = time.time()
        ready, late = (
            ray.wait(list(refs), num_returns=len(refs), timeout=self.warm_timeout_s) if refs else ([], [])
        )
        out = []
        for ref in ready:
            try:
                rec = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - the device's cells report their own failure
                self.notes.append(f"warm-up for target {refs[ref]!r} failed: {_line(e)}")
                continue
            out.append({**rec, "waited_s": round(max(0.0, rec["finished_unix"] - t0), 3)})
        for ref in late:
            self.notes.append(
                f"no worker ready for target {refs[ref]!r} after {self.warm_timeout_s:g} s; "
                "its first cell waits for one"
            )
        for n in refs.values():
            self._warming.pop(n, None)
        if board is not None:
            try:
                ray.get(board.snapshot.remote(), timeout=max(5.0, self.warm_timeout_s - (time.time() - t0)))
            except Exception:  # noqa: BLE001 - the board only feeds `lab status`
                pass
        self.warmed += sorted(out, key=lambda r: r["target"])
        return out

    # -- compilation -----------------------------------------------------------------------------

    def prepare_artifacts(
        self, fn: Callable[..., Any], calls: list[Call], on_start: Callable[[int], None] | None = None
    ) -> Iterator[tuple[int, Any]]:
        """``fn(*call)`` for every call, yielding ``(index, PreparedArtifact | exception)`` as they
        finish. Compilations run as CPU tasks anywhere in the cluster; as-is copies, models given
        as ``module:factory`` and a cluster without CPUs compile here."""
        from edge_compress.lab import tasks

        ray = self.connect()
        remote = ray.remote(tasks.compile_task)
        has_cpu = self.connect().cluster_resources().get("CPU", 0.0) >= 1
        pending: dict[Any, int] = {}
        here: list[int] = []
        for i, call in enumerate(calls):
            files = self._compile_files(call) if has_cpu else None
            if files is None:
                here.append(i)
                continue
            if on_start:
                on_start(i)
            opts = {"num_cpus": 1, "max_retries": 2, "retry_exceptions": False, "name": f"compile:{call[0]}"}
            pending[remote.options(**opts).remote(fn, call[:4] + (None,) + call[5:], files)] = i
        for i in here:
            if on_start:
                on_start(i)
            try:
                out = fn(*calls[i])
            except Exception as e:  # noqa: BLE001 - reported per artifact, like the local path
                out = e
            yield i, out
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    out = self._receive(ray.get(ref), Path(calls[i][4]))
                except Exception as e:  # noqa: BLE001
                    out = _cause(e)
                yield i, out
            if not ready and ray.cluster_resources().get("CPU", 0.0) < 1:  # the CPU nodes left
                for ref, i in list(pending.items()):
                    ray.cancel(ref, force=True)
                    del pending[ref]
                    try:
                        out = fn(*calls[i])
                    except Exception as e:  # noqa: BLE001
                        out = e
                    yield i, out

    def _compile_files(self, call: Call) -> dict[str, Any] | None:
        """Files a remote compilation needs, or None to compile on the head."""
        from edge_compress.suite import RAW_METHOD

        model_ref, settings, _budget, _profile, _out, _fmt, data = call
        if settings.method == RAW_METHOD:
            return None  # a copy of the file: nothing to compute
        files: dict[str, Any] = {}
        if Path(model_ref).is_file():
            files["model"] = self._ship(model_ref)
        elif _FACTORY.match(model_ref):
            return None  # the module may exist only here
        if data and Path(data).is_file():
            files["data"] = self._ship(data)
        return files

    def _receive(self, res: dict[str, Any], out_dir: Path) -> Any:
        """Write a remotely prepared artifact into the head's artifact directory (once)."""
        from edge_compress.nightly import PreparedArtifact

        out_dir.mkdir(parents=True, exist_ok=True)
        final = out_dir / res["dirname"]
        present = (final / "manifest.json").is_file()
        if not present:
            tmp = out_dir / f".tmp-lab-{res['dirname']}-{uuid.uuid4().hex[:8]}"
            for rel, data in res["files"].items():
                p = tmp / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
            try:
                os.replace(tmp, final)
            except OSError:  # made meanwhile by someone else
                shutil.rmtree(tmp, ignore_errors=True)
        fields = dict(res["prepared"])
        fields.update(
            directory=str(final),
            model_file=str(final / res["model_file"]),
            cached=bool(fields.get("cached")) or present,
        )
        art = PreparedArtifact(**fields)
        self.compiled_on[art.id] = str(res["node"]["node"])
        return art

    # -- cells -----------------------------------------------------------------------------------

    def run(self, jobs: Iterable[CellJob], fn: Work, on_error: OnError) -> Iterator[CellOutcome]:
        """Run every job on its device's worker; yield outcomes in completion order."""

        jobs = list(jobs)
        if not jobs:
            return
        ray = self.connect()
        names = sorted({j.target_name for j in jobs})
        capacity = self.wait_for_targets(names)
        pre = self._ready_board
        self._ready_board = None
        board = pre[1] if pre is not None and pre[0] == jobs[0].run_id else self._board(jobs)
        if pre is not None and board is not pre[1]:
            self._kill(pre[1])
        queues: dict[str, deque[CellJob]] = {n: deque(j for j in jobs if j.target_name == n) for n in names}
        inflight: dict[Any, CellJob] = {}
        submitted: dict[Any, float] = {}  # ref -> when the driver handed the cell to Ray
        count: Counter[str] = Counter()
        lost: dict[Any, float] = {}  # ref -> when its target was seen gone

        def fail(job: CellJob, exc: BaseException, where: dict[str, Any] | None = None) -> CellOutcome:
            out = on_error(job, exc)
            if where:
                extra = out.measurement.get("extra")
                if not isinstance(extra, dict):
                    extra = out.measurement["extra"] = {}
                extra["lab"] = {**where, "lost": True}
            self._tell(board, "finished", job.key, str(out.verdict.get("verdict")))
            return out

        def submit(n: str) -> None:
            while queues.get(n) and count[n] < self.depth:
                job = queues[n].popleft()
                ref = (
                    self._device(n)
                    .run_cell.options(name=f"cell:{job.key}")
                    .remote(fn, job, self._files(job), board)
                )
                inflight[ref], submitted[ref] = job, time.time()
                count[n] += 1

        try:
            for n in names:
                if capacity[n] < 1:
                    why = f"no lab node advertises target {n!r} (start `edge-compress lab join` on its host)"
                elif capacity[n] > 1:
                    why = f"target {n!r} is advertised by {int(capacity[n])} lab nodes; device names must be unique"
                else:
                    continue
                for job in queues.pop(n):
                    yield fail(job, LabError(why))  # never submitted
            for n in list(queues):
                submit(n)
            last_check = time.monotonic()
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=self.poll_s)
                if ready:
                    rest = [r for r in inflight if r not in set(ready)]
                    if rest:
                        ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                for ref in ready:
                    job = inflight.pop(ref)
                    lost.pop(ref, None)
                    count[job.target_name] -= 1
                    try:
                        out = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - becomes this cell's infrastructure failure
                        exc, where = self._explain(e, job, board)
                        out = fail(job, exc, where)
                    else:
                        lab = (out.measurement.get("extra") or {}).get("lab")
                        if isinstance(lab, dict):
                            lab["submitted_unix"] = submitted.get(ref)
                        self._tell(board, "finished", job.key, str(out.verdict.get("verdict")))
                    submitted.pop(ref, None)
                    yield out
                    submit(job.target_name)
                if time.monotonic() - last_check >= max(self.poll_s, 0.5):
                    last_check = time.monotonic()
                    yield from self._drop_lost_targets(queues, inflight, count, lost, fail, board)
        finally:
            # the consumer stopped early (or the run ended): nothing new starts, the devices are freed
            self._release_devices(names)
            self._kill(board)
            self._shipped.clear()

    def _drop_lost_targets(
        self,
        queues: dict[str, deque[CellJob]],
        inflight: dict[Any, CellJob],
        count: Counter[str],
        lost: dict[Any, float],
        fail: Callable[..., CellOutcome],
        board: Any,
    ) -> Iterator[CellOutcome]:
        """Cells of targets whose node left the cluster: the queued ones fail now, the ones waiting
        in Ray are cancelled; a cell that had started keeps its chance to deliver its result
        (or Ray's node error) for ``cancel_grace_s``, then it is cancelled and failed too."""
        active = {j.target_name for j in inflight.values()} | {n for n, q in queues.items() if q}
        if not active:
            return
        capacity = self.target_capacity(active)
        now = time.monotonic()
        for n in sorted(active):
            if capacity[n] >= 1:
                continue
            for job in queues.pop(n, deque()):
                yield fail(job, LabError(_never_ran(n)))
            for ref, job in list(inflight.items()):
                if job.target_name != n:
                    continue
                first = ref not in lost
                lost.setdefault(ref, now)
                if first and self._where(board, job.key) is not None and self.cancel_grace_s > 0:
                    continue  # it started on the lost node: wait for its result or Ray's error
                if first or now - lost[ref] > self.cancel_grace_s:
                    self._release_devices([n])  # its calls fail with the actor's death
                if now - lost[ref] > 2 * self.cancel_grace_s + 5:  # not even the cancel came back
                    inflight.pop(ref)
                    lost.pop(ref)
                    count[n] -= 1
                    exc, where = self._explain(LabError(_never_ran(n)), job, board)
                    yield fail(job, exc, where)

    def _where(self, board: Any, key: str) -> dict[str, Any] | None:
        """Where the cell started (its node), if the board saw it start."""
        if board is None:
            return None
        try:
            return self.connect().get(board.where.remote(key), timeout=5)
        except Exception:  # noqa: BLE001
            return None

    def _explain(
        self, e: BaseException, job: CellJob, board: Any
    ) -> tuple[BaseException, dict[str, Any] | None]:
        """A Ray failure as the cell's error: the task's own exception, or the node that was lost."""
        import ray.exceptions as rx

        if isinstance(e, rx.RayTaskError) and not isinstance(e, rx.TaskCancelledError):
            return _cause(e), None
        where = self._where(board, job.key)
        if where is None:
            m = re.search(r"node ID: ([0-9a-f]+)", str(e))
            if m and not isinstance(e, (rx.TaskCancelledError, LabError)):
                where = {"node_id": m.group(1)}
        if where is None:
            return LabError(_never_ran(job.target_name)), None
        node = where.get("node") or str(where.get("node_id", ""))[:12]
        msg = (
            f"lab node {node} left the cluster while measuring this cell ({type(e).__name__}); "
            "it is measured again on the next run"
        )
        return LabError(msg), where

    # -- files -----------------------------------------------------------------------------------

    def _files(self, job: CellJob) -> dict[str, Any]:
        files: dict[str, Any] = {}
        if job.model_file and Path(job.model_file).is_file():
            files["model"] = self._ship(job.model_file)
        base = (job.baseline or {}).get("model_file")
        if base and Path(base).is_file():
            files["baseline"] = self._ship(base)
        acc = job.request.get("accuracy_npz")
        if acc and Path(acc).is_file():
            files["accuracy_npz"] = self._ship(acc)
        return files

    def _ship(self, path: str | os.PathLike[str]) -> Any:
        """A FileRef of ``path``: its bytes put in the object store once per run."""
        from edge_compress.lab.tasks import FileRef

        p = Path(path).resolve()
        st = p.stat()
        key = (str(p), st.st_size, st.st_mtime_ns)
        if key not in self._shipped:
            data = p.read_bytes()
            ref = self.connect().put(data)
            self._shipped[key] = FileRef(p.name, hashlib.sha256(data).hexdigest(), len(data), ref)
        return self._shipped[key]

    # -- the status board ------------------------------------------------------------------------

    def _board(self, jobs: list[CellJob]) -> Any:
        from edge_compress.lab import NAMESPACE
        from edge_compress.lab.board import BOARD_PREFIX, LabBoard

        ray = self.connect()
        run_id = jobs[0].run_id
        try:
            actor = ray.remote(LabBoard).options(
                name=f"{BOARD_PREFIX}{run_id}:{uuid.uuid4().hex[:8]}",
                namespace=NAMESPACE,
                num_cpus=0,
                resources={"node:__internal_head__": 0.001},
                max_restarts=0,
            )
            board = actor.remote(self.label, run_id, socket.gethostname())
            board.queue.remote([(j.key, j.target_name) for j in jobs])
            return board
        except Exception as e:  # noqa: BLE001 - the board only feeds `lab status`
            self.notes.append(f"no status board for this run: {_line(e)}")
            return None

    @staticmethod
    def _tell(board: Any, method: str, *args: Any) -> None:
        if board is not None:
            try:
                getattr(board, method).remote(*args)
            except Exception:  # noqa: BLE001
                pass

    def _kill(self, board: Any) -> None:
        if board is not None and self._ray is not None:
            try:
                self._ray.kill(board)
            except Exception:  # noqa: BLE001
                pass


def _cause(e: BaseException) -> BaseException:
    """The exception raised inside a task (Ray wraps it)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


def _never_ran(target: str) -> str:
    return f"the lab node reaching target {target!r} left the cluster before this cell ran"


def _line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _node_label(node: dict[str, Any]) -> str:
    return str(node.get("NodeName") or node.get("NodeID", "")[:12])
