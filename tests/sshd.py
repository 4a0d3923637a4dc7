"""A real OpenSSH server on loopback, for tests and benchmarks of the SSH transport.

Use as a pytest plugin (``pytest_plugins = ["tests.sshd"]``)::

    def test_x(sshd):                      # one server
        inv = sshd.write_inventory(tmp_path / "inventory.yaml", "board")

    def test_y(sshd_factory):              # several, started in parallel
        servers = sshd_factory(4)

or, outside pytest (benchmarks), through the plain function :func:`start_sshd`. Each server runs
``/usr/sbin/sshd -D -e -f <own config>`` on 127.0.0.1 and a free port, with a generated ed25519
host key, a generated user key in its own authorized_keys, ``UsePAM no``, ``StrictModes no``, the
current user allowed (root by key only), and a known_hosts file holding its host key. Sessions
start with ``SHLVL=1`` so bash does not source the user's ``~/.bashrc`` for each command (a
developer's rc file can take a second, e.g. ``pyenv init``; a board's default one does not). Tests skip
with a clear reason when sshd (Debian's openssh-server) is not installed.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SSHD = os.environ.get("EDGE_COMPRESS_TEST_SSHD", "/usr/sbin/sshd")
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
SKIP_REASON = (
    f"OpenSSH server not installed ({SSHD} missing): apt-get install openssh-server to run the SSH tests"
)


def sshd_available() -> bool:
    """True when sshd and ssh-keygen are installed."""
    return os.access(SSHD, os.X_OK) and os.access(SSH_KEYGEN, os.X_OK)


@dataclass
class SSHServer:
    """One running sshd. ``known_hosts`` holds its host key; ``key_file`` is the user's key."""

    host: str
    port: int
    user: str
    key_file: str
    known_hosts: str
    host_public_key: str  # "ssh-ed25519 AAAA..."
    directory: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def inventory_entry(self, **overrides: Any) -> dict[str, Any]:
        """An inventory entry (``transport: ssh`` ...) reaching this server; ``overrides`` win."""
        entry: dict[str, Any] = {
            "transport": "ssh",
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "key_file": self.key_file,
            "known_hosts": self.known_hosts,
        }
        entry.update(overrides)
        return entry

    def write_inventory(self, path: str | Path, name: str = "sshd", **overrides: Any) -> Path:
        """Add (or replace) target ``name`` in the inventory YAML at ``path``; returns the path."""
        import yaml

        path = Path(path)
        data = yaml.safe_load(path.read_text()) if path.exists() else None
        data = data or {"targets": {}}
        data.setdefault("targets", {})[name] = self.inventory_entry(**overrides)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {self.host_public_key}\n"

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the server and every process below it (sessions, the agent): a dropped device.

        Call it once the command of interest runs (e.g. the agent's python), not while a session
        shell may still be in its rc files: killed mid-way, those can leave stale locks behind.
        """
        for pid in _descendants(self.process.pid):
            _kill(pid)
        _kill(self.process.pid)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server and its sessions (idempotent)."""
        if self.process.poll() is None:
            for pid in _descendants(self.process.pid):
                _kill(pid)
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _descendants(pid: int) -> list[int]:
    try:
        import psutil

        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001 - the process may be gone already
        return []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(d: Path, port: int, user: str) -> str:
    return "\n".join(
        [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {d / 'host_key'}",
            f"PidFile {d / 'sshd.pid'}",
            f"AuthorizedKeysFile {d / 'authorized_keys'}",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            f"AllowUsers {user}",
            "Subsystem sftp internal-sftp",
            # bash sources ~/.bashrc for ssh commands only at shell level 1: starting sessions at
            # SHLVL=1 keeps the test user's rc files (pyenv init, rehash locks) out of every command.
            "SetEnv SHLVL=1",
            "MaxStartups 100:30:200",
            "MaxSessions 50",
            "LogLevel ERROR",
            "",
        ]
    )


def _ensure_privsep_dir() -> None:
    """sshd started by root wants its privilege-separation directory (created by the service)."""
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"sshd exited with {proc.returncode}: {log.read_text(errors='replace').strip()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not answer on port {port} within {timeout_s:g} s")


def start_sshd(directory: str | Path | None = None, *, attempts: int = 5) -> SSHServer:
    """Start one sshd on 127.0.0.1 (a free port) with generated keys; the caller stops it.

    Raises:
        RuntimeError: sshd is not installed or does not start.
    """
    if not sshd_available():
        raise RuntimeError(SKIP_REASON)
    _ensure_privsep_dir()
    d = Path(directory or tempfile.mkdtemp(prefix="sshd-"))
    d.mkdir(parents=True, exist_ok=True)
    user = getpass.getuser()
    host_pub = _keygen(d / "host_key", "test-host")
    user_pub = _keygen(d / "user_key", "test-user")
    (d / "authorized_keys").write_text(user_pub + "\n")
    for attempt in range(attempts):
        port = free_port()
        (d / "sshd_config").write_text(_config(d, port, user))
        log = d / "sshd.log"
        with open(log, "wb") as log_f:
            proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_f,
            )
        try:
            _wait_ready(proc, port, log)
        except RuntimeError:
            proc.kill()
            proc.wait()
            if attempt == attempts - 1:
                raise
            continue
        server = SSHServer(
            "127.0.0.1", port, user, str(d / "user_key"), str(d / "known_hosts"), host_pub, d, proc
        )
        Path(server.known_hosts).write_text(server.known_hosts_line())
        return server
    raise RuntimeError("sshd did not start")  # pragma: no cover


def start_many(n: int, base: str | Path | None = None) -> list[SSHServer]:
    """Start ``n`` servers in parallel (each in its own directory under ``base``)."""
    root = Path(base or tempfile.mkdtemp(prefix="sshd-many-"))
    with ThreadPoolExecutor(max_workers=min(8, max(1, n))) as pool:
        return list(pool.map(lambda i: start_sshd(root / f"sshd{i}"), range(n)))


@pytest.fixture
def sshd_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[int], list[SSHServer]]]:
    """``factory(n)`` starts ``n`` loopback sshd servers in parallel; all stop at teardown."""
    if not sshd_available():
        pytest.skip(SKIP_REASON)
    started: list[SSHServer] = []

    def factory(n: int = 1) -> list[SSHServer]:
        servers = start_many(n, tmp_path_factory.mktemp("sshd"))
        started.extend(servers)
        return servers

    yield factory
    for s in started:
        s.stop()


@pytest.fixture
def sshd(sshd_factory: Callable[[int], list[SSHServer]]) -> SSHServer:
    """One loopback sshd (see :class:`SSHServer`)."""
    return sshd_factory(1)[0]
