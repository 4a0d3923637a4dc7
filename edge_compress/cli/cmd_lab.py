"""`edge-compress lab head | join | status`: the device lab on a Ray cluster.

``lab head`` starts the cluster's head node, ``lab join --address HOST:PORT`` adds a lab host
advertising the devices of its own inventory, ``lab status`` shows nodes, devices and the
nightly runs with their queued cells. ``edge-compress nightly SUITE --cluster ...`` runs a suite
on the lab.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from edge_compress.cli.app import JsonOpt, app, console, emit_json, err_console

lab_app = typer.Typer(
    help="The device lab: hosts join a Ray cluster, nightly cells run on the host reaching their device.",
    no_args_is_help=True,
)
app.add_typer(lab_app, name="lab")

InventoryOpt = typer.Option(
    None, "--inventory", help="This host's inventory (default: $EDGE_COMPRESS_INVENTORY or ~/.config/...)."
)
TargetOpt = typer.Option(
    None, "--target", help="Advertise only this target (repeatable; default: every target of the inventory)."
)
CheckOpt = typer.Option(
    True, "--check/--no-check", help="Probe each target first; leave out unreachable ones."
)
CpusOpt = typer.Option(None, "--num-cpus", help="CPUs this node offers to compile tasks (default: all).")
StoreMemOpt = typer.Option(None, "--object-store-memory", help="Ray object store size, e.g. 200MB.")
NameOpt = typer.Option(None, "--name", help="Node name shown by `lab status` (default: host name).")
CacheOpt = typer.Option(None, "--cache-dir", help="Cache of artifacts received by this node.")
TempOpt = typer.Option(None, "--temp-dir", help="Ray's session directory root (default: Ray's).")
BlockOpt = typer.Option(
    False, "--block", help="Stay in the foreground; stopping this command stops the node (for services)."
)
DryRunOpt = typer.Option(
    False, "--dry-run", help="Print what would be started and advertised; start nothing."
)
RayArgs = typer.Argument(None, help="Extra `ray start` arguments, after `--`.", show_default=False)


@lab_app.command("head")
def head(
    port: int = typer.Option(6379, "--port", help="Port of the cluster's Ray (GCS) server."),
    client_port: int = typer.Option(10001, "--client-port", help="Port of the Ray Client server (ray://)."),
    inventory: Path | None = InventoryOpt,
    target: list[str] | None = TargetOpt,
    check: bool = CheckOpt,
    num_cpus: int | None = CpusOpt,
    object_store_memory: str | None = StoreMemOpt,
    name: str | None = NameOpt,
    cache_dir: Path | None = CacheOpt,
    temp_dir: Path | None = TempOpt,
    block: bool = BlockOpt,
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
    ray_args: list[str] | None = RayArgs,
) -> int:
    """Start the lab's head node (it may reach devices of its own inventory too)."""
    from edge_compress.lab.node import plan_node

    plan = plan_node(
        head=True,
        port=port,
        client_port=client_port,
        inventory=inventory,
        names=target,
        check=check,
        num_cpus=num_cpus,
        object_store_memory=object_store_memory,
        name=name,
        cache_dir=cache_dir,
        temp_dir=temp_dir,
        block=block,
        ray_args=ray_args,
    )
    return _start(plan, dry_run, as_json)


@lab_app.command("join")
def join(
    address: str = typer.Option(..., "--address", help="HOST:PORT of the lab head (`lab head --port`)."),
    inventory: Path | None = InventoryOpt,
    target: list[str] | None = TargetOpt,
    check: bool = CheckOpt,
    num_cpus: int | None = CpusOpt,
    object_store_memory: str | None = StoreMemOpt,
    name: str | None = NameOpt,
    cache_dir: Path | None = CacheOpt,
    temp_dir: Path | None = TempOpt,
    block: bool = BlockOpt,
    dry_run: bool = DryRunOpt,
    as_json: bool = JsonOpt,
    ray_args: list[str] | None = RayArgs,
) -> int:
    """Join the lab as a worker node advertising one resource per device this host reaches."""
    from edge_compress.lab.node import plan_node

    plan = plan_node(
        address=address,
        inventory=inventory,
        names=target,
        check=check,
        num_cpus=num_cpus,
        object_store_memory=object_store_memory,
        name=name,
        cache_dir=cache_dir,
        temp_dir=temp_dir,
        block=block,
        ray_args=ray_args,
    )
    return _start(plan, dry_run, as_json)


