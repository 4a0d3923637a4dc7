"""Connecting to the lab's Ray cluster, and what ``edge-compress lab status`` shows.

A cluster address is ``auto`` (the cluster this machine is part of), ``ray://HOST:PORT`` (Ray
Client: the driver runs on any machine that reaches the head) or ``HOST:PORT`` (the head's
GCS address, for a driver on a node of the cluster).
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from edge_compress.errors import UserError
from edge_compress.lab import NAMESPACE, require_ray
from edge_compress.lab.board import BOARD_PREFIX
from edge_compress.lab.resources import capabilities_of, is_head, target_resource, targets_of


def check_cluster_address(address: str) -> str:
    """``auto``, ``ray://HOST:PORT`` or ``HOST:PORT``; anything else is a one-line UserError."""
    a = (address or "").strip()
    if a == "auto":
        return a
    rest = a[len("ray://") :] if a.startswith("ray://") else a
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--cluster {address!r}: use auto, ray://HOST:PORT or HOST:PORT of the lab head.")
    return a


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    rest = address[len("ray://") :] if address.startswith("ray://") else address
    host, _, port = rest.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise UserError(
            f"cannot reach the lab head at {address} ({e.strerror or e}); is `edge-compress lab head` running?"
        ) from None


def connect(address: str) -> tuple[Any, bool]:
    """``(ray, connected_here)``: connect this process to the cluster as a driver (once)."""
    ray = require_ray()
    if ray.is_initialized():  # type: ignore[attr-defined]
        return ray, False
    addr = check_cluster_address(address)
    if addr != "auto":
        _reachable(addr)
    # a busy head may fail to start a Ray Client session in time: try such a session again
    attempts = 3 if addr.startswith("ray://") else 1
    for attempt in range(attempts):
        try:
            ray.init(  # type: ignore[attr-defined]
                address=addr, namespace=NAMESPACE, logging_level=logging.ERROR, log_to_driver=False
            )
            return ray, True
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
            if isinstance(e, ConnectionAbortedError) and attempt + 1 < attempts:
                time.sleep(2.0)
                continue
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"cannot connect to the lab cluster at {address}: {first}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def boards(ray: Any, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Snapshots of the nightly runs now on the cluster (their :class:`LabBoard` actors)."""
    out = []
    try:
        named = ray.util.list_named_actors(all_namespaces=True)
    except Exception:  # noqa: BLE001 - no board is not an error
        return []
    for a in named:
        if a.get("namespace") != NAMESPACE or not str(a.get("name", "")).startswith(BOARD_PREFIX):
            continue
        try:
            handle = ray.get_actor(a["name"], namespace=NAMESPACE)
            snap = ray.get(handle.snapshot.remote(), timeout=timeout_s)
        except Exception:  # noqa: BLE001 - a run that just ended
            continue
        out.append({"board": a["name"], **snap})
    return sorted(out, key=lambda b: b.get("started_unix", 0))


def lab_status(ray: Any, *, include_dead: bool = False) -> dict[str, Any]:
    """Nodes (devices, capabilities, CPUs), devices (busy / idle, the cell running there) and
    the nightly runs with their queued and running cells."""
    nodes = ray.nodes()
    total, avail = ray.cluster_resources(), ray.available_resources()
    runs = boards(ray)
    running = {r["target"]: r for b in runs for r in b.get("running", [])}
    node_rows: list[dict[str, Any]] = []
    devices: list[dict[str, Any]] = []
    dead = 0
    for n in nodes:
        res = n.get("Resources") or {}
        alive = bool(n.get("Alive"))
        dead += not alive
        if not alive and not include_dead:
            continue
        row = {
            "node_id": n.get("NodeID"),
            "name": n.get("NodeName") or n.get("NodeManagerAddress"),
            "address": n.get("NodeManagerAddress"),
            "alive": alive,
            "head": is_head(res),
            "cpus": res.get("CPU", 0.0),
            "devices": targets_of(res),
            "capabilities": capabilities_of(res),
        }
        node_rows.append(row)
        if not alive:
            continue
        for t in row["devices"]:
            r = target_resource(t)
            cap = total.get(r, 0.0)
            state = "conflict" if cap > 1 else ("busy" if avail.get(r, 0.0) < cap else "idle")
            cell = running.get(t)
            devices.append(
                {
                    "target": t,
                    "node": row["name"],
                    "node_id": row["node_id"],
                    "state": state,
                    "cell": cell["key"] if cell and state != "idle" else None,
                }
            )
    node_rows.sort(key=lambda r: (not r["head"], str(r["name"]), str(r["node_id"])))
    devices.sort(key=lambda d: d["target"])
    return {
        "nodes": node_rows,
        "devices": devices,
        "runs": runs,
        "queued_cells": sum(int(b.get("queued", 0)) for b in runs),
        "running_cells": sum(len(b.get("running", [])) for b in runs),
        "dead_nodes": dead,
    }
