"""SSHRunner against a real OpenSSH server on loopback (tests/sshd.py)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from runners.agent.host import sha256_file
from runners.base import Measurement, RunRequest
from runners.inventory import Target
from runners.ssh import SSHRunner
from tests.runners.models import make_linear_onnx, make_onnx_model
from tests.sshd import SSHServer

pytestmark = pytest.mark.ssh
WEIRD = "a b;$(touch pwned)'\""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_onnx_model(tmp_path_factory.mktemp("model") / "conv.onnx")  # about 1 ms per inference


def target(server: SSHServer, workdir: Path, **kw: Any) -> Target:
    entry = server.inventory_entry(python=sys.executable, workdir=str(workdir), profile="host")
    entry.update(kw)
    return Target(name=kw.pop("name", "board"), **entry)


def quick(model: Path, **kw: Any) -> RunRequest:
    base: dict[str, Any] = {
        "min_count": 30,
        "min_duration_s": 0.1,
        "warmup": 3,
        "cooldown_s": 0.1,
        "timeout_s": 120,
    }
    base.update(kw)
    return RunRequest(str(model), **base)


def agent_processes(marker: str) -> list[psutil.Process]:
    """Running agents (the python process, not the shell around it) under a work dir."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        argv = p.info["cmdline"] or []
        if len(argv) >= 2 and argv[1].endswith("agent.py") and marker in argv[1]:
            found.append(p)
    return found


def test_full_bench_then_cache_hit(sshd: SSHServer, tmp_path: Path, model: Path) -> None:
    work = tmp_path / "work"
    runner = SSHRunner(target(sshd, work))
    m = runner.run(quick(model))
    assert m.ok, m.error
    lat = np.array(m.latency_ms)
    assert m.stats is not None and m.stats.count == len(lat) >= 30
    assert m.stats.median_ms == pytest.approx(np.median(lat))
    assert m.stats.p99_ms == pytest.approx(np.percentile(lat, 99))
    assert m.stats.min_ms == lat.min() and m.stats.max_ms == lat.max()
    assert m.stats.median_ci95_ms[0] <= m.stats.median_ms <= m.stats.median_ci95_ms[1]
    assert m.runtime == "onnxruntime" and m.machine and m.wall_s and m.wall_s > 0
    assert m.energy is not None and m.energy.measured is False  # no sensor here: labelled estimate
    assert m.pushed_bytes is not None and m.pushed_bytes > model.stat().st_size
    blob = work / "blobs" / sha256_file(model) / "conv.onnx"
    assert blob.read_bytes() == model.read_bytes()

    again = runner.run(quick(model))
    assert again.ok, again.error
    assert again.pushed_bytes == 0 and set(again.extra["pushed"].values()) == {0}
    assert blob.exists() and list((work / "runs").iterdir()) == []  # run dirs cleaned up


def test_connection_is_reused_between_runs_and_renewed_after_a_drop(
    sshd: SSHServer, tmp_path: Path, model: Path
) -> None:
    """A nightly run builds a runner per cell: the target's next run reuses the open connection;
    a connection that dropped while idle, or a known_hosts file that changed, means a fresh one."""
    from runners.ssh import close_pooled_sessions
    from tests.sshd import _descendants, _kill

    close_pooled_sessions()
    t = target(sshd, tmp_path / "w")
    first = SSHRunner(t).run(quick(model))
    assert first.ok and first.extra["connection_reused"] is False, first.error
    second = SSHRunner(t).run(quick(model))
    assert second.ok and second.extra["connection_reused"] is True, second.error
    # the device drops every connection (the server's session processes die, the listener stays)
    for pid in _descendants(sshd.process.pid):
        _kill(pid)
    third = SSHRunner(t).run(quick(model))
    assert third.ok, third.error
    assert third.extra["connection_reused"] is False and third.extra["attempts"] == 1
    # the trusted keys changed: the connection is made (and the host key checked) again
    kh = Path(t.known_hosts_path)
    kh.write_text(kh.read_text() + "# reviewed\n")
    fourth = SSHRunner(t).run(quick(model))
    assert fourth.ok and fourth.extra["connection_reused"] is False, fourth.error
    assert close_pooled_sessions() == 1


