#!/usr/bin/env bash
# The demo command: on a Debian/Ubuntu machine as root, installs what is missing (setup.sh),
# builds mtr, starts a throwaway sshd on 127.0.0.1 for a throwaway user (the same recipe as
# testkit/src/sshd.rs), and syncs a copy of examples/demo to it: first sync, no-op sync, sync
# after an edit; then runs commands there (`mtr python3 train.py --epochs 3`) and downloads
# what a job wrote (`mtr --get outputs`). mtr runs with HOME set to a temp dir, so your ~/.ssh is never touched.
# Everything it creates (user, sshd, files) is removed on exit.
#
#   scripts/demo.sh            MTR=/path/to/mtr scripts/demo.sh  (use a prebuilt binary)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# shellcheck source=scripts/setup.sh
source scripts/setup.sh
mtr_setup python3

if [ "$(id -u)" -ne 0 ]; then
    echo "demo: run as root (it creates a user and starts sshd)" >&2
    exit 1
fi

if [ -t 2 ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD= PLAIN=; fi
step() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN" >&2; }

if [ -z "${MTR:-}" ]; then
    step "building mtr"
    cargo build --release -p mtr
    MTR="${CARGO_TARGET_DIR:-$ROOT/target}/release/mtr"
fi

TMP=$(mktemp -d /tmp/mtr-demo.XXXXXX)
chmod 755 "$TMP" # the demo user must reach its home inside
DEMO_USER="mtrdemo$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
SSHD_PID=
cleanup() {
    set +e
    [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null && wait "$SSHD_PID" 2>/dev/null
    if id "$DEMO_USER" >/dev/null 2>&1; then
        pkill -KILL -u "$DEMO_USER"
        sleep 0.2
        userdel -r -f "$DEMO_USER" 2>/dev/null
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

step "starting a throwaway sshd for user $DEMO_USER"
REMOTE_HOME=$TMP/remote-home
useradd -m -d "$REMOTE_HOME" -s /bin/bash "$DEMO_USER"
# Without PAM, sshd refuses accounts whose password is locked ("!"), as useradd leaves it.
echo "$DEMO_USER:$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" | chpasswd
ssh-keygen -q -t ed25519 -N '' -C mtr-demo-host -f "$TMP/host_key"
ssh-keygen -q -t ed25519 -N '' -C mtr-demo-client -f "$TMP/client_key"
install -d -m 700 -o "$DEMO_USER" -g "$DEMO_USER" "$REMOTE_HOME/.ssh"
install -m 600 -o "$DEMO_USER" -g "$DEMO_USER" "$TMP/client_key.pub" \
    "$REMOTE_HOME/.ssh/authorized_keys"

for _ in 1 2 3 4 5; do
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat >"$TMP/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $PORT
HostKey $TMP/host_key
PidFile $TMP/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
AllowUsers $DEMO_USER
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
LogLevel VERBOSE
MaxStartups 100
Subsystem sftp internal-sftp
CONF
    /usr/sbin/sshd -D -e -f "$TMP/sshd_config" 2>"$TMP/sshd.log" &
    SSHD_PID=$!
    for _ in $(seq 100); do
        grep -q "Server listening" "$TMP/sshd.log" && break 2
        kill -0 "$SSHD_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill "$SSHD_PID" 2>/dev/null || true
    wait "$SSHD_PID" 2>/dev/null || true
    SSHD_PID=
    grep -q "Address already in use" "$TMP/sshd.log" || { cat "$TMP/sshd.log" >&2; exit 1; }
done
[ -n "$SSHD_PID" ] || { echo "demo: sshd did not start" >&2; exit 1; }
echo "sshd listening on 127.0.0.1:$PORT" >&2

step "a copy of examples/demo with its .mtr/config.yaml"
PROJECT=$TMP/project
REMOTE_DIR=$REMOTE_HOME/demo
cp -r "$ROOT/examples/demo" "$PROJECT"
mkdir -p "$PROJECT/.mtr"
install -d -m 700 "$TMP/local-home" "$TMP/local-home/.ssh"
cat >"$PROJECT/.mtr/config.yaml" <<CONF
servers:
  demo:
    host: 127.0.0.1
    port: $PORT
    user: $DEMO_USER
    key_filename: $TMP/client_key
    remote_dir: $REMOTE_DIR
    exclude: [__pycache__]
    strict_host_key_checking: accept-new
CONF
cat "$PROJECT/.mtr/config.yaml"
cd "$PROJECT"
mtr() { HOME=$TMP/local-home "$MTR" -v "$@"; }

step "1. first sync: everything travels"
mtr --sync-only

step "2. nothing changed: next to nothing travels"
mtr --sync-only

step "3. hello.py edited: only the change travels"
echo 'print("edited locally, synced by mtr")' >>hello.py
mtr --sync-only

step "what the remote holds (ls -la as $DEMO_USER)"
runuser -u "$DEMO_USER" -- ls -la "$REMOTE_DIR" "$REMOTE_DIR/data"

step "4. run it there: arguments arrive as typed, output is live, the exit code is the remote's"
mtr python3 hello.py a "b c" '$HOME' ''
mtr python3 train.py --epochs 3
set +e
mtr --no-sync sh -c 'echo "to stderr" >&2; exit 42'
status=$?
set -e
echo "mtr exited with $status (the remote command's exit code)" >&2
[ "$status" -eq 42 ] || { echo "demo: expected exit code 42" >&2; exit 1; }

step "5. the job writes results there; --get brings them back (a delta sync the other way)"
mtr --no-sync python3 -c 'import os; os.makedirs("outputs", exist_ok=True); open("outputs/metrics.txt", "w").write("loss 0.4463\n")'
mtr --no-sync --get outputs --to "$TMP/downloads/"
cat "$TMP/downloads/outputs/metrics.txt"

step "done: cleaning up"
