"""Parser of the text printed by TFLite / LiteRT's ``benchmark_model`` tool.

This file is pushed as a plain file next to the device-side agent: it imports only the Python
standard library, nothing from the ``runners`` package.

Units follow the tool: times in microseconds (``*_us``), memory in megabytes (``*_mb``);
:func:`stats_ms` converts the timing summary to milliseconds. The output format drifts across
versions, so the parser is tolerant: log prefixes (``INFO: ``, ``I tensorflow/...cc:123] ``,
glog and logcat headers) are optional, numbers may be in scientific notation (``2.95034e+06``),
fields missing from older builds (p5 / median / p95, warm-up average) are ``None``.
``benchmark_model`` prints no per-run samples, only the summary parsed here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
PREFIXES = [
    re.compile(r"^\s*(?:INFO|WARNING|WARN|ERROR|VERBOSE|DEBUG|FATAL):\s?"),  # TFLITE_LOG
    re.compile(r"^\s*[IWEF]\d{4} [\d:.]+\s+\d+\s+[\w./-]+:\d+\]\s?"),  # glog / absl
    re.compile(r"^\s*\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] [\w./-]+:\d+\]\s?"),  # TF logging
    re.compile(r"^\s*[IWEF] [\w./-]+:\d+\]\s?"),  # short glog: I tensorflow/lite/...cc:58]
    re.compile(r"^\s*\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+ [VDIWEF] [^:]*:\s?"),  # logcat
    re.compile(r"^\s*[VDIWEF]/[^(:]+\(\s*\d+\):\s?"),  # logcat brief
]
TIMING_HEADER = "Running benchmark for at least"
KEY_VALUE = re.compile(rf"(\w+)=({NUM})")
INFERENCE_KEYS = {
    "init": "init_us",
    "first inference": "first_inference_us",
    "warmup (avg)": "warmup_avg_us",
    "warmup": "warmup_avg_us",
    "inference (avg)": "inference_avg_us",
    "inference": "inference_avg_us",
    "no stats": "inference_avg_us",  # very old builds: "Average inference timings in us: ..., no stats: X"
}
MEMORY_DELTA = re.compile(
    rf"Memory footprint delta from the start of the tool \(MB\): init=({NUM}) overall=({NUM})"
)
MEMORY_PEAK_OLD = re.compile(rf"^Peak memory footprint \(MB\): init=({NUM}) overall=({NUM})")
PEAK_MONITORED = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({NUM})")
MODEL_SIZE = re.compile(rf"The input model file size \(MB\): ({NUM})")
REPLACING = re.compile(r"Replacing (\d+)(?: out of (\d+))? node\(s\) with delegate \(([^)]*)\)")
FALLBACK = re.compile(
    r"will not be executed by the delegate"
    r"|partially executed by the delegate"
    r"|not fully delegated"
    r"|failed to \w+.*delegate|delegate\S*\) failed to \w+"
    r"|not supported by .*delegate"
    r"|remaining \d+ .*on the CPU"
    r"|Restored original execution plan"
    r"|fall(?:ing)?\s*back to (?:the )?CPU",
    re.IGNORECASE,
)
# an op under "Following operations are not supported by ...": "CUSTOM TFLite_Detection_PostProcess: ..."
UNSUPPORTED_OP = re.compile(r"^[A-Z][A-Z0-9_]*(?: [\w/.-]+)?:(?:\s|$)")


class OpTypeRow(NamedTuple):
    """One row of the op-profiling "Summary by node type" table."""

    node_type: str
    count: int  # nodes of this type
    avg_ms: float  # average time per run of all nodes of this type, ms
    pct: float  # share of the total run time, percent


@dataclass(frozen=True)
class Delegation:
    """Nodes one delegate took, summed over its ``Replacing ... node(s)`` lines (subgraphs)."""

    delegate: str
    nodes_delegated: int
    nodes_total: int | None  # None when the build prints "Replacing N node(s)" without "out of M"


@dataclass
class BenchmarkModelResult:
    """What one ``benchmark_model`` run printed (times in us, memory in MB)."""

    count: int  # timed runs
    avg_us: float
    first_us: float | None = None
    curr_us: float | None = None
    min_us: float | None = None
    max_us: float | None = None
    std_us: float | None = None
    p5_us: float | None = None
    median_us: float | None = None
    p95_us: float | None = None
    init_us: float | None = None
    first_inference_us: float | None = None
    warmup_avg_us: float | None = None
    inference_avg_us: float | None = None
    memory_init_mb: float | None = None
    memory_overall_mb: float | None = None
    memory_is_delta: bool | None = None  # True: delta from tool start; False: older absolute peak
    peak_memory_mb: float | None = None  # periodic monitoring (--report_peak_memory_footprint)
    model_size_mb: float | None = None
    delegate_name: str | None = None  # the first delegate that replaced nodes (the one asked for)
    nodes_delegated: int | None = None
    nodes_total: int | None = None
    delegations: list[Delegation] = field(default_factory=list)  # every delegate, in order
    fallback_warnings: list[str] = field(default_factory=list)
    delegate_fallback: bool = False
    op_profile: list[OpTypeRow] = field(default_factory=list)


def strip_log_prefix(line: str) -> str:
    """The message of one output line without its log prefix(es), right-stripped."""
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            m = prefix.match(line)
            if m and m.end() > 0:
                line, changed = line[m.end() :], True
    return line.rstrip()


def _timing_fields(message: str) -> dict[str, float]:
    """Fields of a ``count=... first=... avg=...`` line, as ``{name}_us`` (``count`` stays)."""
    values = {k: float(v) for k, v in KEY_VALUE.findall(message)}
    if "avg" not in values and "curr" in values:  # "count=N curr=X(all same)" or count=1
        c = values["curr"]
        values |= {"first": c, "min": c, "max": c, "avg": c, "std": 0.0, "p5": c, "median": c, "p95": c}
    names = ("first", "curr", "min", "max", "avg", "std", "p5", "median", "p95")
    out = {f"{k}_us": values[k] for k in names if k in values}
    out["count"] = values["count"]
    return out


def _tail(lines: list[str], n: int = 3) -> str:
    """The last ``n`` non-empty lines joined with " | ", at most 300 characters."""
    last = [line.strip() for line in lines if line.strip()][-n:]
    text = " | ".join(last) if last else "(no output)"
    return text if len(text) <= 300 else "..." + text[-297:]


def _timing_start(message: str) -> int | None:
    """Where a benchmark ``count=`` summary starts in a message, None if it is not one.

    After a known log prefix the summary starts the message; an unknown prefix ending in ``]``
    or ``:`` is tolerated, but not the op profiler's ``Timings (microseconds): count=...`` nor
    ``Memory (bytes): count=...``.
    """
    at = message.find("count=")
    if at < 0:
        return None
    before = message[:at].strip()
    if not before:
        return at
    if before.endswith(("]", ":")) and not before.startswith(("Timings", "Memory")):
        return at
    return None


def _find_timing_line(messages: list[str]) -> str | None:
    """The last ``count=`` line that follows the last "Running benchmark" header (the timed run)."""
    headers = [i for i, m in enumerate(messages) if TIMING_HEADER in m]
    counts = [(i, at) for i, m in enumerate(messages) if (at := _timing_start(m)) is not None]
    if not counts or (headers and counts[-1][0] < headers[-1]):
        return None
    i, at = counts[-1]
    return messages[i][at:]


def _inference_timings(messages: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in messages:
        if "timings in us:" in m:
            for part in m.split("timings in us:", 1)[1].split(","):
                key, _, value = part.partition(":")
                name = INFERENCE_KEYS.get(key.strip().lower())
                if name and re.fullmatch(NUM, value.strip()):
                    out[name] = float(value.strip())
    return out


def _memory(messages: list[str]) -> dict[str, float | bool]:
    out: dict[str, float | bool] = {}
    for m in messages:
        if match := MEMORY_DELTA.search(m):
            out |= {"memory_init_mb": float(match[1]), "memory_overall_mb": float(match[2])}
            out["memory_is_delta"] = True
        elif match := MEMORY_PEAK_OLD.search(m):
            out |= {"memory_init_mb": float(match[1]), "memory_overall_mb": float(match[2])}
            out["memory_is_delta"] = False
        elif match := PEAK_MONITORED.search(m):
            out["peak_memory_mb"] = float(match[1])
        elif match := MODEL_SIZE.search(m):
            out["model_size_mb"] = float(match[1])
    return out


def _delegations(messages: list[str]) -> list[Delegation]:
    """Per delegate, in order of first appearance, the nodes it replaced."""
    totals: dict[str, tuple[int, int | None]] = {}
    for m in messages:
        if match := REPLACING.search(m):
            name, n = match[3], int(match[1])
            m_total = int(match[2]) if match[2] is not None else None
            done, total = totals.get(name, (0, 0))
            totals[name] = (done + n, None if m_total is None or total is None else total + m_total)
    return [Delegation(name, n, total) for name, (n, total) in totals.items()]


def _fallback_warnings(messages: list[str]) -> list[str]:
    """Lines saying a delegate declined (part of) the graph, with the ops it named."""
    warnings: list[str] = []
    in_unsupported_list = False
    for m in messages:
        text = m.strip()
        if FALLBACK.search(text):
            warnings.append(text)
            in_unsupported_list = "not supported by" in text.lower()
        elif in_unsupported_list and UNSUPPORTED_OP.match(text):
            warnings.append(text)  # an op listed under "Following operations are not supported"
        else:
            in_unsupported_list = False
    return warnings


def _delegation(messages: list[str]) -> dict[str, object]:
    """Delegate fields: the first delegate (the one asked for) and any sign of CPU fallback."""
    delegations = _delegations(messages)
    warnings = _fallback_warnings(messages)
    out: dict[str, object] = {"delegations": delegations, "fallback_warnings": warnings}
    if delegations:
        first = delegations[0]
        out |= {
            "delegate_name": first.delegate,
            "nodes_delegated": first.nodes_delegated,
            "nodes_total": first.nodes_total,
        }
    partial = any(d.nodes_total is not None and d.nodes_delegated < d.nodes_total for d in delegations)
    out["delegate_fallback"] = bool(warnings) or partial
    return out


def _table_columns(header: str) -> list[str]:
    return [c.strip().lower() for c in re.findall(r"\[([^\]]+)\]", header)]


def _parse_table_row(line: str, columns: list[str]) -> OpTypeRow | None:
    """A "Summary by node type" row: the node type (may contain spaces) then numeric columns."""
    parts = line.strip().rsplit(None, len(columns) - 1)
    if len(parts) != len(columns):
        return None
    values = dict(zip(columns[1:], (p.rstrip("%") for p in parts[1:]), strict=True))
    try:
        count = int(float(values["count"]))
        avg_ms = float(values["avg ms"])
        pct = float(values.get("avg %", values.get("%", "nan")))
    except (KeyError, ValueError):
        return None
    return OpTypeRow(parts[0], count, avg_ms, pct)


def parse_op_profile(messages: list[str]) -> list[OpTypeRow]:
    """Rows of the "Summary by node type" table of the regular (timed) runs; [] when absent.

    Uses the table after "Operator-wise Profiling Info for Regular Benchmark Runs" when that
    header is printed, else the last such table (initialisation profiling comes first).
    """
    starts = [i for i, m in enumerate(messages) if "Profiling Info for Regular Benchmark Runs" in m]
    begin = starts[-1] if starts else 0
    tables = [i for i in range(begin, len(messages)) if "Summary by node type" in messages[i]]
    if not tables:
        return []
    first = tables[0] if starts else tables[-1]
    header_at = next((i for i in range(first + 1, len(messages)) if "[" in messages[i]), None)
    if header_at is None:
        return []
    columns = _table_columns(messages[header_at])
    if not {"count", "avg ms"} <= set(columns):
        return []
    rows: list[OpTypeRow] = []
    for line in messages[header_at + 1 :]:
        if not line.strip() or line.lstrip().startswith(("=", "Timings", "Memory")):
            break
        row = _parse_table_row(line, columns)
        if row is None:
            break
        rows.append(row)
    return rows


def parse_benchmark_model(text: str) -> BenchmarkModelResult:
    """Parse the full stdout/stderr of one ``benchmark_model`` run.

    The summary comes from the last ``count=...`` line after the last "Running benchmark for at
    least ..." header (the timed run; the earlier one is the warm-up). Raises ValueError when
    that line is missing (the tool crashed, timed out or was cut off).
    """
    lines = text.splitlines()
    messages = [strip_log_prefix(line) for line in lines]
    timing = _find_timing_line(messages)
    fields = _timing_fields(timing) if timing is not None else {}
    if "avg_us" not in fields:
        raise ValueError(
            "benchmark_model output has no timing line for the timed runs ('count=... avg=...'); "
            f"it ends with: {_tail(lines)}"
        )
    kwargs: dict[str, object] = {k: v for k, v in fields.items() if k != "count"}
    kwargs["count"] = int(fields["count"])
    kwargs |= _inference_timings(messages)
    kwargs |= _memory(messages)
    kwargs |= _delegation(messages)
    kwargs["op_profile"] = parse_op_profile(messages)
    return BenchmarkModelResult(**kwargs)  # type: ignore[arg-type]


def stats_ms(r: BenchmarkModelResult) -> dict[str, float | int | None]:
    """The timed-run summary in milliseconds: count, mean, median, p5, p95, std, min, max.

    ``benchmark_model`` prints no per-run samples, so these are the tool's own statistics;
    fields an older build does not print are ``None``.
    """

    def ms(us: float | None) -> float | None:
        return None if us is None else us / 1000.0

    return {
        "count": r.count,
        "mean": ms(r.avg_us),
        "median": ms(r.median_us),
        "p5": ms(r.p5_us),
        "p95": ms(r.p95_us),
        "std": ms(r.std_us),
        "min": ms(r.min_us),
        "max": ms(r.max_us),
    }
