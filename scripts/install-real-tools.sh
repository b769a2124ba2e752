#!/usr/bin/env bash
# Install pinned copies of the real CLI tools toolpool drives in its integration tests:
#   - Claude Code (npm @anthropic-ai/claude-code) -> $DIR/claude/node_modules/.bin/claude
#   - aider (PyPI aider-chat, in its own venv)    -> $DIR/aider-venv/bin/aider
# DIR defaults to ~/.cache/toolpool/real-tools (outside the repository; override with
# TOOLPOOL_TOOLS_DIR). Idempotent: a tool already installed at the pinned version and
# able to run is reused, so a second run takes seconds.
#
# Only the npm registry and PyPI are used. Claude Code's native binary ships as the ordinary
# npm package @anthropic-ai/claude-code-linux-x64 (an optional dependency picked by
# os/cpu), which the package's postinstall step links into place; nothing else is fetched.
# Package-manager caches are kept under $DIR/.cache so nothing is written into $HOME, and
# no tool configuration (~/.claude*, ~/.aider*) is created: tests give each tool a private
# config dir / HOME of their own.
#
# Prints, last, two lines: claude=<abs path> and aider=<abs path>.
set -euo pipefail

CLAUDE_VERSION="${TOOLPOOL_CLAUDE_VERSION:-2.1.197}"
AIDER_VERSION="${TOOLPOOL_AIDER_VERSION:-0.86.2}"
PYTHON="${PYTHON:-python3}"

DIR="${TOOLPOOL_TOOLS_DIR:-$HOME/.cache/toolpool/real-tools}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd -P)"   # absolute, so the printed paths are absolute

# Two runs at once (e.g. parallel CI jobs) would delete each other's half-built installs.
exec 9>"$DIR/.install.lock"
flock 9

CLAUDE_BIN="$DIR/claude/node_modules/.bin/claude"
AIDER_BIN="$DIR/aider-venv/bin/aider"

# Keep npm's and pip's caches out of $HOME (and reusable across reinstalls).
export npm_config_cache="$DIR/.cache/npm"
export PIP_CACHE_DIR="$DIR/.cache/pip"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Some tools write config on first run; make sure a version probe can't touch the real HOME.
PROBE_HOME="$(mktemp -d)"
trap 'rm -rf "$PROBE_HOME"' EXIT

log() { printf '[install-real-tools] %s\n' "$*" >&2; }

# A tool "works" when it runs offline and reports the pinned version.
claude_ok() {
    [[ -x "$CLAUDE_BIN" ]] || return 1
    local out
    out="$(HOME="$PROBE_HOME" CLAUDE_CONFIG_DIR="$PROBE_HOME/claude" \
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 \
        timeout 60 "$CLAUDE_BIN" --version 2>/dev/null)" || return 1
    [[ "$out" == "$CLAUDE_VERSION"* ]]
}

aider_ok() {
    [[ -x "$AIDER_BIN" ]] || return 1
    local out
    # Asking the venv's metadata is instant; importing aider's main module proves it loads.
    out="$(HOME="$PROBE_HOME" timeout 120 "$DIR/aider-venv/bin/python" -c \
        'import importlib.metadata as m, aider.main; print(m.version("aider-chat"))' 2>/dev/null)" \
        || return 1
    [[ "$out" == "$AIDER_VERSION" ]]
}

install_claude() {
    log "installing @anthropic-ai/claude-code@$CLAUDE_VERSION into $DIR/claude"
    rm -rf "$DIR/claude"
    mkdir -p "$DIR/claude"
    # A private package.json pins the exact version; the native binary package is an
    # exact-versioned optional dependency of it, so --include=optional must not be omitted.
    cat >"$DIR/claude/package.json" <<JSON
{"name": "toolpool-real-tools-claude", "private": true,
 "dependencies": {"@anthropic-ai/claude-code": "$CLAUDE_VERSION"}}
JSON
    (cd "$DIR/claude" && npm install --no-audit --no-fund --include=optional \
        --loglevel=error >&2)
}

install_aider() {
    log "installing aider-chat==$AIDER_VERSION into $DIR/aider-venv"
    rm -rf "$DIR/aider-venv"
    "$PYTHON" -m venv "$DIR/aider-venv"
    "$DIR/aider-venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$DIR/aider-venv/bin/python" -m pip install --quiet "aider-chat==$AIDER_VERSION" >&2
}

start=$SECONDS
if claude_ok; then log "claude $CLAUDE_VERSION already installed"; else
    install_claude
    claude_ok || { log "ERROR: $CLAUDE_BIN does not run or is not $CLAUDE_VERSION"; exit 1; }
fi
if aider_ok; then log "aider $AIDER_VERSION already installed"; else
    install_aider
    aider_ok || { log "ERROR: $AIDER_BIN does not run or is not $AIDER_VERSION"; exit 1; }
fi
log "done in $((SECONDS - start)) s"

echo "claude=$CLAUDE_BIN"
echo "aider=$AIDER_BIN"
