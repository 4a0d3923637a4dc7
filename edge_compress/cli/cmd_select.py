"""`edge-compress select MODEL[,MODEL...] --profile NAME [--target T] [--budget ...]`.

The most accurate candidate meeting every budget: with ``--target`` on numbers measured there
(the cost model picks what to measure and learns from each measurement), without a target on
predictions (labelled so). Prints the candidates with their Pareto flags and each rejection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from edge_compress.cli.app import JsonOpt, app, console, emit_json, err_console


def _ratios(text: str, opt: str, allow_zero: bool = False) -> tuple[float, ...]:
    from edge_compress.errors import UserError

    out = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            v = float(part)
        except ValueError:
            raise UserError(f"{opt} {text!r}: expected comma-separated numbers in (0, 1].") from None
        if not (0.0 <= v <= 1.0) or (v == 0.0 and not allow_zero):
            raise UserError(f"{opt}: {v:g} is not a ratio in {'[0' if allow_zero else '(0'}, 1].")
        out.append(v)
    return tuple(out)


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "B":
        return f"{v / 1e3:.1f} KB"
    return f"{v:.3g}{unit}"


@app.command("select")
def select_cmd(
    models: str = typer.Argument(..., help="zoo model(s), comma separated; NAME@WIDTH for a width variant"),
    profile: str = typer.Option(..., "--profile", help="device profile name (or YAML path)"),
    target: str | None = typer.Option(
        None, "--target", help="inventory target to measure on (omit: predict only)"
    ),
    inventory: Path | None = typer.Option(
        None, "--inventory", help="inventory YAML (default: the usual search)"
    ),
    budget: str | None = typer.Option(
        None,
        "--budget",
        help="e.g. latency_p99=15ms,energy=5mJ,power=2W@10Hz (latency_median=... too); "
        "overrides the profile's budgets",
    ),
    max_measurements: int | None = typer.Option(None, "--max-measurements", min=1, help="cap on-target runs"),
    plot: Path | None = typer.Option(None, "--plot", help="write the Pareto plot (PNG) here"),
    min_duration: float = typer.Option(
        1.0, "--min-duration", min=0.05, help="seconds of timed runs per measurement"
    ),
    save: bool = typer.Option(True, "--save/--no-save", help="store the target's refined cost model"),
    store_url: str | None = typer.Option(
        None,
        "--store",
        help="result store holding the targets' cost models (default: $EDGE_COMPRESS_STORE or "
        "./edge-compress.sqlite when it exists)",
    ),
    alphas: str = typer.Option(
        "0.25,0.5,0.75",
        "--alphas",
        help="mixed-precision budgets between all-int4 and all-int8 ('' for none)",
    ),
    prune: str = typer.Option("0.7,0.5", "--prune", help="L1 pruning FLOPs ratios ('' for none)"),
    ranks: str = typer.Option("0.6", "--ranks", help="low-rank factorization FLOPs ratios ('' for none)"),
    as_json: bool = JsonOpt,
) -> None:
    """Choose the most accurate candidate that meets every budget (measured with --target)."""
    import tempfile

    from edge_compress.costmodel_store import load_costmodel, open_store, publish_to_store, save_costmodel
    from edge_compress.profiles import load_profile
    from edge_compress.selection import (
        generate_candidates,
        pareto_plot,
        parse_select_budget,
        runner_measure,
        select,
    )

    prof = load_profile(profile)
    budgets = {**prof.budgets.active(), **parse_select_budget(budget)}
    notes: list[str] = []
    say = (lambda m: None) if as_json else (lambda m: err_console.print(f"[dim]{m}[/]", highlight=False))
    store = open_store(store_url)
    cm = load_costmodel(target, prof, store=store)
    cands = generate_candidates(
        models,
        prof,
        alphas=_ratios(alphas, "--alphas", allow_zero=True),
        prune_ratios=_ratios(prune, "--prune"),
        ranks=_ratios(ranks, "--ranks"),
        notes=notes,
        progress=say,
        cost_model=cm,
        budgets=budgets,
    )
    measure = None
    if target is not None:
        from runners.registry import get_runner

        runner = get_runner(target, inventory)
        workdir = Path(tempfile.mkdtemp(prefix="edge-compress-select-"))
        measure = runner_measure(runner, workdir, prof.name, min_duration_s=min_duration, notes=notes)
    if not cm.calibrated:
        who = f"target {target!r}" if target else "the profile (no target)"
        notes.append(
            f"the cost model of {who} is not calibrated: predictions come from the profile roofline."
        )
    res = select(cands, budgets, cm, measure, max_measurements=max_measurements, progress=say)
    res.notes = notes + res.notes
    if target is not None and save:
        path = save_costmodel(cm)
        res.notes.append(f"refined cost model saved to {path}")
        if store is not None and res.measurements:
            publish_to_store(cm, store, source="select")
            res.notes.append(f"and to the result store {store.url}")
    if store is not None:
        store.close()
    if plot is not None:
        pareto_plot(res, plot)
    if as_json:
        out = res.to_json()
        if plot is not None:
            out["plot"] = str(plot)
        emit_json(out)
        return
    _print(res, plot)


def _short(budget: str) -> str:
    return {
        "latency_p99_ms": "p99",
        "latency_median_ms": "median",
        "energy_per_inference_mj": "energy",
        "peak_memory_mb": "memory",
        "model_bytes": "bytes",
        "avg_power_w": "power",
    }.get(budget, budget)


def _print(res: Any, plot: Path | None) -> None:
    from rich.table import Table

    from edge_compress.selection import violations

    label = "measured on the target" if res.basis == "measured" else "PREDICTED: no target given"
    t = Table(
        title=f"candidates ({label}; {res.measurements} on-target measurements of {len(res.candidates)})",
        caption="basis: m = measured, p = predicted; * = on the accuracy / median-latency Pareto front",
    )
    t.add_column("candidate", no_wrap=True)
    for col in ("acc %", "median ms", "p99 ms", "mJ", "KB", "", ""):
        t.add_column(col, justify="right" if col else "left", no_wrap=True)
    t.add_column("status")
    front = {c.id for c in res.pareto("latency_ms")}
    for c in sorted(res.candidates, key=lambda c: -c.accuracy):
        k = c.costs
        v = violations(k, res.budgets)
        if c is res.chosen:
            status = "[green]CHOSEN[/]"
        elif v:
            status = "over " + ", ".join(f"{_short(b)} {x['over_pct']:+.0f}%" for b, x in v.items())
        else:
            status = "ok, less accurate" if res.chosen is not None else "ok"
        t.add_row(
            c.id,
            f"{c.accuracy:.2f}",
            f"{k.latency_ms:.3g}",
            f"{k.latency_p99_ms:.3g}",
            f"{k.energy_mj:.3g}",
            f"{k.model_bytes / 1e3:.1f}",
            k.basis[0],
            "*" if c.id in front else "",
            status,
        )
    console.print(t)
    if res.chosen is not None:
        c = res.chosen
        console.print(
            f"chosen: [bold]{c.id}[/] accuracy {c.accuracy:.2f}% , median {c.costs.latency_ms:.3f} ms, "
            f"p99 {c.costs.latency_p99_ms:.3f} ms ({c.costs.basis})",
            highlight=False,
        )
    for n in res.notes:
        console.print(f"[yellow]note:[/] {n}", highlight=False)
    if plot is not None:
        console.print(f"Pareto plot: {plot}")
