"""SSHRunner: measure on a Linux board over SSH (paramiko), through the device-side agent.

Transport steps are small functions run under try/finally: connect (strict host-key check),
push (SFTP, content-addressed cache ``<workdir>/blobs/<sha256>/<name>`` so an unchanged artifact
is not re-sent), execute (a shlex-quoted command with a deadline; the agent is killed on
timeout), collect (parse the agent's JSON), clean up (the per-run directory is always removed).

Host keys are checked against the target's known_hosts file only: an unknown key is refused
unless the target sets ``trust_on_first_use`` (then it is recorded and reported); a changed key
is always refused, and never retried. Dropped connections are retried with exponential
back-off. One run per device at a time (thread + file lock); different devices run in parallel.
``run`` never raises for target failures: they come back as ``Measurement.failure``.

Connections are reused: after a successful run the session goes back to a per-process pool and
the target's next run (a nightly run's next cell, a paired re-measure) skips the key exchange,
authentication and SFTP start (0.3 s on a quiet loopback, over a second on a busy host or a slow
link). A pooled session is used only while it is alive, idle for less than ``POOL_IDLE_S``, and
made with the same connection settings and the same known_hosts file contents; anything else,
and any failure, closes it and connects afresh (with the full host-key check).

Runs go through the target's warm agent on that connection (``WarmAgent``: ``agent.py --serve``
on its own channel, forking a fresh child per run; see ``runners/agent/agent.py: serve``) unless
the target sets ``warm_agent: false``; a target whose interpreter cannot start it runs one agent
process per run, and the measurement says which (``extra.agent_mode``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import posixpath
import select
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from runners.agent import host
from runners.base import ErrorKind, Measurement, RunRequest
from runners.inventory import Target


class TransportError(Exception):
    """A failed transport step: ``kind`` is the Measurement error kind; ``retryable`` for drops."""

    def __init__(self, message: str, kind: ErrorKind = "connection", *, retryable: bool = False) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.retryable = retryable


def fingerprint(key: Any) -> str:
    """OpenSSH-style SHA256 fingerprint of a paramiko key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def remote_path(path: str) -> str:
    """A path for a remote ``sh`` command line: quoted, with a leading ``~/`` kept expandable."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


# ---------------------------------------------------------------------------------------------
# connect


def _host_key_policy(known_hosts: str, trust_on_first_use: bool, added: list[str]) -> Any:
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        """Unknown key: refuse, or with TOFU record it in ``known_hosts`` (changed keys never get here)."""

        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            fp = fingerprint(key)
            if not trust_on_first_use:
                raise TransportError(
                    f"the host key of {hostname} ({key.get_name()} {fp}) is not in {known_hosts}; "
                    "add it (ssh-keyscan) or set trust_on_first_use: true for this target",
                    "host_key",
                )
            client.get_host_keys().add(hostname, key.get_name(), key)
            os.makedirs(os.path.dirname(os.path.abspath(known_hosts)), exist_ok=True)
            with open(known_hosts, "a", encoding="utf-8") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            added.append(f"{hostname} {key.get_name()} {fp}")

    return Policy()


def connect_client(target: Target, timeout_s: float = 15.0) -> tuple[Any, list[str]]:
    """Open an authenticated paramiko client; returns (client, host keys recorded by TOFU).

    Raises:
        TransportError: host key unknown/changed ('host_key', never retryable), authentication
            failed ('connection'), or the host is unreachable ('connection', retryable).
    """
    import paramiko

    kh = target.known_hosts_path
    if target.key_file and not os.path.isfile(target.key_file):
        raise TransportError(f"key file {target.key_file} of target {target.name!r} does not exist", "usage")
    client = paramiko.SSHClient()
    added: list[str] = []
    if os.path.exists(kh):
        client.load_host_keys(kh)
    client.set_missing_host_key_policy(_host_key_policy(kh, target.trust_on_first_use, added))
    where = f"{target.user + '@' if target.user else ''}{target.host}:{target.port}"
    try:
        client.connect(
            target.host,
            target.port,
            username=target.user,
            key_filename=target.key_file,
            look_for_keys=target.key_file is None,
            allow_agent=target.key_file is None,
            timeout=timeout_s,
            banner_timeout=timeout_s,
            auth_timeout=timeout_s,
        )
    except TransportError:
        client.close()
        raise
    except paramiko.BadHostKeyException as e:
        client.close()
        raise TransportError(
            f"the host key of {where} CHANGED (server offers {e.key.get_name()} {fingerprint(e.key)}, "
            f"{kh} has {fingerprint(e.expected_key)}): refusing to connect; if the device was "
            "reinstalled, remove its old line from that file",
            "host_key",
        ) from None
    except paramiko.AuthenticationException as e:
        client.close()
        key = target.key_file or "the default keys / agent"
        raise TransportError(f"authentication to {where} failed with {key} ({e})", "connection") from None
    except (OSError, EOFError, paramiko.SSHException) as e:
        client.close()
        raise TransportError(
            f"cannot connect to {where} ({_reason(e)})", "connection", retryable=True
        ) from None
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(15)
    return client, added


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200].rstrip(".")


# ---------------------------------------------------------------------------------------------
# a connected session: exec, push, paths


class _StalePooledSession(Exception):
    """A reused pooled session failed at its first step: reconnect without spending a retry."""

    def __init__(self, error: TransportError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class ExecResult:
    exit_code: int  # -1: no exit status (killed by a signal)
    stdout: str
    stderr: str


@dataclass
class SSHSession:
    """An open connection to a target: SFTP, the resolved work dir, exec with a deadline."""

    target: Target
    client: Any
    sftp: Any
    home: str
    workdir: str
    host_keys_added: list[str] = field(default_factory=list)
    # warm agents started on this connection, by interpreter command, agent path and model format
    warm: dict[tuple[str, str, str], WarmAgent] = field(default_factory=dict)
    warm_failed: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"target {self.target.name!r} ({self.target.describe()})"

    def alive(self) -> bool:
        t = self.client.get_transport()
        return bool(t is not None and t.is_active())

    def close(self) -> None:
        for w in list(self.warm.values()):
            w.close()
        self.warm.clear()
        with contextlib.suppress(Exception):
            self.sftp.close()
        with contextlib.suppress(Exception):
            self.client.close()

    def lost(self, step: str, e: BaseException | None = None) -> TransportError:
        why = f" ({_reason(e)})" if e is not None else ""
        return TransportError(f"the connection to {self.where} was lost during {step}{why}", retryable=True)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Map paramiko / socket failures inside a step to TransportError (drop or target problem)."""
        import paramiko

        try:
            yield
        except TransportError:
            raise
        except (EOFError, ConnectionError, TimeoutError, paramiko.SSHException) as e:
            raise self.lost(name, e) from None
        except OSError as e:  # an SFTP status error (permission, no space) unless the link is gone
            if not self.alive():
                raise self.lost(name, e) from None
            raise TransportError(f"{name} failed on {self.where}: {_reason(e)}", "infrastructure") from None

    # -- paths ---------------------------------------------------------------------------------

    def makedirs(self, path: str) -> None:
        """``mkdir -p`` over SFTP."""
        parts, cur = [p for p in path.split("/") if p], "/" if path.startswith("/") else ""
        for p in parts:
            cur = posixpath.join(cur, p) if cur else p
            try:
                self.sftp.stat(cur)
            except FileNotFoundError:
                try:
                    self.sftp.mkdir(cur)
                except OSError:
                    self.sftp.stat(cur)  # created concurrently: fine; else raise

    def exists_with_size(self, path: str, size: int) -> bool:
        try:
            return self.sftp.stat(path).st_size == size
        except FileNotFoundError:
            return False

    def push(self, local: str, name: str | None = None, blob: str | None = None) -> tuple[str, int]:
        """Push ``local`` to ``<workdir>/blobs/<sha256>/<name>``; returns (remote path, bytes sent).

        ``blob`` names the cache directory (default: the file's SHA-256). Bytes sent is 0 when
        the file is already there (same directory, same size): a cache hit.
        """
        name = name or os.path.basename(local)
        digest = blob or host.sha256_file(local)
        size = os.path.getsize(local)
        d = posixpath.join(self.workdir, "blobs", digest)
        remote = posixpath.join(d, name)
        if self.exists_with_size(remote, size):
            return remote, 0
        self.makedirs(d)
        tmp = posixpath.join(d, f".{uuid.uuid4().hex}.part")
        try:
            self.sftp.put(local, tmp)
            self.sftp.posix_rename(tmp, remote)
        except Exception:
            with contextlib.suppress(Exception):
                self.sftp.remove(tmp)
            raise
        return remote, size

    def push_bundle(self) -> tuple[str, int]:
        """Push the agent files into ``<workdir>/blobs/<bundle sha256>/``; returns (dir, bytes sent)."""
        bundle = host.agent_bundle()
        sent = 0
        for name, path in bundle.files:
            _, n = self.push(str(path), name, blob=bundle.sha256)
            sent += n
        return posixpath.join(self.workdir, "blobs", bundle.sha256), sent

    # -- exec ----------------------------------------------------------------------------------

    def exec(
        self, command: str, timeout_s: float, on_timeout: Callable[[], None] | None = None
    ) -> ExecResult:
        """Run a shell command line (callers quote every value) and wait up to ``timeout_s`` s.

        Raises:
            TransportError: 'timeout' after ``on_timeout()`` ran; 'connection' (retryable) when
                the connection drops before the command ends.
        """
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise self.lost("execute")
        chan = transport.open_session(timeout=30)
        try:
            chan.exec_command(command)
            chan.shutdown_write()
            out, err = _drain(chan, transport, time.monotonic() + timeout_s)
            if out is None:
                if on_timeout is not None:
                    on_timeout()
                raise TransportError(
                    f"the command on {self.where} exceeded its timeout of {timeout_s:g} s", "timeout"
                )
            code = chan.recv_exit_status() if chan.exit_status_ready() else -1
            if code == -1 and not transport.is_active():
                raise self.lost("execute")
            return ExecResult(code, out.decode(errors="replace"), (err or b"").decode(errors="replace"))
        finally:
            chan.close()