def test_changed_host_key_is_refused_even_with_tofu(sshd: SSHServer, tmp_path: Path, model: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[{sshd.host}]:{sshd.port} {other}\n")
    for tofu in (False, True):
        m = SSHRunner(target(sshd, tmp_path / "w", known_hosts=str(kh), trust_on_first_use=tofu)).run(
            quick(model)
        )
        assert not m.ok and m.error_kind == "host_key" and "CHANGED" in m.error
        assert m.extra["attempts"] == 1  # never retried
    assert kh.read_text() == f"[{sshd.host}]:{sshd.port} {other}\n"


def test_unknown_host_refused_then_trusted_on_first_use(sshd: SSHServer, tmp_path: Path, model: Path) -> None:
    kh = tmp_path / "kh" / "known_hosts"
    m = SSHRunner(target(sshd, tmp_path / "w", known_hosts=str(kh))).run(quick(model))
    assert m.error_kind == "host_key" and "not in" in m.error and "trust_on_first_use" in m.error
    assert not kh.exists()

    m = SSHRunner(target(sshd, tmp_path / "w", known_hosts=str(kh), trust_on_first_use=True)).run(
        quick(model)
    )
    assert m.ok, m.error
    assert m.extra["host_keys_added"][0].startswith(f"[{sshd.host}]:{sshd.port} ssh-ed25519 SHA256:")
    assert sshd.host_public_key in kh.read_text()
    m = SSHRunner(target(sshd, tmp_path / "w", known_hosts=str(kh))).run(quick(model))  # now known
    assert m.ok and "host_keys_added" not in m.extra


def test_wrong_user_key_is_a_connection_error_not_retried(
    sshd: SSHServer, tmp_path: Path, model: Path
) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    m = SSHRunner(target(sshd, tmp_path / "w", key_file=str(tmp_path / "k"))).run(quick(model))
    assert m.error_kind == "connection" and "authentication" in m.error and m.extra["attempts"] == 1


def test_sshd_killed_mid_run(sshd: SSHServer, tmp_path: Path, model: Path) -> None:
    work = tmp_path / "killed"
    runner = SSHRunner(target(sshd, work), backoff_s=0.05)
    out: list[Measurement] = []
    th = threading.Thread(
        target=lambda: out.append(runner.run(quick(model, min_duration_s=30, timeout_s=90)))
    )
    th.start()
    deadline = time.monotonic() + 60
    while not agent_processes(str(work)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent_processes(str(work)), "the agent never started"
    time.sleep(0.3)
    sshd.kill()
    th.join(timeout=60)
    (m,) = out
    assert m.ok is False and m.error_kind == "connection"
    assert "lost" in m.error and "retries failed" in m.error
    assert m.stats is None and m.latency_ms == []


def test_paths_with_spaces_and_shell_metacharacters(sshd: SSHServer, tmp_path: Path) -> None:
    weird_dir = tmp_path / WEIRD
    weird_dir.mkdir()
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3)).astype(np.float32)
    model = make_linear_onnx(weird_dir / f"{WEIRD}.onnx", w)
    x = rng.standard_normal((20, 5)).astype(np.float32)
    np.savez(weird_dir / f"{WEIRD} acc.npz", x=x, y=(x @ w).argmax(1))
    np.savez(weird_dir / f"{WEIRD} in.npz", x=x[:2])
    work = tmp_path / WEIRD / "work dir"
    runner = SSHRunner(target(sshd, work, env={"EDGE_NOTE": WEIRD}))
    m = runner.run(
        quick(
            model,
            inputs_npz=str(weird_dir / f"{WEIRD} in.npz"),
            accuracy_npz=str(weird_dir / f"{WEIRD} acc.npz"),
        )
    )
    assert m.ok, m.error
    assert m.accuracy == 1.0 and m.extra["inputs_source"] == "npz"
    assert (work / "blobs" / sha256_file(model) / f"{WEIRD}.onnx").is_file()
    for place in (tmp_path, Path.home(), Path.cwd(), sshd.directory, work):
        assert not list(place.glob("pwned")), place
    assert not [p for p in tmp_path.rglob("pwned")]


