"""Reports of nightly runs: self-contained HTML (no JavaScript), JUnit XML, a rich terminal table.

``report_data(store, ...)`` gathers everything from the result store into plain JSON-able data;
the renderers only format it:

- :func:`render_html` - inline CSS, plots as base64 PNG (matplotlib, Agg): latency trends per
  model and target over runs (median with its CI, p99 dashed, regressions marked), a Pareto plot
  of accuracy against latency / energy / bytes (latency / energy against bytes when no accuracy
  was measured), and the verdict table with links to the artifacts.
- :func:`render_junit` - one testcase per cell: regression -> failure, infrastructure -> error.
- :func:`terminal_table` - the verdicts as a rich table.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from pathlib import Path
from typing import Any

VERDICT_COLORS = {
    "ok": "#1a7f37",
    "improvement": "#0969da",
    "no_baseline": "#6e7781",
    "budget_violation": "#bf8700",
    "regression": "#cf222e",
    "infra_failure": "#8250df",
}
MAX_TREND_PLOTS = 48


# ---------------------------------------------------------------------------------------------
# data


def report_data(
    store: Any, *, run_id: int | None = None, since: dt.datetime | None = None, suite: str | None = None
) -> dict[str, Any]:
    """Runs, the verdicts of one run (default: the latest), trends and Pareto points, from the store."""
    runs = store.runs(suite=suite, since=since)
    if run_id is not None:
        run = store.get_run(run_id)
        if run is None:
            from edge_compress.errors import UserError

            raise UserError(f"no run {run_id} in {store.url}.")
    else:
        finished = [r for r in runs if r["status"] == "finished"]
        run = (finished or runs or [None])[-1]
    if run is not None and suite is None:
        runs = [r for r in runs if r["suite"] == run["suite"]]
    verdicts = store.verdicts(run["id"]) if run else []
    rows = store.measurements(since=since)
    if run is not None:
        rows = [r for r in rows if _same_suite(r, run, runs)]
    artifacts: dict[str, dict[str, Any]] = {}
    for aid in sorted({r["artifact_id"] for r in rows if r.get("artifact_id")}):
        a = store.get_artifact(aid)
        if a is not None:
            artifacts[aid] = {
                "id": a.id,
                "path": a.path,
                "bytes": a.bytes,
                "model": a.model,
                "profile": a.profile,
                "manifest_accuracy": _manifest_accuracy(a.manifest),
            }
    verdict_by = {(v["key"]): v for v in verdicts}
    run_verdicts: dict[int, dict[str, str]] = {}
    for r in runs:
        if r["id"] != (run or {}).get("id"):
            run_verdicts[r["id"]] = {v["key"]: v["verdict"] for v in store.verdicts(r["id"])}
    run_verdicts[(run or {}).get("id", -1)] = {k: v["verdict"] for k, v in verdict_by.items()}
    trends: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        if r["status"] != "ok":
            continue
        group = f"{r['model']} on {r['target']}"
        trends.setdefault(group, {}).setdefault(r["cell_key"], []).append(
            {
                "run_id": r["run_id"],
                "started": _iso(r.get("run_started")),
                "median_ms": r["median_ms"],
                "p99_ms": r["p99_ms"],
                "ci": [r["median_ci_lo_ms"], r["median_ci_hi_ms"]],
                "accepted": bool(r.get("run_accepted")),
                "verdict": run_verdicts.get(r["run_id"], {}).get(r["cell_key"]),
            }
        )
    points = []
    if run is not None:
        for r in store.measurements(run_id=run["id"]):
            if r["status"] != "ok":
                continue
            a = artifacts.get(r.get("artifact_id") or "", {})
            acc = r.get("accuracy")
            points.append(
                {
                    "key": r["cell_key"],
                    "model": r["model"],
                    "variant": r["variant"],
                    "target": r["target"],
                    "median_ms": r["median_ms"],
                    "p99_ms": r["p99_ms"],
                    "energy_mj": None if r.get("energy_j") is None else r["energy_j"] * 1e3,
                    "energy_measured": r.get("energy_measured"),
                    "bytes": a.get("bytes"),
                    "accuracy": acc if acc is not None else a.get("manifest_accuracy"),
                    "accuracy_source": "device"
                    if acc is not None
                    else ("manifest" if a.get("manifest_accuracy") is not None else None),
                }
            )
    return {
        "generated": _iso(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)),
        "store": store.url,
        "run": _run_json(run) if run else None,
        "runs": [_run_json(r) for r in runs],
        "verdicts": verdicts,
        "counts": _counts(verdicts),
        "trends": trends,
        "pareto": points,
        "artifacts": artifacts,
    }


def _same_suite(row: dict[str, Any], run: dict[str, Any], runs: list[dict[str, Any]]) -> bool:
    ids = {r["id"] for r in runs} | {run["id"]}
    return row["run_id"] in ids


def _manifest_accuracy(manifest: dict[str, Any]) -> float | None:
    """The compiler's accuracy of the artifact (runtime accuracy of a file, else simulated), a fraction."""
    acc = manifest.get("accuracy")
    if isinstance(acc, dict):
        runtime = acc.get("runtime")
        if isinstance(runtime, dict):
            for name in sorted(runtime, key=lambda n: (not n.endswith(".onnx"), n)):
                v = runtime[name]
                if isinstance(v, (int, float)) and 0 <= v <= 1:
                    return float(v)
        for k in ("simulated", "predicted"):
            v = acc.get(k)
            if isinstance(v, (int, float)) and 0 <= v <= 1:
                return float(v)
    return None


