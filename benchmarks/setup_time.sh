#!/usr/bin/env bash
# Time a new user's first contact: `git clone` -> `scripts/demo` -> Dagster UI answering, then a second start,
# then the install step of `scripts/test` in another fresh clone. Results: docs/benchmarks.md ("Set-up").
#
#   benchmarks/setup_time.sh [--cold] [--ref REF] [--repo PATH] [--cache DIR] [--ui-port N]
#
# --cold empties the package cache first (pip's and uv's, both pointed at --cache); without it the cache is
# whatever an earlier run left there. The demo is stopped (SIGINT, as Ctrl-C) and purged after each start,
# and the clones are removed: the run leaves no processes and no files except the cache.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
REF=HEAD
CACHE=/tmp/drp-setup-bench-cache
PORT=3390
COLD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cold) COLD=1 ;;
    --ref) REF="$2"; shift ;;
    --repo) REPO="$2"; shift ;;
    --cache) CACHE="$2"; shift ;;
    --ui-port) PORT="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

[ "$COLD" = 1 ] && rm -rf "$CACHE"
mkdir -p "$CACHE"
export PIP_CACHE_DIR="$CACHE/pip" UV_CACHE_DIR="$CACHE/uv"
WORK="$(mktemp -d /tmp/drp-setup-bench-XXXXXX)"
chmod 755 "$WORK"  # PostgreSQL runs as the postgres OS user when we are root
LOGS="$(cd "$(dirname "$0")" && pwd)/results/setup-$(date -u +%Y%m%dT%H%M%S)"
mkdir -p "$LOGS"
trap 'cp "$WORK"/*.log "$LOGS"/ 2>/dev/null; rm -rf "$WORK"' EXIT

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Prefix each line with the seconds since $1 (where the time goes: install, seed, first backup, dagster dev).
stamp_lines() {
  local line start="${1/./}" tenths
  start="${start:0:${#start}-5}"
  while IFS= read -r line; do
    tenths="${EPOCHREALTIME/./}"; tenths=$(( ${tenths:0:${#tenths}-5} - start ))
    printf '%4d.%d %s\n' $((tenths / 10)) $((tenths % 10)) "$line"
  done
}

# Start scripts/demo in CLONE, wait for the UI, print seconds; stop it (as Ctrl-C would).
demo_start() {
  local clone="$1" log="$2" t0 pid
  t0="$(now)"
  (cd "$clone" && exec setsid scripts/demo --ui-port "$PORT" --clinics 3 --scale 0.5) > >(stamp_lines "$t0" >"$log") 2>&1 &
  pid=$!
  until curl -fsS -o /dev/null "http://127.0.0.1:$PORT/server_info" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then echo "demo exited early; log:" >&2; tail -30 "$log" >&2; return 1; fi
    sleep 0.5
  done
  since "$t0"
  sleep 5  # let dagster dev finish starting: an interrupt in its first second can hang it
  kill -INT -- "-$pid" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then  # dagster dev (its own session, a child of drp) did not stop
    echo "warning: the demo ignored Ctrl-C for 60 s; killing dagster dev" >&2
    for child in $(pgrep -P "$pid"); do kill -KILL -- "-$child" 2>/dev/null || true; done
  fi
  wait "$pid" 2>/dev/null || true
}

cache_state=$([ "$COLD" = 1 ] && echo cold || echo warm)
echo "ref $(git -C "$REPO" rev-parse --short "$REF"), package cache $cache_state ($CACHE), load $(cut -d' ' -f1-3 /proc/loadavg), logs $LOGS"

t0="$(now)"
git clone -q "$REPO" "$WORK/demo" && git -C "$WORK/demo" checkout -q "$REF"
clone_s="$(since "$t0")"
first_s="$(demo_start "$WORK/demo" "$WORK/demo1.log")"
installer="$(grep -m1 -E '^ *[0-9.]+ installing' "$WORK/demo1.log" || true)"
installed_at="$(grep -m1 'demo folder:' "$WORK/demo1.log" | awk '{print $1}')"
second_s="$(demo_start "$WORK/demo" "$WORK/demo2.log")"
reuse="$(grep -m1 -E 'up to date|reus' "$WORK/demo2.log" || true)"
(cd "$WORK/demo" && scripts/demo down --purge >/dev/null 2>&1) || true

git clone -q "$REPO" "$WORK/test" && git -C "$WORK/test" checkout -q "$REF"
t0="$(now)"
(cd "$WORK/test" && scripts/test --version) >"$WORK/test.log" 2>&1
test_install_s="$(since "$t0")"

echo "clone: ${clone_s}s"
echo "fresh clone -> demo UI answering: $(awk -v a="$clone_s" -v b="$first_s" 'BEGIN { printf "%.1f", a + b }')s"
echo "  of which .venv + install: ${installed_at:-?}s (${installer:-n/a})"
echo "second scripts/demo start -> UI answering: ${second_s}s  (${reuse:-no reuse message})"
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "scripts/test install step (fresh clone, until pytest starts): ${test_install_s}s"