def model_format(path: str) -> str:
    """The model format a warm agent is kept for: the file suffix (".onnx", ".tflite")."""
    return os.path.splitext(path)[1].lower()


class WarmAgent:
    """The agent's ``--serve`` mode on an open connection: one long-lived process per target that
    has imported numpy and the runtimes, forking a fresh child for each run (see
    ``runners/agent/agent.py: serve``). Saves the interpreter start and the imports of every run
    (0.4-1 s on a quiet Pi-class board, several seconds under emulation or load). It lives on its
    own SSH channel and ends with it: closing the connection (pool idle time-out, failure) or the
    channel ends the agent."""

    def __init__(self, sess: SSHSession, command: str, timeout_s: float) -> None:
        self.sess = sess
        transport = sess.client.get_transport()
        if transport is None or not transport.is_active():
            raise sess.lost("execute")
        self.chan = transport.open_session(timeout=30)
        self.chan.exec_command(command)
        self._buf = bytearray()
        self.errors = bytearray()
        try:
            hello = self._read_line(time.monotonic() + timeout_s)
        except TransportError:
            if not sess.alive():
                raise
            hello = None  # the agent exited at once: this interpreter cannot serve
        if hello is None or not hello.get("ready"):
            with contextlib.suppress(Exception):
                while self.chan.recv_stderr_ready():
                    self.errors += self.chan.recv_stderr(65536)
            tail = self.errors.decode(errors="replace").strip().splitlines()[-1:]
            self.close()
            raise RuntimeError("the warm agent did not start" + (f": {tail[0][:200]}" if tail else ""))
        self.key: tuple[str, str, str] = ("", "", "")
        self.pid = int(hello.get("pid", 0))
        self.preloaded = list(hello.get("preloaded", []))
        self.runs = 0
        self.last_pid: int | None = None

    def alive(self) -> bool:
        return not self.chan.closed and not self.chan.exit_status_ready() and self.sess.alive()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.chan.close()

    def preload(self, suffix: str, deadline: float) -> list[str]:
        """Have the agent import the runtime of ``suffix`` models now (before the first run)."""
        self.chan.sendall((json.dumps({"preload": suffix}) + "\n").encode())
        reply = self._read_line(deadline)
        return list((reply or {}).get("preloaded") or [])

    def run(self, rundir: str, deadline: float) -> dict[str, Any] | None:
        """Send one run dir; the agent's reply, or None when ``deadline`` passes first."""
        self.chan.sendall((json.dumps({"dir": rundir}) + "\n").encode())
        reply = self._read_line(deadline)
        if reply is not None:
            self.runs += 1
            self.last_pid = reply.get("pid")
        return reply

    def _read_line(self, deadline: float) -> dict[str, Any] | None:
        """The next JSON line on stdout; None at the deadline; TransportError when the channel ends."""
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[: i + 1]
                try:
                    return json.loads(line)
                except ValueError:
                    continue  # not protocol output
            while self.chan.recv_stderr_ready():
                self.errors += self.chan.recv_stderr(65536)
                del self.errors[:-8192]
            if self.chan.recv_ready():
                data = self.chan.recv(65536)
                if data:
                    self._buf += data
                    continue
            if self.chan.closed or self.chan.exit_status_ready() and not self.chan.recv_ready():
                raise self.sess.lost("execute (the warm agent ended)")
            if not self.sess.alive():
                raise self.sess.lost("execute")
            if time.monotonic() > deadline:
                return None
            select.select([self.chan], [], [], 0.1)


