#!/usr/bin/env bash
# End to end with real clients: the unmodified `icp` command line (npm
# @icp-sdk/icp-cli-linux-x64, pinned) and the JavaScript agent (npm @icp-sdk/core, pinned)
# against `canister-snapshots serve` on a fresh state directory.
#
#   bash tests/e2e/icp.sh [PATH/TO/canister-snapshots]   (default: target/debug/canister-snapshots)
#
# The npm packages are installed once into $CANISTER_SNAPSHOTS_E2E_CACHE (default
# ~/.cache/canister-snapshots-e2e) and reused. Without node/npm, or when the registry cannot be
# reached and nothing is cached, the script says SKIPPED and exits 0, except under CI
# (CI=true), where it says FAILED and exits 1: CI's machine has node, npm and the registry, so
# a skip there means something broke and must not pass unseen. HOME is a fresh
# temporary directory (icp's identities and settings go there), telemetry is off
# (DO_NOT_TRACK=1) and so is icp's update check.
set -euo pipefail

ICP_CLI_VERSION=1.5.0
ICP_CORE_VERSION=6.1.0
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="$(realpath "${1:-$ROOT/target/debug/canister-snapshots}")"
CACHE="${CANISTER_SNAPSHOTS_E2E_CACHE:-$HOME/.cache/canister-snapshots-e2e}"

skip() {
    if [[ "${CI:-}" == "true" ]]; then
        echo "e2e: FAILED (CI=true, where the script must run): $*" >&2
        exit 1
    fi
    echo "e2e: SKIPPED: $*"
    exit 0
}
step() { echo "e2e: $*"; }

[[ -x "$BIN" ]] || { echo "e2e: no binary at $BIN (build it first)" >&2; exit 1; }
command -v node >/dev/null && command -v npm >/dev/null || skip "node and npm are not installed"

ICP="$CACHE/node_modules/@icp-sdk/icp-cli-linux-x64/bin/icp"
installed() {
    [[ -x "$ICP" ]] && [[ "$("$ICP" --version 2>/dev/null)" == "icp $ICP_CLI_VERSION" ]] \
        && grep -q "\"version\": \"$ICP_CORE_VERSION\"" \
            "$CACHE/node_modules/@icp-sdk/core/package.json" 2>/dev/null
}
if ! installed; then
    step "installing @icp-sdk/icp-cli-linux-x64@$ICP_CLI_VERSION and @icp-sdk/core@$ICP_CORE_VERSION into $CACHE"
    mkdir -p "$CACHE"
    if ! timeout 300 npm install --prefix "$CACHE" --no-audit --no-fund --loglevel=error \
        "@icp-sdk/icp-cli-linux-x64@$ICP_CLI_VERSION" "@icp-sdk/core@$ICP_CORE_VERSION" >&2; then
        skip "npm could not install the pinned packages (is the registry reachable?)"
    fi
    installed || skip "the packages installed into $CACHE are not the pinned versions"
fi