def _iso(x: Any) -> str | None:
    if x is None:
        return None
    return x.isoformat(sep=" ") if isinstance(x, dt.datetime) else str(x)


def _run_json(r: dict[str, Any]) -> dict[str, Any]:
    out = {k: (_iso(v) if isinstance(v, dt.datetime) else v) for k, v in r.items() if k != "settings"}
    out["fail_on_budget_violation"] = bool((r.get("settings") or {}).get("fail_on_budget_violation"))
    return out


def _counts(verdicts: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in verdicts:
        out[v["verdict"]] = out.get(v["verdict"], 0) + 1
    return out


# ---------------------------------------------------------------------------------------------
# plots


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def trend_plots(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, base64 PNG) per model and target: median (with CI) and p99 over runs."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = []
    for group, series in list(sorted(data["trends"].items()))[:MAX_TREND_PLOTS]:
        fig, ax = plt.subplots(figsize=(7.5, 3.2))
        for i, (key, pts) in enumerate(sorted(series.items())):
            color = f"C{i % 10}"
            label = "|".join(key.split("|")[1:3])
            x = [p["run_id"] for p in pts]
            med = [p["median_ms"] for p in pts]
            lo = [p["median_ms"] - (p["ci"][0] if p["ci"][0] is not None else p["median_ms"]) for p in pts]
            hi = [(p["ci"][1] if p["ci"][1] is not None else p["median_ms"]) - p["median_ms"] for p in pts]
            ax.errorbar(
                x, med, yerr=[lo, hi], color=color, marker="o", ms=4, capsize=2, label=f"{label} median"
            )
            ax.plot(
                x, [p["p99_ms"] for p in pts], color=color, ls="--", lw=1, alpha=0.7, label=f"{label} p99"
            )
            for p in pts:
                if p["verdict"] == "regression":
                    ax.plot(p["run_id"], p["median_ms"], marker="x", color="#cf222e", ms=11, mew=2.5)
                if p["accepted"]:
                    ax.plot(p["run_id"], p["median_ms"], marker="o", mfc="none", mec="black", ms=9)
        ax.set_xlabel("run")
        ax.set_ylabel("latency (ms)")
        ax.set_title(group, fontsize=10)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7, loc="best")
        out.append((group, _png(fig)))
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated points: lower x and higher y are better; sorted by x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def pareto_plot(data: dict[str, Any]) -> str | None:
    """Accuracy against latency, energy and bytes (with the Pareto front), as base64 PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    pts = data["pareto"]
    if not pts:
        return None
    have_acc = any(p["accuracy"] is not None for p in pts)
    axes_spec = (
        [
            ("median_ms", "median latency (ms)"),
            ("energy_mj", "energy / inference (mJ)"),
            ("bytes", "model bytes"),
        ]
        if have_acc
        else [("bytes", "model bytes")]
    )
    yname = "accuracy" if have_acc else None
    fig, axes = plt.subplots(1, len(axes_spec) if have_acc else 2, figsize=(13 if have_acc else 9, 3.6))
    fig.subplots_adjust(wspace=0.35)
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    targets = sorted({p["target"] for p in pts})
    if have_acc:
        for ax, (xk, xl) in zip(axes, axes_spec, strict=False):
            for ti, t in enumerate(targets):
                xy = [
                    (p[xk], p[yname])
                    for p in pts
                    if p["target"] == t and p[xk] is not None and p[yname] is not None
                ]
                if not xy:
                    continue
                ax.scatter(*zip(*xy, strict=True), color=f"C{ti % 10}", label=t, s=22)
                front = pareto_front(xy)  # per target: trade-offs are only comparable on one device
                if len(front) > 1:
                    ax.plot(*zip(*front, strict=True), color=f"C{ti % 10}", lw=1, alpha=0.6)
            ax.set_xlabel(xl)
            ax.set_ylabel("accuracy")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle("accuracy vs cost, latest run (lines: Pareto front per target)", fontsize=10)
    else:  # no accuracy: cost trade-offs only
        for ax, (yk, yl) in zip(
            axes,
            [("median_ms", "median latency (ms)"), ("energy_mj", "energy / inference (mJ)")],
            strict=False,
        ):
            for ti, t in enumerate(targets):
                xy = [
                    (p["bytes"], p[yk])
                    for p in pts
                    if p["target"] == t and p["bytes"] is not None and p[yk] is not None
                ]
                if xy:
                    ax.scatter(*zip(*xy, strict=True), color=f"C{ti % 10}", label=t, s=22)
            ax.set_xlabel("model bytes")
            ax.set_ylabel(yl)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle("cost trade-offs, latest run (no accuracy measured: set measure.accuracy)", fontsize=10)
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# HTML

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1f2328;max-width:1400px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:6px 0} th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
.meta{color:#57606a;font-size:13px} .note{color:#57606a;font-size:12px} .grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;border:1px solid #d0d7de;padding:6px;border-radius:6px} figcaption{font-size:12px;color:#57606a}
img{max-width:100%} code{font-size:12px}
"""


