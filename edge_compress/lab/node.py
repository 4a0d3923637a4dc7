"""Starting a lab node: ``edge-compress lab head`` and ``edge-compress lab join``.

Both run ``ray start`` (as an argument list, never a shell string) with the node's resources
computed from its own inventory (:mod:`edge_compress.lab.resources`) and an environment that
the node's Ray workers inherit:

``EDGE_COMPRESS_INVENTORY``  the inventory the node joined with: cells look their target up in it
                             (host names, keys and serials never leave the lab host)
``EDGE_COMPRESS_LAB_NODE``   the node's name (also Ray's node name)
``EDGE_COMPRESS_LAB_CACHE``  the node-local cache of artifacts received from the head (optional)

A cell task waits on its device, not on a CPU (``num_cpus=0``), so a node runs as many cells at
once as it has devices: its raylet is told to start that many Ray workers at once and to keep
them between cells (``RAY_worker_maximum_startup_concurrency``, ``RAY_num_workers_soft_limit``;
Ray's defaults follow the CPU count; a value already in the environment wins).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_compress.errors import UserError
from edge_compress.lab.resources import host_capabilities, node_resources

NODE_ENV = "EDGE_COMPRESS_LAB_NODE"
CACHE_ENV = "EDGE_COMPRESS_LAB_CACHE"
INVENTORY_ENV = "EDGE_COMPRESS_INVENTORY"
DEFAULT_PORT = 6379
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9}
_UNITS.update({"KI": 1024, "KIB": 1024, "MI": 1024**2, "MIB": 1024**2, "GI": 1024**3, "GIB": 1024**3})


@dataclass
class NodePlan:
    """What ``lab head`` / ``lab join`` starts: the ``ray start`` arguments and what they advertise."""

    argv: list[str]
    env: dict[str, str]  # added to the environment of the node (its workers inherit it)
    resources: dict[str, float]
    targets: list[dict[str, Any]]  # advertised devices: name, transport, where, profile
    skipped: list[dict[str, Any]] = field(default_factory=list)  # not advertised: name, reason
    head: bool = False
    address: str | None = None
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` of the head's Ray (GCS) server, validated."""
    a = (address or "").strip()
    if a.startswith("ray://"):
        raise UserError(
            f"--address {address}: a lab node joins with the head's HOST:PORT (as printed by "
            "`edge-compress lab head`), not a ray:// client address."
        )
    host, sep, port = a.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--address {address!r}: expected HOST:PORT of the lab head, e.g. lab-head:6379.")
    return host.strip("[]"), int(port)


def parse_size(text: str | int | None, what: str = "--object-store-memory") -> int | None:
    """Bytes from ``200MB`` / ``1GiB`` / ``150000000``."""
    if text is None or isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise UserError(f"{what} {text!r}: expected a size such as 200MB, 1GiB or a number of bytes.")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


def plan_node(
    *,
    address: str | None = None,
    head: bool = False,
    port: int = DEFAULT_PORT,
    inventory: str | os.PathLike[str] | None = None,
    names: list[str] | None = None,
    check: bool = True,
    num_cpus: int | None = None,
    object_store_memory: str | int | None = None,
    name: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    temp_dir: str | os.PathLike[str] | None = None,
    client_port: int | None = None,
    block: bool = False,
    ray_args: list[str] | None = None,
) -> NodePlan:
    """The ``ray start`` of a lab node advertising the devices of its own inventory.

    ``names``: advertise only these targets (default: every target of the inventory; ``local``
    only when named). ``check``: probe each target first and leave out those that do not answer.
    """
    from runners.inventory import load_inventory

    if head == (address is not None):
        raise UserError("give either --address HOST:PORT (join a lab) or start the head, not both.")
    if address is not None:
        parse_address(address)
    if num_cpus is not None and num_cpus < 0:
        raise UserError(f"--num-cpus {num_cpus}: must be 0 or more.")
    store_bytes = parse_size(object_store_memory)
    inv = load_inventory(inventory)
    chosen = [inv.get(n) for n in dict.fromkeys(names)] if names else list(inv.targets.values())
    skipped: list[dict[str, Any]] = []
    if check and chosen:
        with ThreadPoolExecutor(max_workers=min(8, len(chosen))) as pool:
            probes = list(pool.map(_probe, chosen))
        kept = []
        for t, (ok, reason) in zip(chosen, probes, strict=True):
            if ok:
                kept.append(t)
            else:
                skipped.append({"name": t.name, "reason": reason})
        chosen = kept
    node_name = name or socket.gethostname()
    resources = node_resources([t.name for t in chosen], host_capabilities(chosen))
    argv = [sys.executable, "-m", "ray.scripts.scripts", "start"]
    if head:
        argv += ["--head", f"--port={port}", "--include-dashboard=false"]
        if client_port is not None:
            argv.append(f"--ray-client-server-port={client_port}")
    else:
        argv.append(f"--address={address}")
    argv += [f"--resources={json.dumps(resources, sort_keys=True)}", f"--node-name={node_name}"]
    argv.append("--disable-usage-stats")
    if num_cpus is not None:
        argv.append(f"--num-cpus={num_cpus}")
    if store_bytes is not None:
        argv.append(f"--object-store-memory={store_bytes}")
    if temp_dir is not None:
        argv.append(f"--temp-dir={Path(temp_dir).expanduser().resolve()}")
    if block:
        argv.append("--block")
    argv += list(ray_args or [])
    env = {NODE_ENV: node_name}
    workers = str(max(num_cpus if num_cpus is not None else (os.cpu_count() or 1), len(chosen) + 1))
    for var in ("RAY_worker_maximum_startup_concurrency", "RAY_num_workers_soft_limit"):
        if var not in os.environ:
            env[var] = workers
    if inv.path is not None:
        env[INVENTORY_ENV] = str(Path(inv.path).expanduser().resolve())
    if cache_dir is not None:
        env[CACHE_ENV] = str(Path(cache_dir).expanduser().resolve())
    targets = [
        {"name": t.name, "transport": t.transport, "where": t.describe(), "profile": t.profile}
        for t in chosen
    ]
    return NodePlan(argv, env, resources, targets, skipped, head, address, node_name)


def _probe(target: Any) -> tuple[bool, str]:
    from runners.registry import runner_for

    try:
        data = runner_for(target).probe()  # type: ignore[attr-defined]
    except Exception as e:  # noqa: BLE001 - an unreachable device is left out, not fatal
        return False, (str(e).strip().splitlines() or [type(e).__name__])[0]
    if data.get("ok"):
        return True, ""
    return False, str(data.get("error") or "did not answer")


def start_node(plan: NodePlan, *, stdout_to_stderr: bool = False) -> int:
    """Run the plan's ``ray start``. With ``--block`` this process becomes the node (exec), so
    stopping it (Ctrl-C, a service manager, a signal to its process group) stops the node."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        from edge_compress.lab import INSTALL_HINT

        raise UserError(f"{INSTALL_HINT}.")
    env = {**os.environ, **plan.env}
    sys.stdout.flush()
    sys.stderr.flush()
    if "--block" in plan.argv:
        if stdout_to_stderr:
            os.dup2(2, 1)
        os.execve(plan.argv[0], plan.argv, env)
    proc = subprocess.run(plan.argv, env=env, stdout=sys.stderr if stdout_to_stderr else None, check=False)
    return proc.returncode
