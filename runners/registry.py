"""``get_runner(name)``: the runner for a target named in the inventory (or ``local``)."""

from __future__ import annotations

import os

from runners.base import Runner
from runners.inventory import Inventory, Target, load_inventory


def runner_for(target: Target) -> Runner:
    """The runner of a target's transport (local, ssh, adb)."""
    if target.transport == "ssh":
        from runners.ssh import SSHRunner

        return SSHRunner(target, retries=target.retries)
    if target.transport == "adb":
        from runners.adb import AdbRunner

        return AdbRunner(target)
    from runners.local import LocalRunner

    return LocalRunner(
        target.name,
        python=target.python if target.python != "python3" else None,
        profile=target.profile or "host",
        env=target.env,
        emulated=target.emulated,
        warm_agent=target.warm_agent,
    )


def get_runner(target_name: str, inventory: Inventory | str | os.PathLike[str] | None = None) -> Runner:
    """The runner for ``target_name``; ``inventory`` is an Inventory, a YAML path, or None (default).

    Raises:
        edge_compress.errors.UserError: the inventory is invalid or the target is unknown.
    """
    inv = inventory if isinstance(inventory, Inventory) else load_inventory(inventory)
    return runner_for(inv.get(target_name))