def _badge(verdict: str) -> str:
    color = VERDICT_COLORS.get(verdict, "#6e7781")
    return f'<span class="badge" style="background:{color}">{html.escape(verdict)}</span>'


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) >= 1000 or abs(x) < 0.001 else f"{x:.{digits}f}"
    return html.escape(str(x))


def metric_cell(mv: dict[str, Any] | None) -> str:
    """'base -> cand (+x.x% [lo, hi])' for one metric verdict."""
    if not mv or mv.get("effect_pct") is None:
        return "-" if not mv else html.escape(mv.get("verdict", "-"))
    ci = mv.get("ci_pct")
    ci_s = f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else ""
    unit = " pt" if mv["metric"] == "accuracy" else "%"
    flag = {"regression": " &#9650;", "improvement": " &#9660;"}.get(mv["verdict"], "")
    style = ' style="color:#cf222e;font-weight:600"' if mv["verdict"] == "regression" else ""
    return (
        f"<span{style}>{mv['effect_pct']:+.1f}{unit}{ci_s}{flag}</span>"
        f'<br><span class="note">{_fmt(mv.get("baseline"))} &rarr; {_fmt(mv.get("candidate"))}'
        f"{' (' + html.escape(mv['evidence']) + ')' if mv.get('evidence') else ''}</span>"
    )


def render_html(data: dict[str, Any]) -> str:
    """The self-contained HTML report (inline CSS, base64 plots, no scripts)."""
    run = data.get("run") or {}
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>edge-compress nightly - {html.escape(str(run.get('suite', 'no runs')))}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Nightly regression report: {html.escape(str(run.get('suite', 'no runs')))}</h1>",
        f"<div class='meta'>run {run.get('id', '-')} &middot; revision <code>{html.escape(str(run.get('revision') or '-'))}</code>"
        f" &middot; started {html.escape(str(run.get('started') or '-'))} &middot; finished {html.escape(str(run.get('finished') or '-'))}"
        f" &middot; status {html.escape(str(run.get('status', '-')))}{' (accepted baseline)' if run.get('accepted') else ''}"
        f" &middot; exit code {run.get('exit_code', '-')} &middot; store <code>{html.escape(data['store'])}</code>"
        f" &middot; generated {html.escape(str(data['generated']))}</div>",
        "<p>" + " ".join(f"{_badge(k)} {v}" for k, v in sorted(data["counts"].items())) + "</p>",
    ]
    parts.append("<h2>Verdicts</h2>" + verdict_table_html(data))
    parts.append("<h2>Latency trends</h2>")
    plots = trend_plots(data)
    if plots:
        parts.append("<div class='grid'>")
        for title, b64 in plots:
            parts.append(
                f"<figure><img alt='latency trend: {html.escape(title)}' src='data:image/png;base64,{b64}'>"
                f"<figcaption>{html.escape(title)}: median with its 95% CI (solid), p99 (dashed); "
                "circles: accepted baselines; red x: regression</figcaption></figure>"
            )
        parts.append("</div>")
    else:
        parts.append("<p class='note'>no successful measurements yet</p>")
    parts.append("<h2>Accuracy and cost (Pareto)</h2>")
    pareto = pareto_plot(data)
    if pareto:
        parts.append(f"<figure><img alt='Pareto plot' src='data:image/png;base64,{pareto}'></figure>")
    else:
        parts.append("<p class='note'>no successful measurements in this run</p>")
    parts.append("<h2>Runs</h2>" + runs_table_html(data))
    parts.append("</body></html>")
    return "\n".join(parts)