def test_timeout_kills_the_remote_agent(sshd: SSHServer, tmp_path: Path, model: Path) -> None:
    work = tmp_path / "slow"
    m = SSHRunner(target(sshd, work)).run(quick(model, min_duration_s=60, timeout_s=3))
    assert m.ok is False and m.error_kind == "timeout" and "killed" in m.error
    deadline = time.monotonic() + 5
    while agent_processes(str(work)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert agent_processes(str(work)) == []
    assert list((work / "runs").iterdir()) == []


def test_targets_check(sshd: SSHServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge_compress.cli import main

    inv = sshd.write_inventory(
        tmp_path / "inv.yaml", "board", python=sys.executable, workdir=str(tmp_path / "w")
    )
    assert main(["targets", "check", "board", "--inventory", str(inv), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["reachable"] and row["ok"] and row["runtimes"]["onnxruntime"] and row["machine"]
    assert row["meters"] == [] and row["python"]

    sshd.stop()
    assert main(["targets", "check", "board", "--inventory", str(inv), "--json"]) == 1
    (row,) = json.loads(capsys.readouterr().out)
    assert row["reachable"] is False and row["error_kind"] == "connection"


def _setup_args(sshd: SSHServer, tmp_path: Path) -> list[str]:
    base_py = getattr(sys, "_base_executable", sys.executable)  # the interpreter below this venv
    inv = sshd.write_inventory(tmp_path / "inv.yaml", "board", python=base_py, workdir=str(tmp_path / "w"))
    return [
        "targets",
        "setup",
        "board",
        "--inventory",
        str(inv),
        "--runtime",
        "none",
        "--system-site-packages",
        "--pip-args",
        "--no-index",
        "--json",
    ]


def test_targets_setup_dry_run(sshd: SSHServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge_compress.cli import main

    wheel = tmp_path / f"{WEIRD}-1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    assert main([*_setup_args(sshd, tmp_path), "--dry-run", "--wheel", str(wheel)]) == 0
    dry = json.loads(capsys.readouterr().out)
    create, install = dry["commands"]
    assert create.endswith(f"-m venv --system-site-packages {tmp_path}/w/venv")
    assert "--no-index numpy " in install and shlex.split(install)[-1].endswith(wheel.name)
    assert dry["inventory_entry"].startswith("board:\n  transport: ssh")


@pytest.mark.slow
def test_targets_setup_creates_a_venv(
    sshd: SSHServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_compress.cli import main

    rc = main(_setup_args(sshd, tmp_path))
    report = json.loads(capsys.readouterr().out)
    if rc != 0 and "numpy" in str(report.get("error")):
        pytest.skip("the base interpreter has no numpy for an offline venv")
    assert rc == 0, report
    assert report["python"].endswith("/w/venv/bin/python") and (tmp_path / "w/venv/bin/python").exists()
    assert report["probe"]["runtimes"]["numpy"]
    assert "python: " + str(tmp_path / "w/venv/bin/python") in report["inventory_entry"]


def test_paired_run_pushes_both_models_and_returns_the_blocks(
    sshd: SSHServer, tmp_path: Path, model: Path
) -> None:
    work = tmp_path / "work"
    other = make_onnx_model(tmp_path / "other.onnx", layers=2)
    m = SSHRunner(target(sshd, work)).run(
        quick(model, paired_model_path=str(other), paired_rounds=1, detect_throttle=False)
    )
    assert m.ok, m.error
    assert [(b["role"], b["round"]) for b in m.extra["paired_blocks"]] == [("baseline", 0), ("candidate", 0)]
    for f in (model, other):
        assert (work / "blobs" / sha256_file(f) / f.name).read_bytes() == f.read_bytes()


def test_warm_agent_serves_runs_and_restarts_when_it_dies(
    sshd: SSHServer, tmp_path: Path, model: Path
) -> None:
    """Runs on a pooled connection go through one warm agent (same serving process, a new child
    per run); an agent that died while idle is restarted for the next run without a retry;
    ``warm_agent: false`` runs one agent process per run."""
    from runners.ssh import close_pooled_sessions

    close_pooled_sessions()
    t = target(sshd, tmp_path / "w")
    first = SSHRunner(t).run(quick(model))
    second = SSHRunner(t).run(quick(model))
    for m in (first, second):
        assert m.ok, m.error
        assert m.extra["agent_mode"] == "warm" and m.peak_rss_bytes and m.peak_rss_bytes > 10e6
    assert first.extra["warm_agent_pid"] == second.extra["warm_agent_pid"]
    assert second.extra["warm_agent_runs"] == first.extra["warm_agent_runs"] + 1
    assert len({first.extra["run_pid"], second.extra["run_pid"], first.extra["warm_agent_pid"]}) == 3
    assert list((tmp_path / "w" / "runs").iterdir()) == []
    # one warm agent per model format, its runtime imported up front: an ONNX run inherits
    # onnxruntime and nothing else, whatever ran on the connection before
    info = SSHRunner(t).prepare(formats=(".onnx", ".tflite"))
    assert info["warm_agent_pids"][".onnx"] == first.extra["warm_agent_pid"]
    assert info["warm_agent_pids"][".tflite"] != first.extra["warm_agent_pid"]
    assert "onnxruntime" in info["preloaded"][".onnx"] and "onnxruntime" not in info["preloaded"][".tflite"]
    agent = psutil.Process(first.extra["warm_agent_pid"])
    agent.kill()
    agent.wait(10)
    third = SSHRunner(t).run(quick(model))
    assert third.ok and third.extra["agent_mode"] == "warm", third.error
    assert third.extra["warm_agent_pid"] != first.extra["warm_agent_pid"] and third.extra["attempts"] == 1
    cold = SSHRunner(target(sshd, tmp_path / "c", warm_agent=False)).run(quick(model))
    assert cold.ok and cold.extra["agent_mode"] == "cold" and "warm_agent_pid" not in cold.extra
    close_pooled_sessions()
    deadline = time.monotonic() + 10  # the warm agent ends with its connection
    while psutil.pid_exists(third.extra["warm_agent_pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(third.extra["warm_agent_pid"])


def test_interpreter_without_serve_falls_back_to_one_process_per_run(
    sshd: SSHServer, tmp_path: Path, model: Path
) -> None:
    """A target whose interpreter cannot run the warm agent still measures, one agent process per
    run, and says why."""
    from runners.ssh import close_pooled_sessions

    close_pooled_sessions()
    wrapper = tmp_path / "python-no-serve"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case "$2" in --serve) echo "serving is disabled on this board" >&2; exit 3;; esac\n'
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    wrapper.chmod(0o755)
    t = target(sshd, tmp_path / "w")
    t = t.model_copy(update={"python": str(wrapper)})
    for _ in range(2):
        m = SSHRunner(t).run(quick(model))
        assert m.ok and m.extra["agent_mode"] == "cold", m.error
        assert "serving is disabled on this board" in m.extra["warm_agent_unavailable"]
    close_pooled_sessions()
