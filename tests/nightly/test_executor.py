"""LocalPoolExecutor: targets in parallel, one job per device at a time, failures contained."""

from __future__ import annotations

import pickle
import threading
from collections import Counter

from edge_compress.executor import CellJob, CellOutcome, LocalPoolExecutor


def job(target: str, i: int) -> CellJob:
    return CellJob(
        run_id=1,
        cell={"key": f"m|v|b|{target}|{i}"},
        target={"name": target, "transport": "local"},
        profile="host",
        artifact_id="a",
        model_file="/x.onnx",
        artifact_bytes=1,
        request={},
        thresholds={},
        interleave={},
        budget={},
    )


def outcome(j: CellJob, verdict: str = "ok") -> CellOutcome:
    return CellOutcome(
        j.run_id,
        j.cell,
        j.artifact_id,
        {"name": j.target_name},
        {"ok": verdict == "ok"},
        {"verdict": verdict},
    )


def test_targets_run_in_parallel_one_job_per_device() -> None:
    targets = ["a", "b", "c"]
    barrier = threading.Barrier(
        len(targets), timeout=30
    )  # passes only if all targets' first cells run at once
    lock = threading.Lock()
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    first = set()

    def work(j: CellJob) -> CellOutcome:
        with lock:
            running[j.target_name] += 1
            peak[j.target_name] = max(peak[j.target_name], running[j.target_name])
            is_first = j.target_name not in first
            first.add(j.target_name)
        if is_first:
            barrier.wait()
        with lock:
            running[j.target_name] -= 1
        return outcome(j)

    jobs = [job(t, i) for i in range(4) for t in targets]
    outs = list(LocalPoolExecutor().run(jobs, work, lambda j, e: outcome(j, "infra_failure")))
    assert sorted(o.key for o in outs) == sorted(j.key for j in jobs)
    assert set(peak.values()) == {1}
    # per target, the cells complete in submission order
    for t in targets:
        assert [o.key for o in outs if o.target["name"] == t] == [f"m|v|b|{t}|{i}" for i in range(4)]


def test_a_crashing_cell_does_not_stop_the_others() -> None:
    def work(j: CellJob) -> CellOutcome:
        if j.key.endswith("|1"):
            raise RuntimeError("boom")
        return outcome(j)

    outs = list(
        LocalPoolExecutor().run(
            [job("a", i) for i in range(3)], work, lambda j, e: outcome(j, "infra_failure")
        )
    )
    assert [o.verdict["verdict"] for o in outs] == ["ok", "infra_failure", "ok"]


def test_jobs_and_outcomes_are_plain_picklable_data() -> None:
    j = job("a", 0)
    assert pickle.loads(pickle.dumps(j)) == j
    o = outcome(j)
    assert pickle.loads(pickle.dumps(o)) == o
