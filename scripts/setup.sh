#!/usr/bin/env bash
# Installs every pinned tool the project runs, on a fresh machine or a fresh clone.
# Each step is stamped with the hash of its input, so a second run only verifies.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

PYTHON=${PYTHON:-python3}
CODEX_VERSION=0.171.0
TOXIPROXY_VERSION=v2.12.0
TOXIPROXY_MODULE=github.com/Shopify/toxiproxy/v2
# The native binary: node_modules/.bin/codex is a Node wrapper that costs a process per spawn.
CODEX_BIN=node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex
STAMPS=.tools/stamps

die() { echo "setup: error: $*" >&2; exit 1; }
say() { echo "setup: $*"; }
sha() { sha256sum | cut -d' ' -f1; }

# fresh NAME HASH OUTPUT: true when NAME's stamp matches HASH and its OUTPUT is there.
fresh() { [[ -e $3 && -f $STAMPS/$1 && $(<"$STAMPS/$1") == "$2" ]]; }
stamp() { mkdir -p "$STAMPS"; echo "$2" >"$STAMPS/$1"; }

# --- Python: .venv with the project and its dev extras -----------------------
hash=$(sha <pyproject.toml)
if ! fresh pip "$hash" .venv/bin/python; then
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python 3.11 or newer (or set PYTHON=/path/to/python3)"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$PYTHON is $("$PYTHON" -V 2>&1), the project needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)"
  # A venv whose interpreter vanished (say, the base Python moved) can't be repaired in place.
  [[ -x .venv/bin/python ]] || "$PYTHON" -m venv --clear .venv
  say "python: installing .[dev] into .venv (pyproject.toml changed or first run)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
  stamp pip "$hash"
fi

# --- Node: the pinned Codex CLI and Allure 3, exactly as package-lock.json says
hash=$(sha <package-lock.json)
if ! fresh npm "$hash" "$CODEX_BIN"; then
  command -v npm >/dev/null || die "npm not found: install Node.js 20 or newer"
  say "node: npm ci (package-lock.json changed or first run)"
  npm ci --no-audit --no-fund
  [[ -x $CODEX_BIN ]] || die "npm ci did not produce $CODEX_BIN (is this linux x86_64?)"
  stamp npm "$hash"
fi

# --- Toxiproxy: no registry ships the server, so build it from the Go module --
hash=$(printf '%s' "$TOXIPROXY_VERSION" | sha)
if ! fresh toxiproxy "$hash" .tools/bin/toxiproxy-server; then
  if ! command -v go >/dev/null; then
    [[ -n ${TOXIPROXY_URL:-} ]] ||
      die "go not found: install Go 1.23 or newer to build toxiproxy, or set TOXIPROXY_URL to a running Toxiproxy"
    say "toxiproxy: go not found, skipping the build; the harness will use TOXIPROXY_URL=$TOXIPROXY_URL"
  else
    say "toxiproxy: go install $TOXIPROXY_VERSION"
    mkdir -p .tools/bin
    # Stamp the version the way upstream's release build does; a plain go install says "git".
    GOBIN=$root/.tools/bin go install -ldflags "-X $TOXIPROXY_MODULE.Version=${TOXIPROXY_VERSION#v}" \
      "$TOXIPROXY_MODULE/cmd/server@$TOXIPROXY_VERSION" "$TOXIPROXY_MODULE/cmd/cli@$TOXIPROXY_VERSION"
    mv -f .tools/bin/server .tools/bin/toxiproxy-server
    mv -f .tools/bin/cli .tools/bin/toxiproxy-cli
    stamp toxiproxy "$hash"
  fi
fi

# --- systemd-analyze: tests/test_deploy_units.py verifies deploy/systemd with it ---
if ! command -v systemd-analyze >/dev/null; then
  command -v apt-get >/dev/null && [[ $(id -u) == 0 ]] ||
    die "systemd-analyze not found: install Debian's systemd package (apt-get install systemd)"
  say "systemd: apt-get install systemd (for systemd-analyze)"
  apt-get update -qq && apt-get install -y -qq systemd >/dev/null
fi

# --- Verify: one line per tool ------------------------------------------------
echo "python:    $(.venv/bin/python -V 2>&1) in .venv"
version=$("$CODEX_BIN" --version) || die "$CODEX_BIN --version failed"
[[ $version == *" $CODEX_VERSION" ]] || die "$CODEX_BIN reports '$version', expected $CODEX_VERSION: run npm ci"
echo "codex:     $version ($CODEX_BIN)"
if [[ -x .tools/bin/toxiproxy-server ]]; then
  version=$(.tools/bin/toxiproxy-server -version 2>&1) || die ".tools/bin/toxiproxy-server -version failed"
  [[ $version == *" ${TOXIPROXY_VERSION#v}" ]] ||
    die ".tools/bin/toxiproxy-server reports '$version', expected ${TOXIPROXY_VERSION#v}: rm -r .tools and rerun"
  echo "toxiproxy: $version (.tools/bin/toxiproxy-server)"
fi
version=$(node_modules/.bin/allure --version 2>&1) || die "node_modules/.bin/allure --version failed"
echo "allure:    $version (node_modules/.bin/allure)"
echo "systemd:   $(systemd-analyze --version | head -1)"
