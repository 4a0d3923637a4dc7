"""`edge-compress inspect ARTIFACT`: show an artifact's manifest (files, parity, layers, fallbacks)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from edge_compress.cli.app import JsonOpt, app, console, emit_json


@app.command("inspect")
def inspect_cmd(
    artifact: Path = typer.Argument(..., help="Artifact directory (or its manifest.json)."),
    json_out: bool = JsonOpt,
) -> None:
    """Show what an artifact holds; every file is checked against its recorded size and SHA-256."""
    from edge_compress.artifact import load_artifact
    from edge_compress.cli.cmd_compile import print_summary

    art = load_artifact(artifact, verify=True)
    m = art.manifest
    if json_out:
        emit_json({"artifact": str(art.path), **m})
        return
    model = m.get("model", {})
    console.print(f"[bold]{m['id'][:12]}[/] {art.path}", highlight=False)
    console.print(
        f"model {model.get('name')} ({model.get('source')}, data {model.get('dataset')}, input {model.get('input_shape')}), "
        f"profile {m.get('profile', {}).get('name')}, method {m.get('method')}, budget {m.get('budget') or 'profile'}, "
        f"created {m.get('created')}",
        highlight=False,
    )
    q = m.get("quantizer")
    if q:
        console.print(
            f"weights rounded by {q.get('weight_rounding')}, "
            f"bias correction {'on' if q.get('bias_correction') else 'off'}, "
            f"activation ranges by {q.get('activation_calibration')}",
            highlight=False,
        )
    t = Table(title="sha256")
    t.add_column("file")
    t.add_column("sha256")
    for name, d in m["files"].items():
        t.add_row(name, d["sha256"][:16] + "…")
    for name, sides in (m.get("sidecars") or {}).items():
        for k, v in sides.items():
            t.add_row(f"{v} ({k} of {name})", "")
    print_summary(m, art.path, cached=False)
    console.print(t)
    versions = m.get("versions", {})
    if versions:
        console.print(
            "versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())), highlight=False
        )
