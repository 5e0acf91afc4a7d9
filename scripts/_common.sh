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

# Create the venv and install the project (with extras "$1") when pyproject.toml changed.
ensure_venv() {
  local extras="$1" stamp
  stamp="$VENV/.drp-installed-$(cat "$REPO_ROOT/pyproject.toml" | sha256sum | cut -c1-16)-$extras"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtualenv in $VENV" >&2
    "$PY" -m venv "$VENV" || die "could not create a virtualenv with $PY (Debian/Ubuntu: apt-get install python3-venv)"
  fi
  if [ ! -f "$stamp" ]; then
    echo "installing dr_pipelines and its dependencies into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$REPO_ROOT[$extras]" \
      || die "pip install failed (see above): check network access to PyPI"
    rm -f "$VENV"/.drp-installed-* && touch "$stamp"
  fi
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
