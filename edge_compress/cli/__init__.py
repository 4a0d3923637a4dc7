"""`edge-compress` command line. Command modules register themselves on the shared app."""

from __future__ import annotations

import sys

from edge_compress.errors import UserError


def _load_commands() -> None:
    # Imported for their side effect of registering commands on ``app``.
    import importlib
    import pkgutil

    import edge_compress.cli as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"edge_compress.cli.{info.name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: expected mistakes exit 2 with one line, no traceback."""
    from edge_compress.cli.app import app, err_console

    _load_commands()
    try:
        rc = app(args=argv, prog_name="edge-compress", standalone_mode=False)
    except UserError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except SystemExit as e:
        if e.code is None:
            return 0
        return e.code if isinstance(e.code, int) else 2
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        return 130
    except Exception as e:
        # click usage errors (typer bundles its own click: match by behaviour, not by class)
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            return int(e.exit_code)
        if type(e).__name__ == "Abort":
            return 1
        raise
    return rc if isinstance(rc, int) else 0


def run() -> None:
    sys.exit(main())