def _drain(chan: Any, transport: Any, deadline: float) -> tuple[bytes | None, bytes | None]:
    """Read stdout / stderr until the command exits; (None, None) when the deadline passes."""
    out, err = bytearray(), bytearray()
    while True:
        busy = False
        while chan.recv_ready():
            out += chan.recv(65536)
            busy = True
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
            busy = True
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            return bytes(out), bytes(err)
        if not transport.is_active():
            return bytes(out), bytes(err)
        if time.monotonic() > deadline:
            return None, None
        if not busy:
            select.select([chan], [], [], 0.1)


def open_session(target: Target, timeout_s: float = 15.0) -> SSHSession:
    """Connect, open SFTP and resolve (create) the work dir on the target."""
    client, added = connect_client(target, timeout_s)
    sess = SSHSession(target, client, None, "", "", added)
    try:
        with sess.step("connect"):
            sess.sftp = client.open_sftp()
            sess.home = sess.sftp.normalize(".")
            sess.workdir = _resolve(target.remote_workdir, sess.home)
            sess.makedirs(sess.workdir)
    except BaseException:
        sess.close()
        raise
    return sess


POOL_IDLE_S = 60.0  # a pooled session idle longer than this is closed, not reused
# one pooled session per device address: (settings key, session, last release time)
_pool: dict[str, tuple[str, SSHSession, float]] = {}
_pool_lock = threading.Lock()


