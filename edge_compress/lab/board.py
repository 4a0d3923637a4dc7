"""The live state of one nightly run on the cluster, for ``edge-compress lab status``.

A :class:`LabBoard` is a small Ray actor on the head (named ``nightly:<run>:<token>`` in the
``edge-compress`` namespace) that lives as long as the nightly driver: the driver tells it the
cells it queued and the ones that finished, each cell task tells it where and when it started.
Calls are one-way (nobody waits on them), so the board never slows a cell down.
"""

from __future__ import annotations

import time
from typing import Any

BOARD_PREFIX = "nightly:"


class LabBoard:
    def __init__(self, suite: str, run_id: int, driver: str) -> None:
        self.info = {"suite": suite, "run_id": run_id, "driver": driver, "started_unix": time.time()}
        self.queued: dict[str, str] = {}  # cell key -> target
        self.running: dict[str, dict[str, Any]] = {}
        self.finished_keys: set[str] = set()
        self.failed = 0

    def queue(self, items: list[tuple[str, str]]) -> None:
        for key, target in items:
            if key not in self.finished_keys:
                self.queued[key] = target

    def started(self, key: str, target: str, node_id: str, node: str, t: float) -> None:
        if key in self.finished_keys:  # the driver's "finished" overtook the task's "started"
            return
        self.queued.pop(key, None)
        self.running[key] = {"key": key, "target": target, "node_id": node_id, "node": node, "since_unix": t}

    def finished(self, key: str, verdict: str) -> None:
        self.queued.pop(key, None)
        self.running.pop(key, None)
        self.finished_keys.add(key)
        if verdict == "infra_failure":
            self.failed += 1

    def where(self, key: str) -> dict[str, Any] | None:
        """The node a running cell was started on (None if it never started)."""
        return self.running.get(key)

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        return {
            **self.info,
            "queued": len(self.queued),
            "queued_cells": [{"key": k, "target": t} for k, t in sorted(self.queued.items())],
            "running": [
                {**r, "for_s": round(now - r["since_unix"], 1)}
                for r in sorted(self.running.values(), key=lambda r: r["key"])
            ],
            "done": len(self.finished_keys),
            "failed": self.failed,
        }
