#!/usr/bin/env bash
# Runs the README's worked example at the shell ("A local replica on disk, at the shell") exactly
# as written, one `canister-snapshots` process per line, in a fresh directory, and checks that
# each command prints what the README says it prints and fails exactly when the README shows an
# error. Every command is a new process on the same state directory: a restart between every
# step (issue 7's end-to-end shell test).
#
# Usage: .ci/readme-shell.sh PATH/TO/canister-snapshots
set -euo pipefail
cd "$(dirname "$0")/.."

binary=$(realpath "${1:?usage: $0 PATH/TO/canister-snapshots}")
readme=$(realpath README.md)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/bin"
ln -s "$binary" "$work/bin/canister-snapshots"
export PATH="$work/bin:$PATH"

# The console block that follows the section's heading.
block=$(awk '
  /^## A local replica on disk, at the shell/ { section = 1; next }
  section && /^```console/ { inside = 1; next }
  inside && /^```/ { exit }
  inside { print }
' "$readme")
if [[ -z "$block" ]]; then
  echo "readme-shell: no console block under \"A local replica on disk, at the shell\" in README.md" >&2
  exit 1
fi

commands=()
expected=()
while IFS= read -r line; do
  if [[ "$line" == '$ '* ]]; then
    commands+=("${line#\$ }")
    expected+=("")
  elif ((${#commands[@]} > 0)); then
    last=$((${#expected[@]} - 1))
    expected[last]+="$line"$'\n'
  fi
done <<<"$block"

# The block's paths are the repository's (tests/fixtures/...), as for a reader at its root.
ln -s "$(pwd)/tests" "$work/tests"
cd "$work"
failures=0
for i in "${!commands[@]}"; do
  command=${commands[i]}
  want=${expected[i]}
  status=0
  eval "$command" >"$work/out" 2>&1 || status=$?
  got=$(cat "$work/out")
  if [[ "$got" != "${want%$'\n'}" ]]; then
    echo "readme-shell: \`$command\` printed:" >&2
    echo "$got" >&2
    echo "README.md says:" >&2
    printf '%s' "$want" >&2
    failures=$((failures + 1))
  elif [[ "$want" == error:* && $status -eq 0 ]]; then
    echo "readme-shell: \`$command\` printed its error but exited 0" >&2
    failures=$((failures + 1))
  elif [[ "$want" != error:* && $status -ne 0 ]]; then
    echo "readme-shell: \`$command\` exited $status" >&2
    failures=$((failures + 1))
  else
    echo "ok: $command"
  fi
done
if ((failures > 0)); then
  echo "readme-shell: $failures of ${#commands[@]} commands differ from README.md" >&2
  exit 1
fi
echo "readme-shell: all ${#commands[@]} commands of the README's shell example behave as written"