def _address(target: Target) -> str:
    return f"{target.user or ''}@{target.host}:{target.port}"


def _pool_key(target: Target) -> str:
    """The connection settings of ``target`` and the state of its known_hosts file: a pooled
    session is reused only for the same settings and the same trusted keys."""
    kh = target.known_hosts_path
    try:
        st = os.stat(kh)
        kh_state: Any = [st.st_size, st.st_mtime_ns]
    except OSError:
        kh_state = None
    fields = ("host", "port", "user", "key_file", "known_hosts", "trust_on_first_use", "workdir")
    return json.dumps([{f: getattr(target, f) for f in fields}, kh_state], sort_keys=True, default=str)


def pooled_session(target: Target, timeout_s: float = 15.0) -> tuple[SSHSession, bool]:
    """(session, reused): a live pooled session of ``target`` or a new one (see the module doc)."""
    with _pool_lock:
        entry = _pool.pop(_address(target), None)
    if entry is not None:
        key, sess, last = entry
        if key == _pool_key(target) and time.monotonic() - last < POOL_IDLE_S and sess.alive():
            sess.host_keys_added = []
            return sess, True
        sess.close()
    return open_session(target, timeout_s), False


def release_session(sess: SSHSession) -> None:
    """Return a healthy session to the pool (one per device: an older one is closed)."""
    if not sess.alive():
        sess.close()
        return
    with _pool_lock:
        old = _pool.pop(_address(sess.target), None)
        _pool[_address(sess.target)] = (_pool_key(sess.target), sess, time.monotonic())
    if old is not None:
        old[1].close()


