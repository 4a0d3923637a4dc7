"""Device profiles: built-ins validate, user overrides and `extends`, clear one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_compress.errors import UserError
from edge_compress.profiles import BUILTIN_DIR, list_profiles, load_profile, load_profile_file, parse_budget

REQUIRED = {"phone", "automotive-sensor", "satellite", "rpi4", "rpi5", "host"}


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_compress", *args], capture_output=True, text=True, env=env
    )


def test_builtin_profiles_present_and_valid():
    names = set(list_profiles())
    assert REQUIRED <= names
    for n in REQUIRED:
        p = load_profile(n)
        assert p.name == n
        assert p.compute.peak_macs_per_s["fp32"] > 0
        assert p.power.active_w >= p.power.idle_w
        assert len(p.compute.source) > 10 and len(p.memory.source) > 10 and len(p.power.source) > 10


def test_profile_semantics():
    phone = load_profile("phone")
    assert phone.cores == 8 and len(phone.compute.clusters) == 3
    assert phone.weight_bits("depthwise_conv") == (8,)
    assert phone.weight_bits("conv") == (8, 4)
    sat = load_profile("satellite")
    assert sat.budgets.avg_power_w and sat.budgets.duty_cycle_hz and sat.budgets.energy_per_inference_mj
    assert load_profile("automotive-sensor").budgets.latency_p99_ms <= 20
    assert load_profile("host").transport == "local"


def test_profiles_are_frozen():
    p = load_profile("rpi4")
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        p.name = "x"  # type: ignore[misc]


def _write(d: Path, name: str, data: dict) -> Path:
    f = d / f"{name}.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


def test_extends_and_override(tmp_path):
    _write(
        tmp_path,
        "my-pi",
        {"extends": "rpi4", "description": "lab Pi with a tight budget", "budgets": {"latency_p99_ms": 7}},
    )
    p = load_profile("my-pi", [tmp_path])
    assert p.budgets.latency_p99_ms == 7
    assert p.budgets.peak_memory_mb == load_profile("rpi4").budgets.peak_memory_mb  # inherited
    assert p.compute == load_profile("rpi4").compute
    # a user file with a built-in's name overrides it, extending the built-in
    _write(tmp_path, "phone", {"extends": "phone", "budgets": {"model_bytes": 1234}})
    assert load_profile("phone", [tmp_path]).budgets.model_bytes == 1234
    assert load_profile("phone").budgets.model_bytes != 1234


def test_an_edited_profile_is_read_again(tmp_path):
    # parsed files are reused within a process (a nightly run resolves them per cell), never stale
    _write(tmp_path, "my-pi", {"extends": "rpi4", "budgets": {"latency_p99_ms": 7}})
    first = load_profile("my-pi", [tmp_path])
    assert first.budgets.latency_p99_ms == 7
    _write(tmp_path, "my-pi", {"extends": "rpi4", "budgets": {"latency_p99_ms": 11.5}})
    assert load_profile("my-pi", [tmp_path]).budgets.latency_p99_ms == 11.5
    # a caller mutating what it got does not change the next load
    assert load_profile("my-pi", [tmp_path]) == load_profile("my-pi", [tmp_path])


def test_env_var_dirs(tmp_path, monkeypatch):
    _write(tmp_path, "envdev", {"extends": "host", "description": "from env"})
    monkeypatch.setenv("EDGE_COMPRESS_PROFILES", str(tmp_path))
    assert load_profile("envdev").description == "from env"


def test_unknown_profile_lists_known():
    with pytest.raises(UserError) as e:
        load_profile("nope")
    msg = str(e.value)
    assert "nope" in msg and "rpi4" in msg and "phone" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("compute"), "compute"),
        (lambda d: d["budgets"].__setitem__("latency_p99_ms", "fast"), "budgets.latency_p99_ms"),
        (lambda d: d["power"].__setitem__("active_w", 0.1), "power"),
        (lambda d: d.__setitem__("transport", "carrier-pigeon"), "transport"),
        (lambda d: d["budgets"].__setitem__("latency_p99", 3), "budgets.latency_p99"),
        (lambda d: d["precisions"].pop("depthwise_conv"), "precisions"),
    ],
)
def test_broken_profile_names_file_and_field(tmp_path, mutate, field):
    data = yaml.safe_load((BUILTIN_DIR / "rpi4.yaml").read_text())
    data["name"] = "broken"
    mutate(data)
    f = _write(tmp_path, "broken", data)
    with pytest.raises(UserError) as e:
        load_profile_file(f)
    msg = str(e.value)
    assert str(f) in msg and field in msg and "\n" not in msg


def test_malformed_yaml_names_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: bad\ncompute: [unclosed\n")
    with pytest.raises(UserError) as e:
        load_profile_file(f)
    assert "line" in str(e.value) and str(f) in str(e.value)


def test_extends_cycle(tmp_path):
    _write(tmp_path, "a", {"extends": "b"})
    _write(tmp_path, "b", {"extends": "a"})
    with pytest.raises(UserError, match="cycle"):
        load_profile("a", [tmp_path])


def test_parse_budget_units():
    b = parse_budget("bytes=200KB, latency_p99=15ms, energy=5mJ, power=2W@10Hz, memory=1GB")
    assert b == {
        "model_bytes": 200_000,
        "latency_p99_ms": 15.0,
        "energy_per_inference_mj": 5.0,
        "avg_power_w": 2.0,
        "duty_cycle_hz": 10.0,
        "peak_memory_mb": 1000.0,
    }
    assert parse_budget("latency=0.5s")["latency_p99_ms"] == 500.0
    assert parse_budget("bytes=1MiB")["model_bytes"] == 1024 * 1024
    for bad in ("latency=fast", "bogus=1", "latency_p99", "bytes=10parsecs", "power=2W"):
        with pytest.raises(UserError):
            parse_budget(bad)


def test_cli_validate_and_exit_codes(tmp_path):
    r = cli("profiles", "validate", "--json")
    assert r.returncode == 0, r.stderr
    assert all(x["ok"] for x in json.loads(r.stdout))
    f = tmp_path / "broken.yaml"
    f.write_text("name: broken\ndescription: x\n")
    r = cli("profiles", "validate", str(f))
    assert r.returncode == 2 and "device_class" in r.stdout and "Traceback" not in r.stdout + r.stderr
    r = cli("profiles", "show", "nope")
    assert r.returncode == 2 and "known profiles" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("profiles", "show", "satellite", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["budgets"]["duty_cycle_hz"] == 0.5