def _start(plan: Any, dry_run: bool, as_json: bool) -> int:
    import shlex

    from edge_compress.lab.node import start_node

    if as_json:
        emit_json({**plan.to_json(), "dry_run": dry_run})
    else:
        what = "head" if plan.head else f"node joining {plan.address}"
        devices = ", ".join(f"{t['name']} ({t['where']})" for t in plan.targets) or "none"
        console.print(f"lab {what} '{plan.name}': devices {devices}", highlight=False)
        for s in plan.skipped:
            err_console.print(
                f"[yellow]not advertised:[/] {s['name']}: {s['reason']}", highlight=False, soft_wrap=True
            )
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(plan.env.items()))
        console.print(f"{env} {shlex.join(plan.argv)}", highlight=False, soft_wrap=True)
    if dry_run:
        return 0
    rc = start_node(plan, stdout_to_stderr=as_json)
    if rc:
        raise typer.Exit(rc)
    return 0


@lab_app.command("status")
def status(
    cluster: str = typer.Option(
        "auto", "--cluster", help="auto, ray://HOST:PORT or HOST:PORT of the lab head."
    ),
    show_all: bool = typer.Option(False, "--all", help="Include nodes that left the cluster."),
    as_json: bool = JsonOpt,
) -> int:
    """Nodes, devices (busy / idle) and the nightly runs on the lab with their queued cells."""
    import sys
    from contextlib import redirect_stdout

    from edge_compress.lab.cluster import connect, lab_status

    with redirect_stdout(sys.stderr):  # Ray may print cluster events on stdout
        ray, owned = connect(cluster)
        try:
            data = {"cluster": cluster, **lab_status(ray, include_dead=show_all)}
        finally:
            if owned:
                ray.shutdown()  # type: ignore[attr-defined]
    if as_json:
        emit_json(data)
        return 0
    _print_status(data)
    return 0


def _print_status(data: dict[str, Any]) -> None:
    from rich.table import Table

    nodes = Table(title=f"lab nodes ({data['cluster']})", title_justify="left")
    for col in ("node", "id", "address", "state", "CPUs", "devices", "capabilities"):
        nodes.add_column(col)
    for n in data["nodes"]:
        state = ("head" if n["head"] else "worker") + ("" if n["alive"] else " (gone)")
        nodes.add_row(
            str(n["name"]),
            str(n["node_id"])[:12],
            str(n["address"]),
            state,
            f"{n['cpus']:g}",
            ", ".join(n["devices"]) or "-",
            ", ".join(n["capabilities"]) or "-",
        )
    console.print(nodes)
    devices = Table(title="devices", title_justify="left")
    for col in ("target", "node", "state", "cell"):
        devices.add_column(col)
    style = {"busy": "yellow", "idle": "green", "conflict": "bold red"}
    for d in data["devices"]:
        devices.add_row(d["target"], d["node"], f"[{style[d['state']]}]{d['state']}[/]", d["cell"] or "-")
    console.print(devices)
    for r in data["runs"]:
        console.print(
            f"run {r['run_id']} of {r['suite'] or 'a suite'} (driver {r['driver']}): {r['queued']} queued, "
            f"{len(r['running'])} running, {r['done']} done ({r['failed']} infrastructure failures)",
            highlight=False,
        )
    if not data["runs"]:
        console.print("no nightly run on the lab now", highlight=False)
    if data.get("dead_nodes"):
        console.print(f"{data['dead_nodes']} node(s) left the cluster (--all lists them)", highlight=False)
