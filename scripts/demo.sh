#!/usr/bin/env bash
# Countersign's embedded demo: SQLite, an SQLite-file broker and the on-disk outbox; no
# servers to install. From a fresh clone with Python 3.11 on PATH:
#
#   make demo            (or: bash scripts/demo.sh)
#
# Creates .venv and installs requirements.txt if needed, migrates, seeds demo data, then
# runs the web server, a Celery worker and Celery beat until Ctrl-C, which stops all three
# and everything they started. If the worker or beat dies, it is started again (up to
# DEMO_RESTARTS times each, with a message) while the web server keeps serving; if the web
# server dies, or a service has used up its restarts, the others are stopped too and the
# script exits non-zero.
#
# Knobs (environment): DEMO_PORT (8000), DEMO_HOST (127.0.0.1), DEMO_USERS (audience
# size, 1000), DEMO_PASSWORD (countersign-demo), DEMO_RESTARTS (5), VAR_DIR (var:
# database, broker, outbox), PYTHON (python3.11, used only to create .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_HOST="${DEMO_HOST:-127.0.0.1}"
DEMO_PORT="${DEMO_PORT:-8000}"
DEMO_USERS="${DEMO_USERS:-1000}"
DEMO_RESTARTS="${DEMO_RESTARTS:-5}"
export DEBUG="${DEBUG:-true}"
export DEMO_PASSWORD="${DEMO_PASSWORD:-countersign-demo}"
export VAR_DIR="${VAR_DIR:-var}"
export PUBLIC_BASE_URL="${PUBLIC_BASE_URL:-http://$DEMO_HOST:$DEMO_PORT}"
export PYTHONUNBUFFERED=1
VENV=.venv
BIN="$VENV/bin"

say() { printf '%s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# --- Python environment ------------------------------------------------------------------
if [ ! -x "$BIN/python" ]; then
    PYTHON="${PYTHON:-python3.11}"
    command -v "$PYTHON" >/dev/null 2>&1 || die "Countersign needs Python 3.11: $PYTHON is not on PATH (set PYTHON=/path/to/python3.11)."
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || die "$PYTHON is not Python 3.11."
    say "Creating $VENV with $PYTHON..."
    "$PYTHON" -m venv "$VENV"
    "$BIN/python" -m pip install --quiet --upgrade pip
fi
# The same stamp as the Makefile's: reinstall only when requirements.txt is newer.
if [ ! -f "$VENV/.installed" ] || [ requirements.txt -nt "$VENV/.installed" ]; then
    say "Installing requirements.txt into $VENV..."
    "$BIN/pip" install --quiet -r requirements.txt
    touch "$VENV/.installed"
fi

# --- Port ------------------------------------------------------------------------------
# Binds as the web server will (with address reuse), so the connections a demo stopped a
# moment ago leaves in TIME_WAIT do not count as "in use"; a listener still does.
"$BIN/python" scripts/check_port.py "$DEMO_HOST" "$DEMO_PORT" \
    || die "port $DEMO_PORT on $DEMO_HOST is in use; choose another with DEMO_PORT=..."

# --- Database and demo data --------------------------------------------------------------
"$BIN/python" manage.py migrate --no-input
"$BIN/python" manage.py seed_demo --users "$DEMO_USERS"

# --- Services ------------------------------------------------------------------------------
names=(web worker beat)
declare -A pid_of=() restarts=()
stopping=0

stop_all() {
    stopping=1
    # A second Ctrl-C while stopping skips the grace period instead of orphaning anything.
    local force=0
    trap 'force=1' INT TERM
    say ""
    say "Stopping Countersign..."
    local pid
    for pid in "${pid_of[@]}"; do
        # The main process only: the worker's warm shutdown then ends its own pool
        # (a SIGTERM straight to the pool processes makes the worker stall).
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Up to 20 seconds by the clock (not by a count of polls: on a busy machine each
    # `sleep` takes longer to start than it sleeps).
    local alive deadline=$((SECONDS + 20))
    while [ "$SECONDS" -lt "$deadline" ]; do
        alive=0
        for pid in "${pid_of[@]}"; do
            kill -0 -- "-$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] || [ "$force" = 1 ] && break
        sleep 0.2
    done
    # Each service leads its own process group: whatever of it is still there now,
    # children included, goes.
    for pid in "${pid_of[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    say "Stopped."
}

on_signal() {
    stop_all
    exit 130
}
on_exit() {
    local status=$?
    # Covers `set -e` failures while starting: never leave a service running.
    if [ "$stopping" = 0 ] && [ "${#pid_of[@]}" -gt 0 ]; then
        stop_all
    fi
    exit "$status"
}
trap on_signal INT TERM
trap on_exit EXIT

start() {
    local name=$1
    # setsid: a new session and process group per service, so that Ctrl-C (delivered to
    # this script's group) leaves stopping them to stop_all, which signals whole groups.
    case "$name" in
        web) setsid "$BIN/python" manage.py runserver "$DEMO_HOST:$DEMO_PORT" --noreload & ;;
        worker) setsid "$BIN/celery" -A config worker --loglevel=INFO --concurrency=2 \
            -n "demo-worker@%h" & ;;
        beat) setsid "$BIN/celery" -A config beat --loglevel=INFO & ;;
    esac
    pid_of[$name]=$!
    restarts[$name]=${restarts[$name]:-0}
}

