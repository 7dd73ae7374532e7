#!/usr/bin/env bash
# Runs every check and test of the workspace; installs the D-Bus clients the end-to-end
# tests drive when they are missing (Debian: needs root, as on the project's machines).
set -euo pipefail
cd "$(dirname "$0")/.."

# The end-to-end tests fail, naming the package, when one of these is missing
# (REQUIREMENTS in tests/src/lib.rs lists the same).
need=()
command -v dbus-send >/dev/null || need+=(dbus-bin)
command -v dbus-monitor >/dev/null || need+=(dbus-bin)
command -v dbus-run-session >/dev/null || need+=(dbus-daemon)
[ -f /usr/share/dbus-1/session.conf ] || need+=(dbus-session-bus-common)
[ -f /usr/share/dbus-1/system.conf ] || need+=(dbus-system-bus-common)
command -v dbus-daemon >/dev/null || need+=(dbus-daemon)
[ -d /usr/share/installed-tests/dbus ] || need+=(dbus-tests)
command -v gdbus >/dev/null || need+=(libglib2.0-bin)
command -v busctl >/dev/null || need+=(systemd)
command -v systemd-socket-activate >/dev/null || need+=(systemd)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v prlimit >/dev/null || need+=(util-linux)
command -v unshare >/dev/null || need+=(util-linux)
command -v useradd >/dev/null || need+=(passwd)
/usr/bin/python3 -c 'import dbus' 2>/dev/null || need+=(python3-dbus)
command -v tmux >/dev/null || need+=(tmux)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "missing packages and not root: install ${need[*]} first" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u)
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings
echo "== build"
cargo build --workspace --locked
echo "== tests"
cargo test --workspace --locked
echo "== the README's first command, as written"
bash tests/readme-first-command.sh
echo "== dbus-compat: dbus's own test suite, busd compared with dbus-daemon"
bash dbus-compat/run.sh --compare
echo "== fuzz: every target briefly (fuzz/run.sh; longer runs in docs/reliability.md)"
bash fuzz/run.sh "${FUZZ_SECONDS:-15}"
