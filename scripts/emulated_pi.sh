#!/usr/bin/env bash
# An emulated Raspberry Pi: a real aarch64 Debian user space under qemu-user, reached over SSH.
#
#   scripts/emulated_pi.sh up       build (once, cached) and start it; write the `emulated-pi` target
#   scripts/emulated_pi.sh down     stop its sshd and unmount
#   scripts/emulated_pi.sh status   print whether it runs, its port and the inventory entry
#
# The root file system is built with debootstrap --arch=arm64 from the Debian mirror this machine's apt
# already uses, cached under ${XDG_CACHE_HOME:-~/.cache}/edge-compress/emulated-pi. Its own OpenSSH
# server listens on a free loopback port with generated keys; the target is provisioned with the
# product's own `edge-compress targets setup` (venv, numpy, onnxruntime, ai-edge-litert).
# Timings measured on it are emulated, not performance figures: the inventory entry says so.
#
# Needs root (debootstrap, chroot, binfmt registration). Environment:
#   EMULATED_PI_CACHE   cache directory (default above)
#   EMULATED_PI_SUITE   Debian suite (default bookworm)
#   EMULATED_PI_MIRROR  Debian mirror with arm64 packages (default: the one in this machine's apt sources)
#   EMULATED_PI_CPU     QEMU_CPU for the target's processes (default cortex-a72, the Pi 4 core)
#   EMULATED_PI_NO_SETUP=1  skip provisioning (the runtimes) after start
#   EDGE_COMPRESS_INVENTORY inventory file to write the target into (default ~/.config/edge-compress/inventory.yaml)
set -euo pipefail

CACHE="${EMULATED_PI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-compress/emulated-pi}"
SUITE="${EMULATED_PI_SUITE:-bookworm}"
QCPU="${EMULATED_PI_CPU:-cortex-a72}"
ROOT="$CACHE/rootfs"
INVENTORY="${EDGE_COMPRESS_INVENTORY:-$HOME/.config/edge-compress/inventory.yaml}"
TARGET_NAME="emulated-pi"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
PY="${HERE}/.venv/bin/python"
[ -x "$PY" ] || PY="python3"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

need_root() { [ "$(id -u)" -eq 0 ] || die "the emulated Pi needs root (debootstrap, chroot, binfmt); run with sudo."; }