def close_pooled_sessions() -> int:
    """Close every pooled session (returns how many)."""
    with _pool_lock:
        entries = list(_pool.values())
        _pool.clear()
    for _, sess, _ in entries:
        sess.close()
    return len(entries)


def _resolve(path: str, home: str) -> str:
    if path == "~":
        return home
    if path.startswith("~/"):
        return posixpath.join(home, path[2:])
    return path if path.startswith("/") else posixpath.join(home, path)


# ---------------------------------------------------------------------------------------------
# the runner


class SSHRunner:
    """Measures artifacts on one SSH target; ``run`` never raises for target failures."""

    supports_paired = True  # RunRequest.paired_model_path: A/B blocks in one agent process

    def __init__(
        self,
        target: Target,
        *,
        retries: int = 2,
        backoff_s: float = 0.5,
        connect_timeout_s: float = 15.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if target.transport != "ssh":
            raise ValueError(f"target {target.name!r} is not an ssh target")
        self.target = target
        self.name = target.name
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self.connect_timeout_s = connect_timeout_s
        self._sleep = sleep

    @property
    def lock_key(self) -> str:
        """Identity of the device for the one-run-at-a-time lock."""
        return f"ssh:{self.target.user or ''}@{self.target.host}:{self.target.port}"

    def session(self) -> SSHSession:
        """An open session (the caller closes it); raises TransportError."""
        return open_session(self.target, self.connect_timeout_s)

    def python_command(self, python: str | None = None) -> str:
        """The quoted interpreter, with the target's environment: ``env 'K=V' ... PY``."""
        envs = " ".join(shlex.quote(f"{k}={v}") for k, v in self.target.env.items())
        py = remote_path(python or self.target.python)
        return f"env {envs} {py}" if envs else py

    # -- run -------------------------------------------------------------------------------------

    def prepare(self, formats: tuple[str, ...] = (".onnx",), timeout_s: float = 120.0) -> dict[str, Any]:
        """Get the target ready for its first runs of models of ``formats``: connect (pooled), push
        the agent, start a warm agent per format with its runtime imported. Raises TransportError;
        a warm agent that cannot start is reported, not raised."""
        sess, reused = pooled_session(self.target, self.connect_timeout_s)
        ok = False
        preloaded: dict[str, list[str]] = {}
        pids: dict[str, int] = {}
        w = None
        try:
            with sess.step("push"):
                bundle_dir, sent = sess.push_bundle()
            agent = posixpath.join(bundle_dir, "agent.py")
            for fmt in formats:
                w = self.warm_agent(sess, agent, timeout_s, fmt)
                if w is None:
                    break
                with sess.step("execute"):
                    preloaded[fmt] = w.preload(fmt, time.monotonic() + timeout_s)
                pids[fmt] = w.pid
            ok = True
        finally:
            if ok:
                release_session(sess)
            else:
                sess.close()
        info: dict[str, Any] = {"connection_reused": reused, "agent_pushed_bytes": sent}
        if w is not None:
            info.update(warm_agent_pids=pids, preloaded=preloaded)
        elif self.target.warm_agent:
            info["warm_agent_unavailable"] = sess.warm_failed.get((self.python_command(), agent), "")
        return info

    def run(self, request: RunRequest) -> Measurement:
        """Push, run the agent, collect; failures are returned as ``Measurement.failure``."""
        t0 = time.monotonic()
        problem = host.check_request(request)
        if problem:
            return self._fail(request, problem, "usage", t0)
        try:
            power = host.power_model(request.profile or self.target.profile)
        except Exception as e:  # UserError: unknown profile
            return self._fail(request, str(e), "usage", t0)
        try:
            with host.device_lock(self.lock_key, request.timeout_s):
                m = self._run_with_retries(request, power)
        except host.DeviceBusy as e:
            m = Measurement.failure(self.name, request.model_path, f"{e}.", "infrastructure")
        m.wall_s = time.monotonic() - t0
        m.emulated = self.target.emulated
        return m

    def _fail(self, request: RunRequest, msg: str, kind: ErrorKind, t0: float) -> Measurement:
        m = Measurement.failure(self.name, request.model_path, msg, kind)
        m.wall_s = time.monotonic() - t0
        return m

    def _run_with_retries(self, request: RunRequest, power: dict[str, Any] | None) -> Measurement:
        first: TransportError | None = None
        stale_retry = True  # a pooled session that turns out dead costs no retry, once
        attempt = 0
        while attempt <= self.retries:
            try:
                m = self._attempt(request, power)
                m.extra["attempts"] = attempt + 1
                return m
            except _StalePooledSession as e:
                if not stale_retry:
                    first = first or e.error
                    if not e.error.retryable or attempt == self.retries:
                        return self._final_failure(request, first, e.error, attempt)
                    self._sleep(self.backoff_s * 2**attempt)
                    attempt += 1
                stale_retry = False
                continue
            except TransportError as e:
                first = first or e
                if not e.retryable or attempt == self.retries:
                    return self._final_failure(request, first, e, attempt)
                self._sleep(self.backoff_s * 2**attempt)
                attempt += 1
            except Exception as e:  # noqa: BLE001 - a bug must not lose the whole nightly run
                msg = f"unexpected error on target {self.name!r}: {type(e).__name__}: {_reason(e)}."
                return Measurement.failure(self.name, request.model_path, msg, "infrastructure")
        raise AssertionError("unreachable")  # pragma: no cover

    def _final_failure(
        self, request: RunRequest, first: TransportError, last: TransportError, attempt: int
    ) -> Measurement:
        msg = str(first)
        if attempt:
            msg += f"; {attempt} retr{'y' if attempt == 1 else 'ies'} failed"
            if last is not first:
                msg += f" (last: {last})"
        m = Measurement.failure(self.name, request.model_path, msg + ".", first.kind)
        m.extra["attempts"] = attempt + 1
        return m

    def _attempt(self, request: RunRequest, power: dict[str, Any] | None) -> Measurement:
        steps: dict[str, float] = {}
        t = time.monotonic()
        sess, reused = pooled_session(self.target, self.connect_timeout_s)  # connect
        steps["connect"] = time.monotonic() - t
        healthy = False
        try:
            t = time.monotonic()
            try:
                with sess.step("push"):
                    paths, pushed = self._push(sess, request)
            except TransportError as e:
                if reused and e.retryable:  # the pooled connection died while idle
                    raise _StalePooledSession(e) from None
                raise
            rundir = posixpath.join(sess.workdir, "runs", uuid.uuid4().hex)
            removed = False
            try:
                self._write_request(sess, rundir, request, paths, power)
                steps["push"] = time.monotonic() - t
                t = time.monotonic()
                result, mode = self._execute_any(sess, rundir, paths["agent"], request)
                removed = mode["agent_mode"] == "warm"  # the warm agent removed the run dir
                m = self._collect(result, request)
                m.extra.update(mode)
                steps["execute"] = time.monotonic() - t
            finally:
                t = time.monotonic()
                if not removed:
                    self._cleanup(sess, rundir)
                steps["cleanup"] = time.monotonic() - t
            healthy = m.ok or m.error_kind not in ("infrastructure", "timeout")
        finally:
            if healthy:
                release_session(sess)
            else:
                sess.close()
        m.pushed_bytes = sum(pushed.values())
        m.extra["pushed"] = pushed
        m.extra["steps_s"] = steps
        m.extra["connection_reused"] = reused
        if sess.host_keys_added:
            m.extra["host_keys_added"] = sess.host_keys_added
        return m

    # -- steps -----------------------------------------------------------------------------------

    @staticmethod
    def _push(sess: SSHSession, request: RunRequest) -> tuple[dict[str, str], dict[str, int]]:
        """Push the agent bundle, the model and the .npz files (cached by content hash)."""
        bundle_dir, sent = sess.push_bundle()
        paths = {"agent": posixpath.join(bundle_dir, "agent.py")}
        pushed = {"agent": sent}
        for key in ("model_path", "paired_model_path", "inputs_npz", "accuracy_npz"):
            local = getattr(request, key)
            if local:
                paths[key], pushed[key] = sess.push(local)
        return paths, pushed

    @staticmethod
    def _write_request(
        sess: SSHSession,
        rundir: str,
        request: RunRequest,
        paths: dict[str, str],
        power: dict[str, Any] | None,
    ) -> None:
        """Create the run dir and write the agent's request.json into it."""
        payload = host.agent_request(
            request,
            model=paths["model_path"],
            inputs_npz=paths.get("inputs_npz"),
            accuracy_npz=paths.get("accuracy_npz"),
            power=power,
            paired_model=paths.get("paired_model_path"),
        )
        with sess.step("push"):
            sess.makedirs(rundir)
            with sess.sftp.open(posixpath.join(rundir, "request.json"), "w") as f:
                f.write(json.dumps(payload))

    def warm_agent(self, sess: SSHSession, agent: str, timeout_s: float, fmt: str) -> WarmAgent | None:
        """The session's warm agent for ``agent`` and models of format ``fmt`` (".onnx", ".tflite";
        one per format, so a run inherits only its own runtime), started when needed; None when
        the target does not use one or it cannot start here (the reason is kept in
        ``sess.warm_failed``)."""
        if not self.target.warm_agent:
            return None
        py = self.python_command()
        if (py, agent) in sess.warm_failed:
            return None
        key = (py, agent, fmt)
        w = sess.warm.get(key)
        if w is not None and w.alive():
            return w
        if w is not None:
            w.close()
            del sess.warm[key]
        command = f"cd {shlex.quote(sess.workdir)} && exec {py} {shlex.quote(agent)} --serve"
        try:
            with sess.step("execute"):
                w = WarmAgent(sess, command, timeout_s)
        except RuntimeError as e:
            sess.warm_failed[(py, agent)] = str(e)
            return None
        w.key = key
        sess.warm[key] = w
        return w

    def _execute_any(
        self, sess: SSHSession, rundir: str, agent: str, request: RunRequest
    ) -> tuple[ExecResult, dict[str, Any]]:
        """Run through the warm agent when there is one, else one agent process for this run."""
        w = self.warm_agent(sess, agent, max(60.0, request.timeout_s), model_format(request.model_path))
        if w is not None:
            result = self._execute_warm(w, sess, rundir, request)
            if result is not None:
                return result, {
                    "agent_mode": "warm",
                    "warm_agent_pid": w.pid,
                    "warm_agent_runs": w.runs,
                    "run_pid": w.last_pid,
                }
        mode: dict[str, Any] = {"agent_mode": "cold"}
        why = sess.warm_failed.get((self.python_command(), agent))  # start-up failures are per interpreter
        if why and self.target.warm_agent:
            mode["warm_agent_unavailable"] = why
        return self._execute(sess, rundir, agent, request), mode

    def _execute_warm(
        self, w: WarmAgent, sess: SSHSession, rundir: str, request: RunRequest
    ) -> ExecResult | None:
        """One run through the warm agent; None when the agent could not fork (then a cold run)."""
        with sess.step("execute"):
            reply = w.run(rundir, time.monotonic() + request.timeout_s)
            if reply is None:  # kill the run; the agent answers once its child is gone
                self._kill(sess, rundir)
                if w._read_line(time.monotonic() + 20.0) is None:
                    w.close()
                raise TransportError(
                    f"the run on {sess.where} exceeded its timeout of {request.timeout_s:g} s; "
                    "the agent was killed",
                    "timeout",
                )
        if "rc" not in reply:  # e.g. fork failed: this run and the next ones run cold
            sess.warm_failed[w.key[:2]] = str(reply.get("error", reply))
            sess.warm.pop(w.key, None)
            w.close()
            return None
        return ExecResult(int(reply["rc"]), str(reply.get("stdout", "")), str(reply.get("stderr", "")))

    def _execute(self, sess: SSHSession, rundir: str, agent: str, request: RunRequest) -> ExecResult:
        """Run the agent in the run dir, which the same command removes afterwards (one round trip);
        on timeout kill the agent by the pid recorded in ``agent.pid``."""
        d = shlex.quote(rundir)
        command = (
            f"cd {d} && {{ {self.python_command()} {shlex.quote(agent)} request.json & echo $! > agent.pid; "
            f"wait $!; }}; rc=$?; cd / && rm -rf -- {d}; exit $rc"
        )
        try:
            with sess.step("execute"):
                return sess.exec(command, request.timeout_s, on_timeout=lambda: self._kill(sess, rundir))
        except TransportError as e:
            if e.kind == "timeout":
                raise TransportError(
                    f"the run on {sess.where} exceeded its timeout of {request.timeout_s:g} s; "
                    "the agent was killed",
                    "timeout",
                ) from None
            raise

    @staticmethod
    def _kill(sess: SSHSession, rundir: str) -> None:
        pidfile = shlex.quote(posixpath.join(rundir, "agent.pid"))
        command = (
            f'p=$(cat {pidfile} 2>/dev/null); [ -n "$p" ] || exit 0; kill -TERM "$p" 2>/dev/null; '
            f'i=0; while kill -0 "$p" 2>/dev/null && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done; '
            f'kill -KILL "$p" 2>/dev/null; true'
        )
        with contextlib.suppress(Exception):
            sess.exec(command, 15)

    def _collect(self, result: ExecResult, request: RunRequest) -> Measurement:
        return host.parse_agent_output(
            result.stdout,
            result.stderr,
            result.exit_code,
            target=self.name,
            model_path=request.model_path,
            python=self.target.python,
        )

    @staticmethod
    def _cleanup(sess: SSHSession, rundir: str) -> None:
        """Remove the run dir if the agent command did not (best effort: the link may be gone)."""
        if not sess.alive():
            return
        with contextlib.suppress(Exception):
            try:
                sess.sftp.stat(rundir)
            except FileNotFoundError:
                return
            sess.exec(f"rm -rf -- {shlex.quote(rundir)}", 30)

    # -- probe -----------------------------------------------------------------------------------

    def probe(self, python: str | None = None, timeout_s: float = 120.0) -> dict[str, Any]:
        """Reachability and the agent's ``--probe`` answer; failures are data (``ok: false``)."""
        t0 = time.monotonic()
        try:
            sess = self.session()
        except TransportError as e:
            return {"ok": False, "reachable": False, "error": f"{e}.", "error_kind": e.kind}
        try:
            with sess.step("push"):
                bundle_dir, _ = sess.push_bundle()
            agent = shlex.quote(posixpath.join(bundle_dir, "agent.py"))
            with sess.step("probe"):
                res = sess.exec(f"{self.python_command(python)} {agent} --probe", timeout_s)
            data = host.find_result(res.stdout)
            if data is None:
                msg = host.no_result_message(res.stderr, res.exit_code, python or self.target.python)
                data = {"ok": False, "error": msg, "error_kind": "agent"}
        except TransportError as e:
            data = {"ok": False, "error": f"{e}.", "error_kind": e.kind}
        finally:
            sess.close()
        data["reachable"] = True
        data["wall_s"] = time.monotonic() - t0
        if sess.host_keys_added:
            data["host_keys_added"] = sess.host_keys_added
        return data
