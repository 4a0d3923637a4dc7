"""The lab commands without a cluster: what a node advertises, bad input, lean imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_compress.lab.board import LabBoard
from edge_compress.lab.resources import capabilities_of, host_capabilities, node_resources, targets_of
from tests.lab.conftest import free_port
from tests.nightly.conftest import run_main
from tests.sshd import SSHServer


def test_node_resources_round_trip() -> None:
    res = node_resources(["pi5", "pixel7", "pi5"], ["ssh", "adb"])
    assert res == {"target:pi5": 1.0, "target:pixel7": 1.0, "cap:adb": 1000.0, "cap:ssh": 1000.0}
    assert targets_of({**res, "CPU": 2.0, "target:gone": 0.0}) == ["pi5", "pixel7"]
    assert capabilities_of(res) == ["adb", "ssh"]


def test_adb_capability_only_with_an_adb_binary() -> None:
    class T:
        transport, adb_path = "adb", "/usr/local/android-sdk/platform-tools/adb"

    assert host_capabilities([T()], which=lambda p: None) == ["ssh"]
    assert host_capabilities(
        [T()], which=lambda p: p if p == "/usr/local/android-sdk/platform-tools/adb" else None
    ) == ["adb", "ssh"]


def test_board_tracks_queued_running_and_done_cells() -> None:
    b = LabBoard("s", 7, "head")
    b.queue([("k1", "a0"), ("k2", "a0"), ("k3", "b0")])
    b.started("k1", "a0", "n1", "lab-a", 100.0)
    b.finished("k3", "infra_failure")
    b.started("k3", "b0", "n2", "lab-b", 101.0)  # arrives after the driver's "finished": ignored
    snap = b.snapshot()
    assert snap["queued"] == 1 and snap["queued_cells"] == [{"key": "k2", "target": "a0"}]
    assert [r["key"] for r in snap["running"]] == ["k1"] and snap["running"][0]["node"] == "lab-a"
    assert (snap["done"], snap["failed"]) == (1, 1)
    assert b.where("k1")["node_id"] == "n1" and b.where("k2") is None


@pytest.mark.ssh
def test_join_advertises_only_the_targets_that_answer(
    tmp_path: Path, sshd: SSHServer, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = sshd.write_inventory(
        tmp_path / "inv.yaml", "board", python=sys.executable, workdir=str(tmp_path / "w")
    )
    sshd.write_inventory(inv, "gone", port=free_port())  # nothing listens there
    rc, out, err = run_main(
        capsys, "lab", "join", "--address", "lab-head:6379", "--inventory", str(inv), "--name", "bench-1",
        "--cache-dir", str(tmp_path / "cache"), "--dry-run", "--json", "--", "--include-log-monitor=false",
    )  # fmt: skip
    assert rc == 0, err
    plan = json.loads(out)
    assert plan["resources"] == {"target:board": 1.0, "cap:ssh": 1000.0}
    assert [s["name"] for s in plan["skipped"]] == ["gone"] and plan["skipped"][0]["reason"]
    assert [t["name"] for t in plan["targets"]] == ["board"]
    assert plan["env"]["EDGE_COMPRESS_INVENTORY"] == str(inv.resolve())
    assert plan["env"]["EDGE_COMPRESS_LAB_NODE"] == "bench-1"
    assert plan["env"]["EDGE_COMPRESS_LAB_CACHE"] == str((tmp_path / "cache").resolve())
    argv = plan["argv"]
    assert argv[1:4] == ["-m", "ray.scripts.scripts", "start"] and "--address=lab-head:6379" in argv
    assert json.loads(next(a for a in argv if a.startswith("--resources="))[12:]) == plan["resources"]
    assert argv[-1] == "--include-log-monitor=false" and "--block" not in argv


def test_join_without_check_and_with_chosen_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = tmp_path / "inv.yaml"
    entries = {n: {"transport": "ssh", "host": f"{n}.lab", "profile": "rpi5"} for n in ("p1", "p2", "p3")}
    inv.write_text(yaml.safe_dump({"targets": entries}))
    rc, out, err = run_main(
        capsys, "lab", "join", "--address", "10.0.0.1:6379", "--inventory", str(inv), "--no-check",
        "--target", "p3", "--target", "p1", "--num-cpus", "2", "--object-store-memory", "150MB",
        "--block", "--dry-run", "--json",
    )  # fmt: skip
    assert rc == 0, err
    plan = json.loads(out)
    assert sorted(plan["resources"]) == ["cap:ssh", "target:p1", "target:p3"]
    assert "--num-cpus=2" in plan["argv"] and "--object-store-memory=150000000" in plan["argv"]
    assert "--block" in plan["argv"]


def test_head_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = tmp_path / "inv.yaml"
    inv.write_text("targets: {}\n")
    rc, out, err = run_main(
        capsys, "lab", "head", "--port", "7000", "--client-port", "7001", "--inventory", str(inv), "--dry-run",
        "--json",
    )  # fmt: skip
    assert rc == 0, err
    plan = json.loads(out)
    assert plan["head"] and plan["targets"] == [] and plan["resources"] == {"cap:ssh": 1000.0}
    assert {"--head", "--port=7000", "--ray-client-server-port=7001", "--include-dashboard=false"} <= set(
        plan["argv"]
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["lab", "join", "--address", "ray://h:10001", "--dry-run"], "not a ray:// client address"),
        (["lab", "join", "--address", "lab-head", "--dry-run"], "expected HOST:PORT"),
        (
            ["lab", "join", "--address", "h:1", "--object-store-memory", "lots", "--dry-run"],
            "object-store-memory",
        ),
        (["lab", "join", "--address", "h:1", "--target", "nope", "--dry-run"], "unknown target 'nope'"),
        (["lab", "status", "--cluster", "what ever"], "use auto, ray://HOST:PORT or HOST:PORT"),
        (["nightly", "suite.yaml", "--cluster", "ray://nohost"], "use auto, ray://HOST:PORT or HOST:PORT"),
    ],
)
def test_bad_input_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGE_COMPRESS_INVENTORY", str(tmp_path / "inv.yaml"))
    (tmp_path / "inv.yaml").write_text("targets: {}\n")
    (tmp_path / "suite.yaml").write_text(
        "name: s\nmodels: [m.onnx]\ncompile: [{name: a, method: none}]\ntargets: [x]\n"
    )
    (tmp_path / "m.onnx").write_bytes(b"")
    rc, out, err = run_main(capsys, *args)
    assert rc == 2, out + err
    assert message in " ".join(err.split()), err
    assert "Traceback" not in err


@pytest.mark.skipif(
    not __import__("importlib").util.find_spec("ray"), reason="the lab extra is not installed"
)
def test_status_of_a_lab_that_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_main(capsys, "lab", "status", "--cluster", f"127.0.0.1:{free_port()}")
    assert rc == 2 and "cannot reach the lab head" in err, err


def test_commands_and_executors_do_not_import_ray() -> None:
    code = (
        "import sys, json\n"
        "import edge_compress, edge_compress.executor, edge_compress.cli as c\n"
        "import edge_compress.lab.executor, edge_compress.lab.cluster, edge_compress.lab.tasks\n"
        "c._load_commands()\n"
        "from edge_compress.executor import get_executor\n"
        "assert type(get_executor('local')).__name__ == 'LocalPoolExecutor'\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'ray')))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert json.loads(out) == []
