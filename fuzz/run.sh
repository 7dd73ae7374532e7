#!/usr/bin/env bash
# Runs busd's fuzz targets with cargo-fuzz (libFuzzer) on the stable toolchain.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     default: 20 s each, every target
#
# Each target starts from its committed seeds (fuzz/seeds/TARGET: real traffic, and every
# input that once crashed) and keeps what it learns in fuzz/corpus/TARGET (not committed).
# Stable Rust has no sanitizers, so targets are built with `--sanitizer none`: libFuzzer's
# coverage guidance works, memory errors in unsafe code would not be caught (busd's parsers
# have none). A crash stops the run with libFuzzer's report; its input is in
# fuzz/artifacts/TARGET.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-20}
shift || true
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
# The committed Cargo.lock pins the versions (cargo fuzz has no --locked of its own).
cargo metadata --locked --format-version 1 >/dev/null
cargo fuzz build --sanitizer none --release
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${seconds}s"
  mkdir -p "corpus/$t" "seeds/$t"
  extra=()
  # The machine's own bus configuration and service files, read-only extra seeds.
  case $t in
    config) [ -d /usr/share/dbus-1 ] && extra+=(/usr/share/dbus-1) ;;
    service_file) [ -d /usr/share/dbus-1/services ] && extra+=(/usr/share/dbus-1/services) ;;
  esac
  log="artifacts/$t.log"
  mkdir -p artifacts
  if ! cargo fuzz run --sanitizer none --release "$t" "corpus/$t" "seeds/$t" ${extra[@]+"${extra[@]}"} -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1; then
    grep -v "^#" "$log" | tail -40 >&2
    echo "fuzz target $t failed: its input is in fuzz/artifacts/$t, the log in fuzz/$log" >&2
    exit 1
  fi
  grep -E "^(stat::number_of_executed_units|stat::new_units_added)|cov: .*DONE|^#[0-9]+.*DONE" "$log" || true
done
