#!/usr/bin/env bash
# Runs Countersign's embedded demo: SQLite, the file-system broker and the on-disk outbox.
# Starts the web server, a Celery worker and Celery beat; Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export DEBUG="${DEBUG:-true}"
export DEMO_PASSWORD="${DEMO_PASSWORD:-countersign-demo}"

$BIN/python manage.py migrate --no-input
$BIN/python manage.py seed_demo

pids=()
cleanup() {
    trap - INT TERM EXIT
    echo
    echo "Stopping Countersign..."
    for pid in "${pids[@]}"; do
        # Each service runs in its own process group: signal the whole group, children included.
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for _ in $(seq 1 50); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.2
    done
    for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "Stopped."
}
trap cleanup INT TERM EXIT

start() {
    # setsid: a new process group per service, so cleanup can stop it with its children.
    setsid "$@" &
    pids+=("$!")
}
start $BIN/python manage.py runserver 127.0.0.1:8000 --noreload
start $BIN/celery -A config worker --loglevel=INFO --concurrency=2
start $BIN/celery -A config beat --loglevel=INFO

cat <<MSG

  Countersign is running at http://127.0.0.1:8000/admin/
  Logins (password: $DEMO_PASSWORD):
    olivia, oscar   Ops: compose, test-send, submit
    rita            Compliance: review, approve, reject
    root            Admin (superuser): users, sender identities, suppressions
  Outbox (one .eml per sent message): var/outbox/
  Press Ctrl-C to stop everything.

MSG
wait -n "${pids[@]}" || true
