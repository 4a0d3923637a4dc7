"""Ray custom resources of a lab node: devices it reaches and capabilities it has.

A device is the resource ``target:<name>`` with capacity 1 on the one node that reaches it, so a
cell task requesting ``{"target:<name>": 1}`` is routed to that node and no two cells ever
run on the device at once. A capability (``cap:ssh``, ``cap:adb``) has a large capacity: a task
needing a transport but no particular device requests a sliver of it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from typing import Any

TARGET_PREFIX = "target:"
CAP_PREFIX = "cap:"
CAP_CAPACITY = 1000.0


def target_resource(name: str) -> str:
    """The resource a cell on target ``name`` requests."""
    return f"{TARGET_PREFIX}{name}"


def targets_of(resources: Mapping[str, float]) -> list[str]:
    """Target names advertised in a node's (or the cluster's) resources."""
    return sorted(
        k[len(TARGET_PREFIX) :] for k, v in resources.items() if k.startswith(TARGET_PREFIX) and v > 0
    )


def capabilities_of(resources: Mapping[str, float]) -> list[str]:
    return sorted(k[len(CAP_PREFIX) :] for k, v in resources.items() if k.startswith(CAP_PREFIX) and v > 0)


def host_capabilities(targets: Iterable[Any] = (), which: Any = shutil.which) -> list[str]:
    """What this host can do: ``ssh`` (always: paramiko), ``adb`` when an adb binary is found
    (the targets' ``adb_path`` or ``adb`` on PATH), ``local`` when it measures on itself."""
    caps = {"ssh"}
    adb_paths = {getattr(t, "adb_path", "adb") for t in targets if getattr(t, "transport", "") == "adb"}
    if any(which(p) for p in adb_paths | {"adb"}):
        caps.add("adb")
    if any(getattr(t, "transport", "") == "local" for t in targets):
        caps.add("local")
    return sorted(caps)


def node_resources(targets: Iterable[str], capabilities: Iterable[str]) -> dict[str, float]:
    """The ``--resources`` of ``ray start`` for a node reaching ``targets``."""
    res = {target_resource(t): 1.0 for t in sorted(set(targets))}
    res.update({f"{CAP_PREFIX}{c}": CAP_CAPACITY for c in sorted(set(capabilities))})
    return res


def is_head(resources: Mapping[str, float]) -> bool:
    return "node:__internal_head__" in resources