# Sets `dead` to the name of the first service that has exited, if any. No subshell (no
# `$(...)`): a Ctrl-C that lands while the shell waits for a short-lived child can be
# taken as that child's business, and the trap would not run.
find_dead_service() {
    local name
    dead=""
    for name in "${names[@]}"; do
        if ! kill -0 "${pid_of[$name]}" 2>/dev/null; then
            dead=$name
            return 0
        fi
    done
    return 1
}

# The worker or beat died: start it again, unless it has used up its restarts.
restart() {
    local name=$1 pid=${pid_of[$1]} status=0
    wait "$pid" 2>/dev/null || status=$?
    # A crashed worker can leave pool processes behind in its group: they go first.
    kill -KILL -- "-$pid" 2>/dev/null || true
    if [ "${restarts[$name]}" -ge "$DEMO_RESTARTS" ]; then
        say "demo: the $name service stopped unexpectedly (exit status $status) and was already restarted $DEMO_RESTARTS times; stopping the others." >&2
        return 1
    fi
    restarts[$name]=$((restarts[$name] + 1))
    say "demo: the $name service stopped unexpectedly (exit status $status); restarting it (restart ${restarts[$name]} of $DEMO_RESTARTS). The web server keeps serving." >&2
    start "$name"
}

for name in "${names[@]}"; do
    start "$name"
done

# Wait (up to two minutes) until the web server answers before saying it runs. A worker
# or beat that dies meanwhile is restarted by the loop at the end, like any other time.
"$BIN/python" - "http://$DEMO_HOST:$DEMO_PORT/healthz" "${pid_of[web]}" <<'PY' || {
import os, signal, sys, time, urllib.request
signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: quietly, the trap reports
url, pids = sys.argv[1], [int(p) for p in sys.argv[2:]]
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(url, timeout=2).read()
        sys.exit(0)
    except OSError:
        pass
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(1)  # the web server died; the shell says so
    time.sleep(0.2)
sys.exit(1)
PY
    if ! kill -0 "${pid_of[web]}" 2>/dev/null; then
        say "demo: the web service exited during start-up; stopping the others." >&2
    else
        say "demo: the web server did not answer on http://$DEMO_HOST:$DEMO_PORT/ within 2 minutes." >&2
    fi
    stop_all
    exit 1
}

cat <<MSG

  Countersign is running at http://$DEMO_HOST:$DEMO_PORT/admin/
  Logins (password: $DEMO_PASSWORD):
    olivia, oscar   Ops: compose, test-send, submit
    rita            Compliance: review, approve, reject
    root            Admin (superuser): users, sender identities, suppressions
  Outbox (one .eml per sent message): $VAR_DIR/outbox/
  Press Ctrl-C to stop everything.

MSG

while true; do
    if find_dead_service; then
        if [ "$dead" = web ] || ! restart "$dead"; then
            [ "$dead" = web ] && say "demo: the web service stopped unexpectedly; stopping the others." >&2
            stop_all
            exit 1
        fi
    fi
    # A background sleep and `wait`: the INT trap runs as soon as Ctrl-C arrives.
    sleep 1 &
    wait $! || true
done