ensure_packages() {
  local missing=()
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  [ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
  command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

register_binfmt() {
  if [ ! -d /proc/sys/fs/binfmt_misc ] || [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || die "cannot mount binfmt_misc; the kernel must allow binfmt_misc to run aarch64 binaries."
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [ -f "$conf" ] || die "$conf is missing; reinstall qemu-user-static."
    log "registering the qemu aarch64 binfmt handler"
    # the .conf line is exactly the register format: :name:type:offset:magic:mask:interpreter:flags
    grep -v '^#' "$conf" | head -n1 > /proc/sys/fs/binfmt_misc/register
  elif ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64; then
    log "enabling the qemu aarch64 binfmt handler"
    echo 1 > /proc/sys/fs/binfmt_misc/qemu-aarch64
  fi
}

debian_mirror() {
  # EMULATED_PI_MIRROR, else the mirror this machine's apt already uses (deb822 or one-line format).
  local uri="${EMULATED_PI_MIRROR:-}"
  if [ -z "$uri" ]; then
    uri="$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 | awk '{print $2}')"
  fi
  if [ -z "$uri" ]; then
    uri="$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v security \
      | sed -E 's/\[[^]]*\]//' | head -n1 | awk '{print $2}')"
  fi
  [ -n "$uri" ] || die "no Debian mirror found in /etc/apt sources; configure apt or set EMULATED_PI_MIRROR."
  printf '%s' "$uri"
}

# Unmount everything mounted below a directory (deepest first), e.g. what an interrupted debootstrap
# or an unclean stop left behind, so that removing the directory cannot reach the host's /proc or /dev.
umount_below() {
  local dir; dir="$(readlink -f "$1")"
  awk -v d="$dir/" 'index($2 "/", d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

remove_tree() {
  [ -e "$1" ] || return 0
  umount_below "$1"
  rm -rf --one-file-system "$1"
}

build_rootfs() {
  if [ -f "$ROOT/.edge-compress-complete" ]; then
    return
  fi
  local mirror; mirror="$(debian_mirror)"
  log "building an arm64 Debian $SUITE root file system in $ROOT (about 5 minutes, once)"
  remove_tree "$ROOT.tmp"
  mkdir -p "$CACHE"
  debootstrap --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,python3-pip,openssh-server,ca-certificates,procps \
    "$SUITE" "$ROOT.tmp" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 5 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)."; }
  touch "$ROOT.tmp/.edge-compress-complete"
  stop_sshd
  remove_tree "$ROOT"
  mv "$ROOT.tmp" "$ROOT"
  rm -f "$CACHE/python"  # a new root file system has no runtimes yet
}

mount_fs() {
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
  mkdir -p "$ROOT/dev/pts"
  mountpoint -q "$ROOT/dev/pts" || mount --bind /dev/pts "$ROOT/dev/pts" 2>/dev/null || true
  # /sys is deliberately NOT mounted: the runtimes' cpuinfo crashes under emulation when it is.
  # Network configuration for pip inside: the host's resolver and CA bundle.
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$ROOT/etc/ssl/certs"
    cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
  fi
}

umount_fs() {
  for m in dev/pts dev proc; do
    mountpoint -q "$ROOT/$m" && umount -l "$ROOT/$m" || true
  done
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# True when the recorded pid is alive and is our sshd (rooted in $ROOT): a stale pid file whose
# number now belongs to another process does not count.
is_running() {
  local pid
  pid="$(cat "$CACHE/sshd.pid" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$(readlink -f "$ROOT")" ]
}

answers_ssh() {
  "$PY" - "$1" <<'PYEOF' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.settimeout(20)
sys.exit(0 if s.recv(64).startswith(b"SSH-") else 1)
PYEOF
}

# Stop our sshd and every process left in the root file system (sessions, agents).
stop_sshd() {
  if is_running; then
    local pid; pid="$(cat "$CACHE/sshd.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  if [ -d "$ROOT" ]; then
    local root p; root="$(readlink -f "$ROOT")"
    for p in /proc/[0-9]*; do
      [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && kill -9 "${p#/proc/}" 2>/dev/null || true
    done
  fi
  rm -f "$CACHE/sshd.pid"
}

write_sshd_config() {
  cat > "$ROOT/etc/ssh/ec_sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $1
HostKey /etc/ssh/ec_host_ed25519
PidFile /run/sshd-ec.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
SetEnv QEMU_CPU=$QCPU
CONF
}

start_sshd() {
  mkdir -p "$CACHE/keys" "$ROOT/root/.ssh" "$ROOT/run/sshd"
  [ -f "$CACHE/keys/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$CACHE/keys/host_ed25519" -C emulated-pi-host
  [ -f "$CACHE/keys/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$CACHE/keys/id_ed25519" -C edge-compress
  install -m 600 "$CACHE/keys/host_ed25519" "$ROOT/etc/ssh/ec_host_ed25519"
  install -m 644 "$CACHE/keys/host_ed25519.pub" "$ROOT/etc/ssh/ec_host_ed25519.pub"
  install -m 600 "$CACHE/keys/id_ed25519.pub" "$ROOT/root/.ssh/authorized_keys"
  chmod 700 "$ROOT/root/.ssh"
  local attempt port pid
  for attempt in 1 2 3; do
    # a port found free can be taken before sshd binds it: then try another one
    port="$(free_port)"
    write_sshd_config "$port"
    log "starting the emulated Pi's sshd on 127.0.0.1:$port"
    QEMU_CPU="$QCPU" setsid chroot "$ROOT" /usr/sbin/sshd -D -e -f /etc/ssh/ec_sshd_config \
      >"$CACHE/sshd.log" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > "$CACHE/sshd.pid"
    for _ in $(seq 1 120); do
      if answers_ssh "$port"; then
        echo "$port" > "$CACHE/port"
        printf '[127.0.0.1]:%s %s\n' "$port" "$(cut -d' ' -f1,2 "$CACHE/keys/host_ed25519.pub")" > "$CACHE/known_hosts"
        return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
      stop_sshd
      die "the emulated Pi's sshd did not answer on port $port within 120 s (log: $CACHE/sshd.log)."
    fi
    rm -f "$CACHE/sshd.pid"
    grep -q 'Address already in use' "$CACHE/sshd.log" || break
    log "port $port was taken before sshd could bind it (attempt $attempt)"
  done
  tail -n 5 "$CACHE/sshd.log" >&2
  die "the emulated Pi's sshd exited (log: $CACHE/sshd.log)."
}

write_inventory() {
  local port; port="$(cat "$CACHE/port")"
  local python="python3"
  [ -f "$CACHE/python" ] && python="$(cat "$CACHE/python")"
  mkdir -p "$(dirname "$INVENTORY")"
  "$PY" - "$INVENTORY" "$TARGET_NAME" "$port" "$CACHE" "$python" <<'PYEOF'
import os, sys, yaml
path, name, port, cache, python = sys.argv[1:]
data = {}
if os.path.exists(path):
    with open(path) as f:
        data = yaml.safe_load(f) or {}
targets = data.setdefault("targets", {})
targets[name] = {
    "transport": "ssh", "host": "127.0.0.1", "port": int(port), "user": "root",
    "key_file": os.path.join(cache, "keys", "id_ed25519"),
    "known_hosts": os.path.join(cache, "known_hosts"),
    "profile": "rpi4", "python": python, "emulated": True,
}
tmp = path + ".tmp"
with open(tmp, "w") as f:
    yaml.safe_dump(data, f, sort_keys=True)
os.replace(tmp, path)
print(f"inventory: target {name!r} written to {path}")
PYEOF
}

# The venv python recorded by the last provisioning, if it still exists in the root file system.
provisioned() {
  local py; py="$(cat "$CACHE/python" 2>/dev/null)" || return 1
  case "$py" in "~/"*) py="/root/${py#\~/}" ;; esac
  [ -x "$ROOT$py" ]
}

provision() {
  [ "${EMULATED_PI_NO_SETUP:-0}" = "1" ] && return
  if provisioned; then
    return
  fi
  log "provisioning with 'edge-compress targets setup $TARGET_NAME' (numpy, onnxruntime, ai-edge-litert; about 2 minutes)"
  local ec="${HERE}/.venv/bin/edge-compress"
  [ -x "$ec" ] || ec="edge-compress"
  "$ec" targets setup "$TARGET_NAME" --inventory "$INVENTORY" --runtime both --json > "$CACHE/setup.json" \
    || { cat "$CACHE/setup.json" >&2 || true; die "provisioning the emulated Pi failed."; }
  "$PY" - "$CACHE/setup.json" "$CACHE/python" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
py = r.get("python") or r.get("venv_python")
if py:
    open(sys.argv[2], "w").write(py)
PYEOF
  provisioned || die "provisioning reported no venv python inside the root file system (see $CACHE/setup.json)."
  write_inventory
}

cmd_up() {
  need_root
  ensure_packages
  register_binfmt
  build_rootfs
  mount_fs
  if is_running && answers_ssh "$(cat "$CACHE/port" 2>/dev/null || echo 0)"; then
    log "already running on port $(cat "$CACHE/port")"
  else
    stop_sshd  # a stale pid file, or an sshd that no longer answers
    start_sshd
  fi
  write_inventory
  provision
  cmd_status
}

cmd_down() {
  stop_sshd
  [ -d "$ROOT" ] && umount_fs
  log "emulated Pi stopped"
}

cmd_status() {
  if is_running; then
    printf 'emulated-pi: running on 127.0.0.1:%s (rootfs %s, QEMU_CPU=%s)\n' "$(cat "$CACHE/port")" "$ROOT" "$QCPU"
  else
    printf 'emulated-pi: stopped (rootfs %s)\n' "$([ -f "$ROOT/.edge-compress-complete" ] && echo cached || echo 'not built')"
    return 3
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
