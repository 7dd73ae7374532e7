#!/usr/bin/env bash
# Runs the README's first command exactly as written (the first line that starts with
# "cargo run") and checks that it prints a bus address within the time a cold release
# build needs; then stops it. A newcomer types this first: it must work.
set -euo pipefail
cd "$(dirname "$0")/.."

cmd=$(grep -m1 '^cargo run' README.md) || { echo "README.md has no 'cargo run' line" >&2; exit 1; }
out=$(mktemp)
err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT
echo "running: $cmd"
setsid bash -c "exec $cmd" >"$out" 2>"$err" </dev/null &
pid=$!
ok=false
for _ in $(seq 6000); do
  if grep -q '^unix:.*guid=' "$out"; then ok=true; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
kill -TERM -- "-$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
if ! $ok; then
  echo "the README's first command printed no bus address: $cmd" >&2
  grep -v '^ *\(Compiling\|Finished\|Running\|Blocking\)' "$err" | tail -n 5 >&2
  exit 1
fi
echo "it printed $(head -n 1 "$out")"
