#!/usr/bin/env bash
# Run vitalab on this machine: `bash up.sh` (arguments go to `vitalab up`, e.g. `bash up.sh --log-level info`).
# Makes its own virtual environment in .venv (once; refreshed when pyproject.toml changes), installs vitalab
# into it and runs `vitalab up`: embedded PostgreSQL and MQTT broker, the ingester, the API and a simulated
# gym. Nothing is installed outside .venv, except Debian's python3-venv when it is missing and this runs as
# root. Afterwards the command line is .venv/bin/vitalab (or `source .venv/bin/activate`, then `vitalab`).
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
fail() { printf 'up.sh: %s\n' "$*" >&2; exit 1; }

command -v "$python" >/dev/null 2>&1 || fail "$python not found: install Python 3.11 or newer (or set PYTHON)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    fail "vitalab needs Python 3.11 or newer, $python is $("$python" --version 2>&1) (set PYTHON=python3.12 to use another)"

if [ ! -x .venv/bin/python ]; then
    if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "up.sh: installing python3-venv (Debian)" >&2
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        else
            fail "Python's venv module is missing: sudo apt-get install python3-venv (Debian, Ubuntu), then run again"
        fi
    fi
    echo "up.sh: creating the virtual environment .venv" >&2
    "$python" -m venv .venv
fi
if [ ! -f .venv/.vitalab-installed ] || [ pyproject.toml -nt .venv/.vitalab-installed ]; then
    echo "up.sh: installing vitalab into .venv (a minute or two the first time)" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -e .
    touch .venv/.vitalab-installed
fi
exec .venv/bin/vitalab up "$@"
