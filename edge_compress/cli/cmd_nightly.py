"""`edge-compress nightly SUITE`: compile, measure every cell on its target, judge, store, report.

Exit codes: 0 clean, 1 regression (or budget violation with ``fail_on_budget_violation``),
2 usage error, 3 infrastructure failures only (no regression).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from edge_compress.cli.app import JsonOpt, app, console, emit_json, err_console

STORE_HELP = "Result store: a SQLite path or a SQLAlchemy URL (default ./edge-compress.sqlite)."


@app.command("nightly")
def nightly(
    suite_path: Path = typer.Argument(..., metavar="SUITE", help="Suite YAML file."),
    inventory: Path | None = typer.Option(None, "--inventory", help="Inventory YAML (default: see docs)."),
    store_url: str | None = typer.Option(None, "--store", help=STORE_HELP),
    resume: bool = typer.Option(
        False, "--resume", help="Finish the missing cells of the last unfinished run."
    ),
    accept: bool = typer.Option(False, "--accept", help="Accept this run as the new baseline."),
    junit: Path | None = typer.Option(None, "--junit", help="Write JUnit XML here."),
    html_path: Path | None = typer.Option(None, "--html", help="Write the HTML report here."),
    artifacts_dir: Path | None = typer.Option(None, "--artifacts-dir", help="Where compiled artifacts go."),
    as_json: bool = JsonOpt,
) -> int:
    """Run a regression suite; exit 1 on a regression."""
    from edge_compress.nightly import run_nightly
    from edge_compress.store import ResultStore
    from edge_compress.suite import load_suite

    suite = load_suite(suite_path, inventory=inventory)
    with ResultStore(store_url) as store:
        if as_json:
            result = run_nightly(
                suite,
                store=store,
                inventory=inventory,
                resume=resume,
                accept=accept,
                artifacts_dir=artifacts_dir,
            )
        else:
            result = _run_with_progress(suite, store, inventory, resume, accept, artifacts_dir)
        write_outputs(store, result.run_id, suite.name, junit=junit, html_path=html_path)
    if as_json:
        emit_json(result.to_json())
    else:
        from edge_compress.report import terminal_table

        console.print(terminal_table(result.cells, title=f"{suite.name}: run {result.run_id}"))
        counts = ", ".join(f"{n} {k}" for k, n in sorted(result.counts.items()))
        c = result.compiled
        console.print(
            f"run {result.run_id} ({'resumed, ' if result.resumed else ''}{result.measured_now} cells measured now; "
            f"artifacts: {c.get('hits', 0)} cached, {c.get('compiled', 0)} compiled, {c.get('failed', 0)} failed): "
            f"{counts}; exit {result.exit_code}{'; accepted as baseline' if result.accepted else ''}",
            highlight=False,
        )
        for p in (junit, html_path):
            if p:
                console.print(f"wrote {p}", highlight=False)
    if result.exit_code:  # the exit code survives click's standalone mode
        raise typer.Exit(result.exit_code)
    return 0


def _run_with_progress(
    suite: Any, store: Any, inventory: Any, resume: bool, accept: bool, artifacts_dir: Any
) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edge_compress.nightly import run_nightly

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(event: str, **info: Any) -> None:
            if event == "compile":
                if "compile" not in tasks:
                    tasks["compile"] = bar.add_task("compiling", total=info["total"])
                bar.update(
                    tasks["compile"],
                    completed=info["index"],
                    description=f"compiling {info['model']} ({info['variant']})",
                )
            elif event == "measure":
                if "compile" in tasks:
                    bar.update(
                        tasks["compile"], completed=bar.tasks[tasks["compile"]].total, description="compiled"
                    )
                tasks["cells"] = bar.add_task(
                    f"measuring on {info['targets']} target(s)", total=info["total"]
                )
            elif event == "cell":
                bar.advance(tasks["cells"])
                v = info["verdict"]["verdict"]
                style = {
                    "regression": "bold red",
                    "infra_failure": "magenta",
                    "budget_violation": "yellow",
                }.get(v, "green")
                bar.console.print(f"  [{style}]{v}[/] {info['key']}", highlight=False)
            elif event == "resume":
                bar.console.print(f"resuming run {info['run_id']} ({info['done']} cells already done)")
            elif event == "note":
                bar.console.print(info["message"])

        return run_nightly(
            suite,
            store=store,
            inventory=inventory,
            resume=resume,
            accept=accept,
            artifacts_dir=artifacts_dir,
            progress=progress,
        )


def write_outputs(store: Any, run_id: int, suite: str, *, junit: Path | None, html_path: Path | None) -> None:
    """JUnit XML and / or the HTML report of one run."""
    from edge_compress.report import render_html, render_junit, report_data

    if junit:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_text(
            render_junit(store.verdicts(run_id), suite=suite, run=store.get_run(run_id)), encoding="utf-8"
        )
    if html_path:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(render_html(report_data(store, run_id=run_id)), encoding="utf-8")