WORK="$(mktemp -d)"
SERVE_PID=""
cleanup() {
    if [[ -n "$SERVE_PID" ]]; then kill -KILL "$SERVE_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
export HOME="$WORK/home" DO_NOT_TRACK=1
mkdir -p "$HOME"
"$ICP" settings update-check disabled >/dev/null
STATE="$WORK/state"

# Starts serve on a free port; sets URL and ROOT_KEY from the two lines it prints first. Each
# start has its own output file, created empty before serve starts: with one shared file, the
# first check could read the previous serve's lines (or the file just truncated, before the new
# serve printed anything), which failed a CI run once ("serve did not start" at once).
SERVES=0
start_serve() {
    SERVES=$((SERVES + 1))
    local out="$WORK/serve.$SERVES.out" err="$WORK/serve.$SERVES.err"
    : >"$out"
    "$BIN" serve --bind 127.0.0.1:0 --state-dir "$STATE" >>"$out" 2>"$err" &
    SERVE_PID=$!
    for _ in $(seq 300); do # up to 30 s: a loaded machine's first checkpoint syncs
        [[ $(wc -l <"$out") -ge 2 ]] && break
        kill -0 "$SERVE_PID" 2>/dev/null || { cat "$err" >&2; exit 1; }
        sleep 0.1
    done
    URL="$(sed -n 's/^listening on //p' "$out")"
    ROOT_KEY="$(sed -n 's/^root key: //p' "$out")"
    [[ -n "$URL" && ${#ROOT_KEY} -eq 266 ]] || {
        echo "e2e: serve did not start within 30 s; it printed:" >&2
        cat "$out" "$err" >&2
        exit 1
    }
}
# SIGTERM: serve checkpoints and exits 0.
stop_serve() {
    kill -TERM "$SERVE_PID"
    wait "$SERVE_PID"
    SERVE_PID=""
}
icp() { "$ICP" "$@" -n "$URL" -k "$ROOT_KEY"; }
expect() { # expect WHAT ACTUAL EXPECTED
    [[ "$2" == "$3" ]] || { echo "e2e: $1: got '$2', expected '$3'" >&2; exit 1; }
}

start_serve
step "serve at $URL; icp $("$ICP" --version | cut -d' ' -f2), a fresh identity with no cycles minted"
"$ICP" identity new e2e --storage plaintext >/dev/null
"$ICP" identity default e2e

# Created through the emulated cycles minting canister and cycles ledger, as icp does.
CANISTER="$(icp canister create --detached -q | tail -n1)"
step "canister create: $CANISTER"
icp canister install "$CANISTER" --wasm "$HERE/counter.wasm" >/dev/null
expect "call inc" "$(icp canister call "$CANISTER" inc '()')" "(1 : nat)"
expect "call inc" "$(icp canister call "$CANISTER" inc '()')" "(2 : nat)"
expect "query read" "$(icp canister call --query "$CANISTER" read '()')" "(2 : nat)"

step "JavaScript agent (@icp-sdk/core $ICP_CORE_VERSION)"
# Beside the packages: ES modules resolve imports from the script's own directory.
cp "$HERE/agent.mjs" "$CACHE/agent.mjs"
node "$CACHE/agent.mjs" "$URL" "$ROOT_KEY" "$CANISTER"
expect "read after the JavaScript agent's inc" "$(icp canister call --query "$CANISTER" read '()')" "(3 : nat)"

icp canister stop "$CANISTER" >/dev/null
SNAPSHOT="$(icp canister snapshot create "$CANISTER" -q | tail -n1)"
step "snapshot create: $SNAPSHOT (count 3)"
icp canister snapshot list "$CANISTER" --json >"$WORK/list.json"
grep -q "$SNAPSHOT" "$WORK/list.json" || { echo "e2e: list --json lacks $SNAPSHOT" >&2; cat "$WORK/list.json" >&2; exit 1; }
icp canister snapshot download "$CANISTER" "$SNAPSHOT" -o "$WORK/by-icp" >/dev/null
step "snapshot download -o: $(ls "$WORK/by-icp" | tr '\n' ' ')"
"$BIN" snapshot verify "$WORK/by-icp" >/dev/null

# Change the canister, then bring the snapshot back: uploaded by icp, restored.
icp canister start "$CANISTER" >/dev/null
expect "call inc" "$(icp canister call "$CANISTER" inc '()')" "(4 : nat)"
icp canister stop "$CANISTER" >/dev/null
UPLOADED="$(icp canister snapshot upload "$CANISTER" -i "$WORK/by-icp" -q | tail -n1)"
step "snapshot upload -i: $UPLOADED"
icp canister snapshot restore "$CANISTER" "$UPLOADED" >/dev/null
icp canister start "$CANISTER" >/dev/null
expect "read after restore" "$(icp canister call --query "$CANISTER" read '()')" "(3 : nat)"
# Both deleted: the command line below opens the state with the library's quota of one.
icp canister snapshot delete "$CANISTER" "$UPLOADED" >/dev/null
icp canister snapshot delete "$CANISTER" "$SNAPSHOT" >/dev/null
icp canister snapshot list "$CANISTER" --json >"$WORK/list.json"
if grep -q "$UPLOADED\|$SNAPSHOT" "$WORK/list.json"; then
    echo "e2e: a deleted snapshot is still listed" >&2; cat "$WORK/list.json" >&2; exit 1
fi
icp canister status "$CANISTER" --json >"$WORK/status.json"
grep -q '"running"\|Running' "$WORK/status.json" || { echo "e2e: status is not running" >&2; cat "$WORK/status.json" >&2; exit 1; }
step "snapshot restore, delete, status: done"

# The directory icp downloaded, uploaded with this project's own client (on the state
# directory, serve stopped, as the same principal), and one this project downloaded, uploaded
# by icp.
stop_serve
ME="$("$ICP" identity principal)"
cs() { "$BIN" --state-dir "$STATE" --sender "$ME" "$@"; }
OURS="$(cs canister snapshot upload "$CANISTER" --dir "$WORK/by-icp" | tail -n1)"
cs canister snapshot download "$CANISTER" "$OURS" --dir "$WORK/by-us" >/dev/null
step "canister-snapshots uploaded icp's directory as $OURS and downloaded it again"
start_serve
icp canister stop "$CANISTER" >/dev/null
FROM_US="$(icp canister snapshot upload "$CANISTER" -i "$WORK/by-us" -q | tail -n1)"
icp canister snapshot restore "$CANISTER" "$FROM_US" >/dev/null
icp canister start "$CANISTER" >/dev/null
expect "read after restoring this project's download" "$(icp canister call --query "$CANISTER" read '()')" "(3 : nat)"
stop_serve
step "PASSED"
