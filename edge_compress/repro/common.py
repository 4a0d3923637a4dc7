"""What every claim experiment shares: the run context, the result record, figure helpers."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOLDS = "holds"
PARTIAL = "partially holds"
FAILS = "does not hold"
ERROR = "not reproduced (the experiment failed)"
VERDICTS = (HOLDS, PARTIAL, FAILS, ERROR)


@dataclass
class Context:
    """How to run: ``quick`` (smaller epochs / subsets / trials), where figures go, the seed."""

    quick: bool
    fig_dir: Path
    seed: int = 0
    log: Callable[[str], None] = print

    def fig_path(self, name: str) -> Path:
        self.fig_dir.mkdir(parents=True, exist_ok=True)
        return self.fig_dir / name

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


@dataclass
class ClaimResult:
    """One claim's outcome. ``numbers`` is JSON-ready; ``figures`` are file names in the figure dir."""

    number: int
    title: str
    seed_quote: str  # the seed's sentence (Chinese), verbatim
    claim: str  # what the seed claims, in English, made testable
    method: str  # markdown: what was run, on which model / data
    verdict: str  # holds | partially holds | does not hold
    verdict_reason: str  # markdown: why, with the deciding numbers
    numbers: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    table: list[dict[str, Any]] = field(default_factory=list)  # rows of the result table (markdown)
    notes: list[str] = field(default_factory=list)  # library gaps, caveats
    wall_s: float = 0.0
    cpu_s: float = 0.0
    quick: bool = False
    date: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"claim {self.number}: verdict {self.verdict!r} is not one of {VERDICTS}.")

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "seed_quote": self.seed_quote,
            "claim": self.claim,
            "method": self.method,
            "verdict": self.verdict,
            "verdict_reason": self.verdict_reason,
            "numbers": jsonable(self.numbers),
            "figures": self.figures,
            "table": jsonable(self.table),
            "notes": self.notes,
            "wall_s": round(self.wall_s, 2),
            "cpu_s": round(self.cpu_s, 2),
            "quick": self.quick,
            "date": self.date,
        }

    @classmethod
    def from_json(cls, number: int, d: dict[str, Any]) -> ClaimResult:
        return cls(
            number,
            d["title"],
            d.get("seed_quote", ""),
            d["claim"],
            d.get("method", ""),
            d["verdict"],
            d["verdict_reason"],
            d.get("numbers", {}),
            list(d.get("figures", [])),
            list(d.get("table", [])),
            list(d.get("notes", [])),
            float(d.get("wall_s", 0.0)),
            float(d.get("cpu_s", 0.0)),
            bool(d.get("quick", False)),
            d.get("date", ""),
        )


def jsonable(v: Any) -> Any:
    """Plain JSON types (numpy scalars / arrays to Python; NaN / inf to None)."""
    import numpy as np

    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


class Timer:
    """Wall and process CPU time of a block (CPU time is what a quiet machine would take, roughly)."""

    def __enter__(self) -> Timer:
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def torch_setup() -> None:
    """One torch thread (the machine is shared), deterministic seeds are set by each experiment."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def figure(nrows: int, ncols: int, width: float = 11.0, height: float = 4.2):
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3})
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height * nrows), squeeze=False)
    return fig, axes


def save(fig: Any, ctx: Context, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(ctx.fig_path(name), dpi=110)
    plt.close(fig)
    return name


def failed(number: int, exc: BaseException) -> ClaimResult:
    """The record of an experiment that raised: the other claims still run and are reported."""
    import traceback

    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return ClaimResult(
        number,
        f"Claim {number}",
        "",
        "",
        "",
        ERROR,
        f"The experiment raised {type(exc).__name__}{at}: {msg}. Rerun it with `--only {number}` once that is fixed.",
        {"error": f"{type(exc).__name__}: {msg}", "traceback": traceback.format_exception(exc)[-6:]},
    )


def binom_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))
