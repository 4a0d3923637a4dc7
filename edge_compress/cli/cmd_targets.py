"""`edge-compress targets list | check [NAME...] | setup NAME`: the devices of the inventory."""

from __future__ import annotations

import contextlib
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import typer

from edge_compress.cli.app import JsonOpt, app, console, emit_json, err_console
from edge_compress.errors import UserError

targets_app = typer.Typer(
    help="List, check and set up measurement targets (the inventory).", no_args_is_help=True
)
app.add_typer(targets_app, name="targets")

InventoryOpt = typer.Option(
    None,
    "--inventory",
    help="Inventory YAML (default: $EDGE_COMPRESS_INVENTORY or ~/.config/edge-compress/inventory.yaml).",
)
RUNTIMES = {
    "onnxruntime": ["onnxruntime"],
    "litert": ["ai-edge-litert"],
    "both": ["onnxruntime", "ai-edge-litert"],
    "none": [],
}


@targets_app.command("list")
def list_targets(inventory: Path | None = InventoryOpt, as_json: bool = JsonOpt) -> int:
    """Show the targets of the inventory (``local`` is always there)."""
    from rich.table import Table

    from runners.inventory import load_inventory

    inv = load_inventory(inventory)
    targets = [inv.get(n) for n in inv.names()]
    if as_json:
        emit_json(
            {"inventory": str(inv.path) if inv.path else None, "targets": [t.model_dump() for t in targets]}
        )
        return 0
    table = Table(title=f"targets ({inv.path or 'no inventory file'})", title_justify="left")
    for col in ("name", "transport", "where", "profile", "python", "workdir"):
        table.add_column(col)
    for t in targets:
        emu = " (emulated)" if t.emulated else ""
        wd = "-" if t.transport == "local" else t.remote_workdir
        table.add_row(t.name, t.transport + emu, t.describe(), t.profile or "-", t.python, wd)
    console.print(table)
    return 0


def _probe(target: Any) -> dict[str, Any]:
    from runners.registry import runner_for

    runner = runner_for(target)
    try:
        data = runner.probe()  # type: ignore[attr-defined]
    except Exception as e:  # noqa: BLE001 - local probe failures are reported, not raised
        data = {"ok": False, "reachable": target.transport == "local", "error": str(e), "error_kind": "agent"}
    data.setdefault("reachable", True)
    return {"name": target.name, "transport": target.transport, **data}


@targets_app.command("check")
def check(
    names: list[str] | None = typer.Argument(None, help="Targets to check (default: all)."),
    inventory: Path | None = InventoryOpt,
    as_json: bool = JsonOpt,
) -> int:
    """Connect to each target and report machine, python, runtimes and power sensors."""
    from runners.inventory import load_inventory

    inv = load_inventory(inventory)
    targets = [inv.get(n) for n in (names or inv.names())]
    if as_json:
        results = _check_all(targets)
        emit_json(results)
    else:
        with console.status(f"checking {len(targets)} target(s) ..."):
            results = _check_all(targets)
        console.print(_check_table(results))
        for r in results:
            if not r.get("ok"):
                err_console.print(
                    f"[bold red]{r['name']}:[/] {r.get('error')}", highlight=False, soft_wrap=True
                )
    return 0 if all(r.get("ok") for r in results) else 1


def _check_all(targets: list[Any]) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(targets)))) as pool:
        return list(pool.map(_probe, targets))


def _check_table(results: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="target check", title_justify="left")
    for col in ("name", "reachable", "machine", "python", "runtimes", "sensors"):
        table.add_column(col)
    for r in results:
        rts = ", ".join(f"{k} {v}" for k, v in (r.get("runtimes") or {}).items() if v) or "-"
        meters = ", ".join(m["source"] for m in r.get("meters") or []) or "none (estimates only)"
        reach = "[green]yes[/]" if r.get("reachable") else "[red]no[/]"
        if r.get("reachable") and not r.get("ok"):
            reach = "[yellow]yes (agent failed)[/]"
        table.add_row(
            r["name"],
            reach,
            r.get("machine") or "-",
            r.get("python") or "-",
            rts,
            meters if r.get("ok") else "-",
        )
    return table


# ---------------------------------------------------------------------------------------------
# setup


def setup_commands(
    python: str, workdir: str, packages: list[str], pip_args: list[str], wheels: list[str], system_site: bool
) -> list[str]:
    """The remote shell commands that create ``<workdir>/venv`` and install into it.

    ``python`` is already a shell expression (quoted, with the target's env); every other value
    is quoted here.
    """
    from runners.ssh import remote_path

    venv = workdir.rstrip("/") + "/venv"
    vpy = remote_path(venv + "/bin/python")
    flags = " --system-site-packages" if system_site else ""
    create = f"[ -x {vpy} ] || {python} -m venv{flags} {remote_path(venv)}"
    args = " ".join(shlex.quote(a) for a in [*pip_args, *packages]) + "".join(
        f" {remote_path(w)}" for w in wheels
    )
    install = f"{vpy} -m pip install --disable-pip-version-check {args}".rstrip()
    return [create, install]


