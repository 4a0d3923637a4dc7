"""`edge-compress profiles list | show NAME | validate [PATH...]`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from edge_compress.cli.app import JsonOpt, app, console, emit_json
from edge_compress.errors import UserError

profiles_app = typer.Typer(help="Device profiles: list, show and validate.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")

DirsOpt = typer.Option(
    None, "--profiles-dir", help="Extra directory of profile YAML files (overrides built-ins; repeatable)."
)


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


@profiles_app.command("list")
def list_cmd(profiles_dir: list[Path] = DirsOpt, json_out: bool = JsonOpt) -> None:
    """List the known device profiles (built-in and user)."""
    from edge_compress.profiles import list_profiles, load_profile

    rows = []
    for name, path in sorted(list_profiles(profiles_dir).items()):
        p = load_profile(name, profiles_dir)
        rows.append(
            {
                "name": name,
                "class": p.device_class,
                "cpu": p.compute.cpu,
                "cores": p.cores,
                "transport": p.transport,
                "budgets": p.budgets.active(),
                "path": str(path),
            }
        )
    if json_out:
        emit_json(rows)
        return
    t = Table(title="device profiles")
    for col in ("name", "class", "cores", "transport", "budgets"):
        t.add_column(col)
    for r in rows:
        b = ", ".join(f"{k}={v:g}" for k, v in r["budgets"].items()) or "-"
        t.add_row(r["name"], r["class"], str(r["cores"]), r["transport"], b)
    console.print(t)


@profiles_app.command("show")
def show_cmd(name: str, profiles_dir: list[Path] = DirsOpt, json_out: bool = JsonOpt) -> None:
    """Show one profile in full."""
    from edge_compress.profiles import load_profile

    p = load_profile(name, profiles_dir)
    if json_out:
        emit_json(p.model_dump(mode="json"))
        return
    console.print(f"[bold]{p.name}[/] — {p.description}")
    console.print(f"class {p.device_class}, transport {p.transport}, runtimes {', '.join(p.runtimes)}")
    t = Table(title="compute")
    t.add_column("cluster")
    t.add_column("cores")
    t.add_column("GHz")
    t.add_column("mask")
    for c in p.compute.clusters:
        t.add_row(c.core, str(c.cores), f"{c.clock_ghz:g}", c.core_mask or "-")
    console.print(t)
    peaks = ", ".join(f"{k} {v / 1e9:.3g} GMAC/s" for k, v in p.compute.peak_macs_per_s.items())
    console.print(f"peak: {peaks}  [dim]({p.compute.source})[/]")
    console.print(
        f"memory: {p.memory.ram_mb:g} MB RAM, {p.memory.bandwidth_gb_s:g} GB/s, {p.memory.storage_mb:g} MB storage"
    )
    console.print(
        f"power: idle {p.power.idle_w:g} W, active {p.power.active_w:g} W, sensor {p.power.sensor or 'none'}"
    )
    b = p.budgets
    console.print(
        "budgets: "
        + ", ".join(
            [
                f"model {_fmt_bytes(b.model_bytes)}" if b.model_bytes else "",
                f"latency p99 {b.latency_p99_ms:g} ms" if b.latency_p99_ms else "",
                f"peak memory {b.peak_memory_mb:g} MB" if b.peak_memory_mb else "",
                f"energy {b.energy_per_inference_mj:g} mJ/inference" if b.energy_per_inference_mj else "",
                f"avg power {b.avg_power_w:g} W at {b.duty_cycle_hz:g} Hz" if b.avg_power_w else "",
            ]
        )
        .strip(", ")
        .replace(", , ", ", ")
    )
    console.print("precisions: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in p.precisions.items()))


@profiles_app.command("validate")
def validate_cmd(
    paths: list[Path] = typer.Argument(None, help="Profile files to check (default: every known profile)."),
    profiles_dir: list[Path] = DirsOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Validate profile files; exit 2 on the first broken one, naming the file and field."""
    from edge_compress.profiles import list_profiles, load_profile_file

    targets = list(paths) if paths else list(list_profiles(profiles_dir).values())
    results = []
    failed: UserError | None = None
    for path in targets:
        try:
            p = load_profile_file(path, profiles_dir)
            results.append({"path": str(path), "name": p.name, "ok": True})
        except UserError as e:
            results.append({"path": str(path), "ok": False, "error": str(e)})
            failed = failed or e
    if json_out:
        emit_json(results)
    else:
        for r in results:
            mark = "[green]ok[/]" if r["ok"] else "[red]FAIL[/]"
            console.print(
                f"{mark} {r['path']}" if r["ok"] else f"{mark} {r['error']}", highlight=False, soft_wrap=True
            )
    if failed is not None:
        raise typer.Exit(2)
