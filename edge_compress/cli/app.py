"""The typer application shared by every command module, and output helpers.

Each command lives in its own module under ``edge_compress/cli/`` and registers itself on
``app`` (or adds a sub-typer). Commands stay thin: parse, call the library, print. Every command
takes ``--json`` and then prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(
    name="edge-compress",
    help="Compress a model to fit a device profile, export it, and measure it on the device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console()
err_console = Console(stderr=True)

JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout instead of tables.")


def emit_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (dataclasses / paths are converted)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=_default) + "\n")


def _default(o: Any) -> Any:
    import dataclasses
    from pathlib import Path

    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