def verdict_table_html(data: dict[str, Any]) -> str:
    arts = data.get("artifacts", {})
    head = (
        "<table><tr><th>cell (model | settings | budget | target)</th><th>verdict</th><th>evidence</th>"
        "<th>median</th><th>p99</th><th>peak memory</th><th>energy</th><th>accuracy</th><th>bytes</th>"
        "<th>budget violations</th><th>artifact</th><th>notes</th></tr>"
    )
    rows = []
    for v in sorted(data["verdicts"], key=lambda v: v["key"]):
        m = {x["metric"]: x for x in v.get("metrics", [])}
        aid = v.get("candidate_artifact_id")
        a = arts.get(aid or "", {})
        link = "-"
        if aid:
            if a.get("path"):
                uri = Path(a["path"], "manifest.json").resolve().as_uri()
                link = f"<a href='{html.escape(uri)}'>{html.escape(aid[:24])}</a>"
            else:
                link = html.escape(aid[:24])
        bv = (
            "<br>".join(
                f"{html.escape(b['budget'])}: {_fmt(b['value'])} &gt; {_fmt(b['limit'])}{' (estimate)' if b.get('estimated') else ''}"
                for b in v.get("budget_violations", [])
            )
            or "-"
        )
        notes = list(v.get("notes", []))
        if v.get("error"):
            notes.insert(0, f"{v.get('error_kind')}: {v['error']}")
        thr = v.get("throttled_excluded") or {}
        if any(thr.values()):
            notes.append(
                "throttled samples excluded: " + ", ".join(f"{k} {n}" for k, n in sorted(thr.items()))
            )
        rows.append(
            "<tr>"
            f"<td><code>{html.escape(v['key'])}</code></td><td>{_badge(v['verdict'])}</td>"
            f"<td>{html.escape(v.get('evidence') or '-')}{' (' + str(v['interleaved_rounds']) + ' rounds)' if v.get('interleaved_rounds') else ''}</td>"
            f"<td>{metric_cell(m.get('latency_median'))}</td><td>{metric_cell(m.get('latency_p99'))}</td>"
            f"<td>{metric_cell(m.get('peak_memory'))}</td><td>{metric_cell(m.get('energy'))}</td>"
            f"<td>{metric_cell(m.get('accuracy'))}</td><td>{metric_cell(m.get('bytes'))}</td>"
            f"<td>{bv}</td><td>{link}</td><td class='note'>{'<br>'.join(html.escape(n) for n in notes) or '-'}</td>"
            "</tr>"
        )
    if not rows:
        return "<p class='note'>no verdicts</p>"
    return head + "".join(rows) + "</table>"


def runs_table_html(data: dict[str, Any]) -> str:
    rows = [
        f"<tr><td class='num'>{r['id']}</td><td>{html.escape(str(r['suite']))}</td><td>{html.escape(str(r['started']))}</td>"
        f"<td>{html.escape(str(r.get('finished') or '-'))}</td><td>{html.escape(str(r['status']))}</td>"
        f"<td>{'yes' if r['accepted'] else ''}</td><td class='num'>{'' if r.get('exit_code') is None else r['exit_code']}</td>"
        f"<td><code>{html.escape(str(r.get('revision') or '-'))}</code></td></tr>"
        for r in reversed(data["runs"])
    ]
    return (
        "<table><tr><th>run</th><th>suite</th><th>started (UTC)</th><th>finished</th><th>status</th>"
        "<th>accepted</th><th>exit</th><th>revision</th></tr>" + "".join(rows) + "</table>"
    )


# ---------------------------------------------------------------------------------------------
# JUnit


