"""Inventory parsing, validation messages and runner lookup."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edge_compress.errors import UserError
from runners.inventory import (
    ADB_WORKDIR,
    DEFAULT_WORKDIR,
    ENV_VAR,
    inventory_entry_yaml,
    load_inventory,
    parse_inventory,
)
from runners.registry import get_runner

GOOD = """\
targets:
  pi5:
    transport: ssh
    host: 192.0.2.10
    user: pi
    key_file: ~/.ssh/id_ed25519
    profile: rpi5
    env: {OMP_NUM_THREADS: 4}
  pixel:
    transport: adb
    serial: ABC123
    profile: phone
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "inventory.yaml"
    p.write_text(text)
    return p


def test_valid_inventory_with_defaults(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, GOOD))
    assert inv.names() == ["local", "pi5", "pixel"]
    pi = inv.get("pi5")
    assert (pi.port, pi.python, pi.remote_workdir, pi.trust_on_first_use) == (
        22,
        "python3",
        DEFAULT_WORKDIR,
        False,
    )
    assert pi.key_file == str(Path("~/.ssh/id_ed25519").expanduser())
    assert pi.env == {"OMP_NUM_THREADS": "4"}
    assert inv.get("pixel").remote_workdir == ADB_WORKDIR
    assert inv.get("local").python == sys.executable


def test_local_needs_no_inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    inv = load_inventory()
    assert inv.path is None and inv.names() == ["local"]
    assert get_runner("local").name == "local"


def test_env_var_selects_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(write(tmp_path, GOOD)))
    assert "pi5" in load_inventory().names()
    assert type(get_runner("pi5")).__name__ == "SSHRunner"
    assert type(get_runner("pixel")).__name__ == "AdbRunner"


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such inventory file"):
        load_inventory(tmp_path / "nope.yaml")


def test_unknown_target_lists_known(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        get_runner("pi4", write(tmp_path, GOOD))
    assert "unknown target 'pi4'" in str(e.value) and "local, pi5, pixel" in str(e.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "targets:\n  a:\n    transport: ssh\n    host: h\n    prot: 22\n",
            "line 5: target 'a', field 'prot': unknown field",
        ),
        (
            "targets:\n  a:\n    transport: ssh\n    port: 99999\n    host: h\n",
            "line 4: target 'a', field 'port'",
        ),
        (
            "targets:\n  a:\n    transport: ssh\n",
            "line 2: target 'a', field '(entry)': an ssh target needs 'host'",
        ),
        ("targets:\n  a:\n    transport: serial\n", "line 3: target 'a', field 'transport'"),
        ("targets:\n  bad name:\n    transport: local\n", "field 'name'"),
        (
            "targets:\n  a:\n    transport: local\n    env: {'1X': y}\n",
            "not a valid environment variable name",
        ),
        ("targets:\n  a: [1, 2\n", "line 3, column 1: not valid YAML"),
        ("hosts: {}\n", "one key, 'targets'"),
    ],
)
def test_malformed_names_file_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(UserError) as e:
        load_inventory(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and expected in msg and "\n" not in msg


def test_entry_yaml_round_trips(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, GOOD))
    pi = inv.get("pi5").model_copy(update={"python": "~/.cache/edge-compress/venv/bin/python"})
    text = "targets:\n" + "".join("  " + line + "\n" for line in inventory_entry_yaml(pi).splitlines())
    again = parse_inventory(text, tmp_path / "x.yaml").get("pi5")
    assert again == pi
