#!/usr/bin/env bash
# Time a second `scripts/demo` start in this checkout (venv and demo database already there): seconds until
# the UI answers (/server_info), until it serves the code location (GraphQL, what `drp demo status` asks),
# and how long Ctrl-C (SIGINT to the script's process group) takes to stop Dagster and PostgreSQL.
# Results: docs/benchmarks.md ("Set-up").
#
#   benchmarks/demo_restart.sh [--runs N] [--ui-port N] [--keep]
#
# The first start (seeding, first backup) is made once and not counted. Every line the demo prints is kept
# with its time in benchmarks/results/restart-*/ (where the split per step comes from). The demo folder is
# a throwaway one, purged at the end unless --keep.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
RUNS=3
PORT=3390
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift ;;
    --ui-port) PORT="$2"; shift ;;
    --keep) KEEP=1 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

SCRATCH=""
if [ -z "${DRP_DEMO_DIR:-}" ]; then
  SCRATCH="$(mktemp -d /tmp/drp-restart-bench-XXXXXX)"
  chmod 755 "$SCRATCH"  # PostgreSQL runs as the postgres OS user when we are root
  export DRP_DEMO_DIR="$SCRATCH/demo"
fi
LOGS="$REPO/benchmarks/results/restart-$(date -u +%Y%m%dT%H%M%S)"
mkdir -p "$LOGS"
cleanup() {
  [ "$KEEP" = 1 ] && return 0
  (cd "$REPO" && scripts/demo down --purge >/dev/null 2>&1) || true
  [ -z "$SCRATCH" ] || rmdir "$SCRATCH" 2>/dev/null || true
}
trap cleanup EXIT

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
served() {  # the code location is loaded (its assets listed)
  curl -fsS -m 2 -H 'Content-Type: application/json' "http://127.0.0.1:$PORT/graphql" \
    -d '{"query":"{workspaceOrError{... on Workspace{locationEntries{locationOrLoadError{... on RepositoryLocation{name}}}}}}"}' \
    2>/dev/null | grep -q '"name"'
}
stamp_lines() {
  local line
  while IFS= read -r line; do printf '%6s %s\n' "$(since "$1")" "$line"; done
}

# One start: print "answers served stop" seconds.
start_once() {
  local log="$1" t0 pid up loaded stop_t0
  t0="$(now)"
  (cd "$REPO" && exec setsid scripts/demo --ui-port "$PORT" --clinics 3 --scale 0.5) > >(stamp_lines "$t0" >"$log") 2>&1 &
  pid=$!
  until curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$PORT/server_info" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "demo exited early; log:" >&2; tail -30 "$log" >&2; return 1; }
    sleep 0.2
  done
  up="$(since "$t0")"
  until served; do kill -0 "$pid" 2>/dev/null || return 1; sleep 0.2; done
  loaded="$(since "$t0")"
  until grep -q 'Dagster UI: ' "$log"; do kill -0 "$pid" 2>/dev/null || return 1; sleep 0.2; done
  sleep 2  # let a backup check running beside the UI finish its first second
  stop_t0="$(now)"
  kill -INT -- "-$pid" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "warning: the demo ignored Ctrl-C for 60 s; killing it" >&2
    for child in $(pgrep -P "$pid"); do kill -KILL -- "-$child" 2>/dev/null || true; done  # dagster dev's session
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  echo "$up $loaded $(since "$stop_t0")"
}

echo "ref $(git -C "$REPO" rev-parse --short HEAD), demo $DRP_DEMO_DIR, load $(cut -d' ' -f1-3 /proc/loadavg), logs $LOGS"
start_once "$LOGS/first.log" >/dev/null
echo "run  answers_s  location_s  stop_s  load"
for i in $(seq "$RUNS"); do
  read -r up loaded stop < <(start_once "$LOGS/second-$i.log")
  echo "$i  $up  $loaded  $stop  $(cut -d' ' -f1 /proc/loadavg)"
done
