#!/usr/bin/env bash
# Make the oldest and newest supported Pythons (3.10 and 3.13) available for CI, and print their paths.
#
# Idempotent. Looks, in order, for an interpreter already on the machine (PATH, then pyenv's versions
# directory: this project's machines carry pyenv builds of 3.10 and 3.13), then for a Debian package of
# that version (`apt-get install pythonX.Y`; Debian 12 ships only 3.11, later releases ship others).
# Nothing is downloaded from anywhere but the Debian archive. Exit 1, naming what is missing, if a
# version cannot be found that way.
#
# Usage: scripts/install-pythons.sh [3.10 3.13 ...]   -> one line per version: "3.10 /path/to/python3.10"
set -euo pipefail

versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.10 3.13)

find_python() {  # $1 = X.Y; prints an interpreter path that really is X.Y, or nothing
    local v=$1 candidate root
    root=${PYENV_ROOT:-$HOME/.pyenv}
    for candidate in "$(command -v "python$v" 2>/dev/null || true)" "$root"/versions/"$v".*/bin/python"$v" \
                     "/usr/bin/python$v" "/usr/local/bin/python$v"; do
        [ -n "$candidate" ] && [ -x "$candidate" ] || continue
        # a pyenv shim answers even when that version is not selected: ask the interpreter itself
        if [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$v" ] &&
           "$candidate" -c 'import venv, ssl, sqlite3' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
}

status=0
for v in "${versions[@]}"; do
    path=$(find_python "$v" | head -n 1)
    if [ -z "$path" ] && command -v apt-get >/dev/null; then
        if [ -z "$(apt-cache policy "python$v" 2>/dev/null | awk '/Candidate:/ {print $2}')" ]; then
            apt-get update -qq >/dev/null 2>&1 || true
        fi
        candidate=$(apt-cache policy "python$v" 2>/dev/null | awk '/Candidate:/ {print $2}')
        if [ -n "$candidate" ] && [ "$candidate" != "(none)" ]; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$v" "python$v-venv" >/dev/null
            path=$(find_python "$v" | head -n 1)
        fi
    fi
    if [ -z "$path" ]; then
        echo "install-pythons: Python $v not found (not on PATH, not in ${PYENV_ROOT:-$HOME/.pyenv}/versions," \
             "no Debian package python$v for this release); install it and rerun" >&2
        status=1
        continue
    fi
    echo "$v $path"
done
exit $status
