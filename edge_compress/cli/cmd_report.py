"""`edge-compress report`: render the result store (HTML, JUnit XML, terminal table, JSON)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer

from edge_compress.cli.app import JsonOpt, app, console, emit_json
from edge_compress.errors import UserError


def parse_since(text: str | None) -> dt.datetime | None:
    """``2025-01-31``, ``2025-01-31T12:00`` (UTC) or a relative ``7d`` / ``12h``."""
    if text is None:
        return None
    t = text.strip()
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    if t[:-1].isdigit() and t[-1:] in ("d", "h"):
        n = int(t[:-1])
        return now - (dt.timedelta(days=n) if t.endswith("d") else dt.timedelta(hours=n))
    try:
        d = dt.datetime.fromisoformat(t)
    except ValueError:
        raise UserError(
            f"--since {text!r}: expected a date like 2025-01-31, 2025-01-31T12:00, or 7d / 12h."
        ) from None
    if d.tzinfo is not None:
        d = d.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return d


@app.command("report")
def report(
    store_url: str | None = typer.Option(
        None,
        "--store",
        help="Result store: a SQLite path or a SQLAlchemy URL (default ./edge-compress.sqlite).",
    ),
    since: str | None = typer.Option(None, "--since", help="Only runs started since DATE (or 7d, 12h)."),
    run_id: int | None = typer.Option(
        None, "--run", help="Verdicts of this run (default: the latest finished)."
    ),
    suite: str | None = typer.Option(None, "--suite", help="Only runs of this suite."),
    html_path: Path | None = typer.Option(None, "--html", help="Write the HTML report here."),
    junit: Path | None = typer.Option(None, "--junit", help="Write JUnit XML of the run here."),
    as_json: bool = JsonOpt,
) -> int:
    """Report verdicts, trends and trade-offs from the result store."""
    from edge_compress.report import render_html, render_junit, report_data, terminal_table
    from edge_compress.store import ResultStore
    from edge_compress.store import store_url as resolve_url

    url = resolve_url(store_url)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        raise UserError(
            f"no result store at {url[len('sqlite:///') :]}; run `edge-compress nightly` first or pass --store."
        )
    with ResultStore(url) as store:
        data = report_data(store, run_id=run_id, since=parse_since(since), suite=suite)
        if html_path:
            html_path.parent.mkdir(parents=True, exist_ok=True)
            html_path.write_text(render_html(data), encoding="utf-8")
        if junit and data["run"]:
            junit.parent.mkdir(parents=True, exist_ok=True)
            junit.write_text(
                render_junit(data["verdicts"], suite=data["run"]["suite"], run=data["run"]), encoding="utf-8"
            )
    if as_json:
        emit_json(data)
        return 0
    if data["run"] is None:
        console.print("no runs in the store" + (" since then" if since else ""))
        return 0
    r = data["run"]
    console.print(
        terminal_table(data["verdicts"], title=f"{r['suite']}: run {r['id']} ({r['status']}, {r['started']})")
    )
    console.print(
        f"{len(data['runs'])} run(s); " + ", ".join(f"{n} {k}" for k, n in sorted(data["counts"].items()))
    )
    for p in (html_path, junit):
        if p:
            console.print(f"wrote {p}", highlight=False)
    return 0
