"""Targets: named devices in an inventory YAML file.

The inventory says *where* a device is and how to reach it (host names, keys, serials); device
profiles say *what* it can do. Its location is, in order: ``--inventory PATH``, the environment
variable ``EDGE_COMPRESS_INVENTORY``, then ``~/.config/edge-compress/inventory.yaml``. The target
``local`` (this machine) is always available, with or without an inventory.

Format::

    targets:
      pi5:
        transport: ssh              # local | ssh | adb
        host: 192.168.1.50
        port: 22
        user: pi
        key_file: ~/.ssh/id_ed25519
        known_hosts: ~/.ssh/known_hosts
        trust_on_first_use: false   # true: record an unknown host key in known_hosts (never a changed one)
        profile: rpi5               # device profile: power model for energy estimates
        python: ~/.cache/edge-compress/venv/bin/python
        workdir: ~/.cache/edge-compress   # adb default: /data/local/tmp/edge-compress
        env: {OMP_WAIT_POLICY: PASSIVE}
        retries: 2                  # reconnects after a dropped connection (exponential back-off)
      pixel7:
        transport: adb
        serial: 28031FDH2001XY
        profile: phone
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_compress.errors import UserError

ENV_VAR = "EDGE_COMPRESS_INVENTORY"
DEFAULT_PATH = "~/.config/edge-compress/inventory.yaml"
LOCAL = "local"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
DEFAULT_WORKDIR = "~/.cache/edge-compress"
ADB_WORKDIR = "/data/local/tmp/edge-compress"


class Target(BaseModel):
    """How to reach one device. Paths on the host (key_file, known_hosts) are ``~``-expanded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    transport: Literal["local", "ssh", "adb"]
    host: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    user: str | None = None
    key_file: str | None = None
    known_hosts: str | None = None
    trust_on_first_use: bool = False
    profile: str | None = None
    python: str = "python3"
    workdir: str | None = Field(
        default=None,
        description="work dir on the target (default ~/.cache/edge-compress; adb: /data/local/tmp/edge-compress)",
    )
    serial: str | None = None
    adb_path: str = "adb"
    benchmark_model: str | None = Field(
        default=None, description="host path of TFLite's benchmark_model binary to push (adb targets)"
    )
    env: dict[str, str] = Field(default_factory=dict)
    emulated: bool = False
    retries: int = Field(
        default=2, ge=0, le=10, description="ssh: reconnect attempts after a dropped connection"
    )
    warm_agent: bool = Field(
        default=True,
        description="ssh: keep one agent process per connection that has imported numpy and the "
        "runtimes and forks a fresh child per run (saves interpreter start-up and imports per run; "
        "costs that process's memory on the target while the connection is pooled)",
    )

    @field_validator("env", mode="before")
    @classmethod
    def _env_as_strings(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for k in v:
                if not re.match(ENV_NAME, str(k)):
                    raise ValueError(f"{k!r} is not a valid environment variable name")
            return {str(k): ("" if x is None else str(x)) for k, x in v.items()}
        return v

    @field_validator("key_file", "known_hosts", "benchmark_model")
    @classmethod
    def _expand_user(cls, v: str | None) -> str | None:
        return None if v is None else os.path.expanduser(v)

    @model_validator(mode="after")
    def _transport_fields(self) -> Target:
        if self.transport == "ssh" and not self.host:
            raise ValueError("an ssh target needs 'host'")
        if self.workdir is not None and not self.workdir.strip():
            raise ValueError("'workdir' must not be empty")
        return self

    @property
    def remote_workdir(self) -> str:
        """The work dir on the target: ``workdir``, else the transport's default."""
        if self.workdir:
            return self.workdir
        return ADB_WORKDIR if self.transport == "adb" else DEFAULT_WORKDIR

    @property
    def known_hosts_path(self) -> str:
        """The known_hosts file checked (and, with trust_on_first_use, written) for this target."""
        return self.known_hosts or os.path.expanduser("~/.ssh/known_hosts")

    def describe(self) -> str:
        """Where the target is, for tables: ``user@host:port``, ``adb:SERIAL`` or ``this machine``."""
        if self.transport == "ssh":
            user = f"{self.user}@" if self.user else ""
            return f"{user}{self.host}:{self.port}"
        if self.transport == "adb":
            return f"adb:{self.serial or '(only device)'}"
        return "this machine"

    def to_entry(self) -> dict[str, Any]:
        """The inventory entry (without the name and default values), ready for YAML."""
        rest = self.model_dump(exclude={"name", "transport"}, exclude_defaults=True)
        return {"transport": self.transport, **rest}


def local_target() -> Target:
    """The built-in ``local`` target: this machine, the current interpreter, the ``host`` profile."""
    import sys

    return Target(name=LOCAL, transport="local", python=sys.executable, profile="host")


@dataclass
class Inventory:
    """Targets by name, plus the file they came from (None when there is no inventory file)."""

    targets: dict[str, Target] = field(default_factory=dict)
    path: Path | None = None

    def names(self) -> list[str]:
        """Every target name, ``local`` included."""
        return sorted(set(self.targets) | {LOCAL})

    def get(self, name: str) -> Target:
        """The target called ``name``; ``local`` works without an entry."""
        if name in self.targets:
            return self.targets[name]
        if name == LOCAL:
            return local_target()
        where = f" in {self.path}" if self.path else f" (no inventory file at {inventory_path()})"
        raise UserError(f"unknown target {name!r}{where}; known targets: {', '.join(self.names())}.")


def inventory_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The inventory file to read: ``explicit``, else ``$EDGE_COMPRESS_INVENTORY``, else the default."""
    chosen = explicit or os.environ.get(ENV_VAR) or DEFAULT_PATH
    return Path(os.path.expanduser(str(chosen)))


def load_inventory(path: str | os.PathLike[str] | None = None) -> Inventory:
    """Read and validate the inventory. A missing default file is an empty inventory.

    Raises:
        UserError: the file named explicitly does not exist, is not valid YAML, or an entry is
            invalid (the message names the file, the line and the field).
    """
    explicit = path is not None or bool(os.environ.get(ENV_VAR))
    p = inventory_path(path)
    if not p.exists():
        if explicit:
            raise UserError(f"{p}: no such inventory file.")
        return Inventory(path=None)
    return parse_inventory(_read(p), p)


def _read(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{p}: cannot read the inventory ({e.strerror}).") from None


def parse_inventory(text: str, path: Path) -> Inventory:
    """Validate inventory YAML text; errors name ``path``, the line and the field."""
    import yaml

    try:
        root_node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}:{where} not valid YAML ({problem}).") from None
    if data is None:
        return Inventory(path=path)
    if not isinstance(data, dict) or set(data) - {"targets"}:
        raise UserError(f"{path}: an inventory is a mapping with one key, 'targets' (name -> entry).")
    entries = data.get("targets") or {}
    if not isinstance(entries, dict):
        raise UserError(f"{path}: 'targets' must map target names to entries.")
    targets: dict[str, Target] = {}
    for name, entry in entries.items():
        line = _line_of(root_node, ["targets", name])
        if not isinstance(entry, dict):
            raise UserError(f"{path}: line {line}: target {name!r} must be a mapping of fields.")
        try:
            targets[str(name)] = Target(name=str(name), **entry)
        except ValidationError as e:
            raise UserError(_format_error(path, root_node, str(name), e)) from None
    return Inventory(targets=targets, path=path)


def _format_error(path: Path, root_node: Any, name: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    field_name = ".".join(loc) or "(entry)"
    line = _line_of(root_node, ["targets", name, *loc[:1]])
    msg = first["msg"]
    if first["type"] == "missing":
        msg = "required field is missing"
    elif first["type"] == "extra_forbidden":
        msg = "unknown field (check spelling)"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{path}: line {line}: target {name!r}, field '{field_name}': {msg}."


def _line_of(node: Any, keys: list[str]) -> int:
    """1-based line of the deepest mapping key along ``keys`` that exists in the YAML node tree."""
    import yaml

    line = (node.start_mark.line + 1) if node is not None else 1
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if str(k.value) == key:
                line, node = k.start_mark.line + 1, v
                break
        else:
            break
    return line


def inventory_entry_yaml(target: Target) -> str:
    """The YAML snippet of one target, as it would appear under ``targets:``."""
    import yaml

    return yaml.safe_dump({target.name: target.to_entry()}, sort_keys=False, default_flow_style=False)