def render_junit(verdicts: list[dict[str, Any]], *, suite: str, run: dict[str, Any] | None = None) -> str:
    """JUnit XML: one testcase per cell; regression -> <failure>, infra_failure -> <error>
    (a budget violation is a failure too when the suite sets ``fail_on_budget_violation``)."""
    import xml.etree.ElementTree as ET

    run = run or {}
    strict = bool(
        run.get("fail_on_budget_violation") or (run.get("settings") or {}).get("fail_on_budget_violation")
    )
    failing = {"regression", "budget_violation"} if strict else {"regression"}
    failures = sum(v["verdict"] in failing for v in verdicts)
    errors = sum(v["verdict"] == "infra_failure" for v in verdicts)
    root = ET.Element(
        "testsuites",
        name="edge-compress nightly",
        tests=str(len(verdicts)),
        failures=str(failures),
        errors=str(errors),
    )
    ts = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(verdicts)),
        failures=str(failures),
        errors=str(errors),
        skipped="0",
        timestamp=str((run or {}).get("started") or ""),
    )
    props = ET.SubElement(ts, "properties")
    for k in ("id", "revision", "accepted", "exit_code"):
        if run and run.get(k) is not None:
            ET.SubElement(props, "property", name=f"run_{k}" if k == "id" else k, value=str(run[k]))
    for v in sorted(verdicts, key=lambda v: v["key"]):
        parts = v["key"].split("|")
        target = parts[-1] if parts else "?"
        tc = ET.SubElement(ts, "testcase", classname=f"{suite}.{target}", name=v["key"], time="0")
        summary = _metric_summary(v)
        if v["verdict"] == "regression":
            regs = [m for m in v.get("metrics", []) if m["verdict"] == "regression"]
            msg = "; ".join(
                f"{m['metric']} {m['effect_pct']:+.1f}{' pt' if m['metric'] == 'accuracy' else '%'} "
                f"(threshold {m['effective_threshold_pct']:.1f}, p={m['p_value']:.2g}, {m['evidence']})"
                for m in regs
            )
            el = ET.SubElement(tc, "failure", message=msg, type="regression")
            el.text = summary
        elif v["verdict"] == "budget_violation" and strict:
            msg = "; ".join(
                f"{b['budget']} {b['value']:.4g} > {b['limit']:.4g}" for b in v.get("budget_violations", [])
            )
            el = ET.SubElement(tc, "failure", message=msg, type="budget_violation")
            el.text = summary
        elif v["verdict"] == "infra_failure":
            el = ET.SubElement(
                tc, "error", message=f"{v.get('error_kind')}: {v.get('error')}", type="infra_failure"
            )
            el.text = v.get("error") or ""
        out = ET.SubElement(tc, "system-out")
        out.text = f"verdict: {v['verdict']}\n{summary}"
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _metric_summary(v: dict[str, Any]) -> str:
    lines = []
    for m in v.get("metrics", []):
        if m.get("effect_pct") is None:
            continue
        ci = m.get("ci_pct")
        lines.append(
            f"{m['metric']}: {m['verdict']} {m['effect_pct']:+.2f}"
            + (f" CI [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")
            + f" ({m['evidence']})"
        )
    for b in v.get("budget_violations", []):
        lines.append(f"budget {b['budget']}: {b['value']:.4g} > {b['limit']:.4g}")
    lines += v.get("notes", [])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# terminal


def terminal_table(verdicts: list[dict[str, Any]], title: str = "nightly verdicts") -> Any:
    from rich.table import Table
    from rich.text import Text

    styles = {
        "ok": "green",
        "improvement": "cyan",
        "no_baseline": "dim",
        "budget_violation": "yellow",
        "regression": "bold red",
        "infra_failure": "magenta",
    }
    t = Table(title=title, title_justify="left")
    for col in ("cell", "verdict", "evidence", "median", "p99", "memory", "notes"):
        t.add_column(col, overflow="fold")
    for v in sorted(verdicts, key=lambda v: v["key"]):
        m = {x["metric"]: x for x in v.get("metrics", [])}

        def eff(name: str, m: dict[str, Any] = m) -> str:
            x = m.get(name)
            if not x or x.get("effect_pct") is None:
                return "-"
            ci = x.get("ci_pct")
            return f"{x['effect_pct']:+.1f}%" + (f" [{ci[0]:+.1f},{ci[1]:+.1f}]" if ci else "")

        notes = []
        if v.get("error"):
            notes.append(f"{v.get('error_kind')}: {v['error']}")
        notes += [
            f"{b['budget']} {b['value']:.4g} > {b['limit']:.4g}" for b in v.get("budget_violations", [])
        ]
        t.add_row(
            v["key"],
            Text(v["verdict"], style=styles.get(v["verdict"], "")),
            v.get("evidence") or "-",
            eff("latency_median"),
            eff("latency_p99"),
            eff("peak_memory"),
            "; ".join(notes),
        )
    return t
