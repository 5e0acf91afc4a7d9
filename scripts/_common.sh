# Shared by scripts/demo and scripts/test: check prerequisites, then make the venv.
# Sourced, not executed.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DRP_VENV:-$REPO_ROOT/.venv}"

die() { echo "error: $*" >&2; exit 1; }

find_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

find_pg_bindir() {
  local d
  for d in "${DRP_PG_BIN_DIR:-}" "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/x)")" \
           "$(pg_config --bindir 2>/dev/null || true)" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -nr); do
    [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] || continue
    d="$(dirname "$(readlink -f "$d/initdb")")"  # a folder of symlinks lacks pg_basebackup & co
    local major
    major="$("$d/postgres" --version | sed -E 's/[^0-9]*([0-9]+).*/\1/')"
    if [ "${major:-0}" -ge 15 ]; then echo "$d"; return 0; fi
  done
  return 1
}

check_prerequisites() {
  PY="$(find_python)" || die "Python 3.11+ with venv is required.
  Debian/Ubuntu: apt-get install python3 python3-venv   macOS: brew install python@3.12
  Or set PYTHON=/path/to/python3.11"
  PG_BIN="$(find_pg_bindir)" || die "PostgreSQL 15+ server binaries (initdb, pg_ctl, postgres) were not found
  (looked in DRP_PG_BIN_DIR, PATH, pg_config --bindir, /usr/lib/postgresql/*/bin).
  Debian/Ubuntu: apt-get install postgresql   macOS: brew install postgresql@16
  Or set DRP_PG_BIN_DIR=/path/to/postgresql/bin"
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    die "running as root, but there is no 'postgres' OS user to run PostgreSQL as.
  Create one (useradd --system --home /var/lib/postgresql postgres) or run as a normal user."
  fi
  export DRP_PG_BIN_DIR="$PG_BIN"
}

# -- the lock ------------------------------------------------------------------------------------
# requirements/<set>.txt pin every dependency with hashes (uv pip compile); scripts/lock writes them and
# records the sha256 of pyproject.toml's dependency lists, so a pin changed without a refresh is caught here.
LOCK_REFRESH="scripts/lock"

# sha256 of pyproject.toml's dependencies, optional-dependencies and requires-python (comments do not count).
deps_hash() {
  "${PY:-$(find_python)}" -c '
import hashlib, json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
keys = {k: project.get(k) for k in ("dependencies", "optional-dependencies", "requires-python")}
print(hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest())' "$1"
}

# Die with the refresh command when LOCK is missing or was made from other pyproject.toml dependencies.
check_lock() {
  local lock="$1" recorded wanted
  [ -f "$lock" ] || die "${lock#"$REPO_ROOT"/} is missing: run $LOCK_REFRESH"
  recorded="$(sed -n 's/^# pyproject-deps-sha256: \([0-9a-f]*\).*/\1/p' "$lock" | head -n1)"
  wanted="$(deps_hash "$REPO_ROOT/pyproject.toml")" || die "could not read $REPO_ROOT/pyproject.toml"
  [ "$recorded" = "$wanted" ] || die "the dependencies in pyproject.toml changed since ${lock#"$REPO_ROOT"/} was locked.
  Refresh the lock with: $LOCK_REFRESH   (then commit requirements/)"
}

# Echo a uv binary: the venv's, one on PATH, or one bootstrapped into the venv from the hashed
# requirements/uv.txt. Fails (no output) when uv cannot be had or DRP_INSTALLER=pip.
find_uv() {
  [ "${DRP_INSTALLER:-}" = pip ] && return 1
  if [ -x "$VENV/bin/uv" ]; then echo "$VENV/bin/uv"; return 0; fi
  if command -v uv >/dev/null 2>&1; then command -v uv; return 0; fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
    -r "$REPO_ROOT/requirements/uv.txt" >/dev/null 2>&1 && [ -x "$VENV/bin/uv" ] && echo "$VENV/bin/uv"
}

# Make $VENV hold requirements/$1.txt, then the project itself (editable, without dependencies).
# Reused as is while its stamp (sha256 of the lock and pyproject.toml) matches.
ensure_venv() {
  local set="$1" lock="$REPO_ROOT/requirements/$1.txt" key stamp uv
  check_lock "$lock"
  key="$(cat "$lock" "$REPO_ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
  stamp="$VENV/.drp-installed-$key-$set"
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ]; then
    echo "$VENV is up to date with requirements/$set.txt (lock $key): reusing it" >&2
    return 0
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtualenv in $VENV" >&2
    "$PY" -m venv "$VENV" || die "could not create a virtualenv with $PY (Debian/Ubuntu: apt-get install python3-venv)"
  fi
  rm -f "$VENV"/.drp-installed-*
  if uv="$(find_uv)"; then
    echo "installing requirements/$set.txt into $VENV with $("$uv" --version) (parallel, hashes checked)" >&2
    VIRTUAL_ENV="$VENV" "$uv" pip install --quiet --python "$VENV/bin/python" --require-hashes -r "$lock" \
      && VIRTUAL_ENV="$VENV" "$uv" pip install --quiet --python "$VENV/bin/python" --no-deps -e "$REPO_ROOT" \
      || die "uv pip install failed (see above): check access to the package index, or retry with DRP_INSTALLER=pip"
  else
    echo "installing requirements/$set.txt into $VENV with pip (uv unavailable; same pins, hashes checked)" >&2
    # --no-deps: the lock is the whole closure, and pip's --require-hashes rejects an extra such as gql[requests]
    # that the lock pins as plain gql.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r "$lock" \
      && "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$REPO_ROOT" \
      || die "pip install failed (see above): check access to the package index"
  fi
  touch "$stamp"
}

# The escape-hatch tests restore with the stock age and zstd CLIs.
ensure_interop_tools() {
  local missing=()
  command -v age >/dev/null 2>&1 || missing+=(age)
  command -v zstd >/dev/null 2>&1 || missing+=(zstd)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (for the stock-tools restore tests)" >&2
    apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; } \
      || echo "warning: could not install ${missing[*]}; those tests will fail in CI (apt-get install ${missing[*]})" >&2
  else
    echo "warning: ${missing[*]} missing; the stock-tools restore tests will be skipped (apt-get install ${missing[*]})" >&2
  fi
}

# The browser tests (test_browser_*.py) drive Debian's Chromium; without it they skip. CI installs it, so they run
# there on a new machine too; elsewhere a note says how.
ensure_browser() {
  [ -n "${DRP_CHROMIUM:-}" ] || [ -x /usr/bin/chromium ] && return 0
  if [ "${CI:-}" = true ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (for the browser tests)" >&2
    { apt-get install -y -qq chromium >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; } \
      || echo "warning: could not install chromium; the browser tests will be skipped" >&2
  else
    echo "note: no /usr/bin/chromium: the browser tests will be skipped (apt-get install chromium)" >&2
  fi
}
