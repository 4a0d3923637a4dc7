"""`edge-compress nightly SUITE`: compile, measure every cell on its target, judge, store, report.

Exit codes: 0 clean, 1 regression (or budget violation with ``fail_on_budget_violation``),
2 usage error, 3 infrastructure failures only (no regression).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext, redirect_stdout
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
    cluster: str | None = typer.Option(
        None,
        "--cluster",
        help="Run on the device lab: auto, ray://HOST:PORT or HOST:PORT (default: this host).",
    ),
    cluster_wait: float = typer.Option(
        60.0, "--cluster-wait", help="Seconds to wait for the suite's devices to join the lab."
    ),
    as_json: bool = JsonOpt,
) -> int:
    """Run a regression suite; exit 1 on a regression."""
    from edge_compress.nightly import run_nightly
    from edge_compress.store import ResultStore
    from edge_compress.suite import load_suite

    executor, inv = None, inventory
    # Ray prints cluster events (a node marked dead ...) on stdout: keep the JSON document alone there
    quiet = redirect_stdout(sys.stderr) if cluster is not None and as_json else nullcontext()
    with quiet:
        if cluster is not None:
            executor, inv = _lab_executor(cluster, cluster_wait, suite_path, inventory)
        try:
            suite = load_suite(suite_path, inventory=inv)
            with ResultStore(store_url) as store:
                if as_json:
                    result = run_nightly(
                        suite,
                        store=store,
                        inventory=inv,
                        resume=resume,
                        accept=accept,
                        artifacts_dir=artifacts_dir,
                        executor=executor,
                    )
                else:
                    result = _run_with_progress(suite, store, inv, resume, accept, artifacts_dir, executor)
                write_outputs(store, result.run_id, suite.name, junit=junit, html_path=html_path)
        finally:
            if executor is not None:
                executor.close()
    for note in getattr(executor, "notes", []):
        err_console.print(f"[yellow]lab:[/] {note}", highlight=False, soft_wrap=True)
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


def _lab_executor(cluster: str, wait_s: float, suite_path: Path, inventory: Path | None) -> tuple[Any, Any]:
    """The Ray executor and the inventory the head sees: its own plus the lab nodes' devices."""
    from edge_compress.executor import get_executor
    from edge_compress.suite import load_suite
    from runners.inventory import load_inventory

    if wait_s < 0:
        from edge_compress.errors import UserError

        raise UserError(f"--cluster-wait {wait_s:g}: must be 0 or more seconds.")
    draft = load_suite(suite_path, inventory=inventory, check_targets=False)
    executor = get_executor(cluster, wait_for_targets_s=wait_s, label=draft.name)
    try:
        inv = executor.lab_inventory(load_inventory(inventory), wait_for=draft.targets)  # type: ignore[attr-defined]
    except BaseException:
        executor.close()  # type: ignore[attr-defined]
        raise
    return executor, inv


def _run_with_progress(
    suite: Any,
    store: Any,
    inventory: Any,
    resume: bool,
    accept: bool,
    artifacts_dir: Any,
    executor: Any = None,
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
            executor=executor,
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