@targets_app.command("setup")
def setup(
    name: str = typer.Argument(..., help="SSH target to prepare."),
    runtime: str = typer.Option("onnxruntime", "--runtime", help="onnxruntime | litert | both | none."),
    pip_args: str = typer.Option("", "--pip-args", help="Extra pip arguments, e.g. '--index-url URL'."),
    wheel: list[Path] | None = typer.Option(
        None, "--wheel", help="Local wheel to push and install (repeatable)."
    ),
    system_site: bool = typer.Option(
        False, "--system-site-packages", help="Let the venv see apt-installed packages (e.g. python3-numpy)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the remote commands, run nothing."),
    timeout: float = typer.Option(1800.0, "--timeout", help="Deadline per remote command (s)."),
    inventory: Path | None = InventoryOpt,
    as_json: bool = JsonOpt,
) -> int:
    """Create a venv with numpy and a runtime on a Linux board over SSH; print its inventory entry."""
    from runners.inventory import inventory_entry_yaml, load_inventory

    if runtime not in RUNTIMES:
        raise UserError(f"--runtime {runtime!r} is not one of {', '.join(RUNTIMES)}.")
    target = load_inventory(inventory).get(name)
    if target.transport != "ssh":
        raise UserError(
            f"target {name!r} uses {target.transport}; setup prepares Linux boards over ssh only."
        )
    wheels = [Path(w) for w in wheel or []]
    for w in wheels:
        if not w.is_file() or w.suffix != ".whl":
            raise UserError(f"--wheel {w}: no such wheel file (.whl).")
    try:
        extra = shlex.split(pip_args)
    except ValueError as e:
        raise UserError(f"--pip-args: cannot split {pip_args!r} ({e}).") from None
    packages = ["numpy", *RUNTIMES[runtime]]
    new_python = target.remote_workdir.rstrip("/") + "/venv/bin/python"
    new_target = target.model_copy(update={"python": new_python})
    if dry_run:
        from runners.agent.host import sha256_file

        blobs = [f"{target.remote_workdir.rstrip('/')}/blobs/{sha256_file(w)}/{w.name}" for w in wheels]
        cmds = setup_commands(_python_cmd(target), target.remote_workdir, packages, extra, blobs, system_site)
        _report(
            as_json,
            {"target": name, "dry_run": True, "commands": cmds, "python": new_python},
            new_target,
            inventory_entry_yaml,
        )
        return 0
    report = _run_setup(target, packages, extra, wheels, system_site, timeout, not as_json)
    if not report["ok"]:
        if as_json:
            emit_json(report)
        else:
            err_console.print(f"[bold red]error:[/] {report['error']}", highlight=False, soft_wrap=True)
        return 1
    _report(as_json, report, new_target, inventory_entry_yaml)
    return 0


def _python_cmd(target: Any) -> str:
    from runners.ssh import SSHRunner

    return SSHRunner(target).python_command()


def _run_setup(
    target: Any,
    packages: list[str],
    pip_args: list[str],
    wheels: list[Path],
    system_site: bool,
    timeout: float,
    show_progress: bool = True,
) -> dict[str, Any]:
    from runners.ssh import SSHRunner, TransportError

    runner = SSHRunner(target)
    report: dict[str, Any] = {"target": target.name, "ok": False, "steps": []}
    try:
        sess = runner.session()
    except TransportError as e:
        return {**report, "error": f"{e}.", "error_kind": e.kind}
    try:
        with sess.step("push"):
            blobs = [sess.push(str(w))[0] for w in wheels]
        cmds = setup_commands(runner.python_command(), sess.workdir, packages, pip_args, blobs, system_site)
        progress = (
            console.status(f"setting up {target.name} ...") if show_progress else contextlib.nullcontext()
        )
        with progress:
            for cmd in cmds:
                with sess.step("setup"):
                    res = sess.exec(cmd, timeout)
                report["steps"].append(
                    {"command": cmd, "exit_code": res.exit_code, "stderr_tail": res.stderr[-1500:]}
                )
                if res.exit_code != 0:
                    last = (res.stderr.strip().splitlines() or ["no output"])[-1]
                    return {
                        **report,
                        "error": f"'{cmd}' failed on {target.name} (exit {res.exit_code}): {last}",
                        "error_kind": "agent",
                    }
    except TransportError as e:
        return {**report, "error": f"{e}.", "error_kind": e.kind}
    finally:
        sess.close()
    python = target.remote_workdir.rstrip("/") + "/venv/bin/python"
    probe = runner.probe(python=python)
    report.update(ok=bool(probe.get("ok")), python=python, probe=probe)
    if not probe.get("ok"):
        report["error"] = f"the new venv does not run the agent: {probe.get('error')}"
    return report


def _report(as_json: bool, report: dict[str, Any], new_target: Any, to_yaml: Any) -> None:
    entry = to_yaml(new_target)
    if as_json:
        emit_json({**report, "inventory_entry": entry})
        return
    for cmd in report.get("commands") or [s["command"] for s in report.get("steps", [])]:
        console.print(f"[dim]$ {cmd}[/]", highlight=False, soft_wrap=True)
    runtimes = (report.get("probe") or {}).get("runtimes") or {}
    if runtimes:
        console.print("runtimes: " + ", ".join(f"{k} {v}" for k, v in runtimes.items() if v), highlight=False)
    console.print("inventory entry (under 'targets:'):", highlight=False)
    console.print(entry, highlight=False, markup=False)
