#!/usr/bin/env bash
# dbus-compat: runs dbus's own installed tests (Debian's dbus-tests) against a bus daemon.
#
#   dbus-compat/run.sh [--daemon PATH] [--as USER] [--results FILE]
#       runs every test that starts a bus, both variants, as USER (default: the caller),
#       printing a line per test and a total; per-subtest results go to FILE.
#   dbus-compat/run.sh --compare [--daemon PATH]
#       runs the suite against /usr/bin/dbus-daemon (the reference) and against PATH
#       (default: target/debug/busd), as root and as an unprivileged user when run as root,
#       and fails when a subtest passes with the reference but not with PATH, unless
#       dbus-compat/expected-differences lists it (with its reason).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
suite=/usr/share/installed-tests/dbus
per_test_timeout="${DBUS_COMPAT_TIMEOUT:-300}"
unprivileged=busd-compat

tests=(
  test-dbus-daemon test-monitor test-sd-activation test-uid-permissions test-header-fields
  test-dbus-daemon-eavesdrop test-dbus-daemon-fork.sh test-containers
  integration/transient-services.sh
)

ensure_suite() {
  [ -d "$suite" ] && return
  if [ "$(id -u)" != 0 ]; then
    echo "dbus-tests is not installed and we are not root: apt-get install dbus-tests" >&2
    exit 1
  fi
  echo "== installing dbus-tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends dbus-tests >/dev/null
}

ensure_user() {
  id "$unprivileged" >/dev/null 2>&1 && return
  useradd --system --user-group --create-home --shell /usr/sbin/nologin "$unprivileged"
}

# The command line of a .test file (its Exec=, without the leading "env").
exec_line() {
  sed -n 's/^Exec=//p' "$1" | sed 's/^env //'
}

# run_one DAEMON USER TESTFILE LOGFILE: runs one .test with a timeout, as USER.
run_one() {
  local daemon="$1" user="$2" file="$3" log="$4" name="$5"
  local home rt cmd bus_pid=""
  home="$(mktemp -d)"
  rt="$(mktemp -d)"
  chmod 700 "$rt"
  if [ "$user" != "$(id -un)" ]; then
    chown "$user": "$home" "$rt"
  fi
  # shellcheck disable=SC2207
  cmd=($(exec_line "$file"))
  local as=()
  if [ "$user" != "$(id -un)" ]; then
    as=(runuser -u "$user" --)
  fi
  local env=(env -u DBUS_SESSION_BUS_ADDRESS -u DBUS_SYSTEM_BUS_ADDRESS HOME="$home"
    XDG_RUNTIME_DIR="$rt" DBUS_TEST_DAEMON="$daemon" PATH=/usr/sbin:/usr/bin:/sbin:/bin)
  if [[ "$name" == integration/* ]]; then
    # These talk to "the" session bus of the user, at $XDG_RUNTIME_DIR/bus.
    "${as[@]}" "${env[@]}" "$daemon" --session --nofork --address="unix:path=$rt/bus" \
      >/dev/null 2>&1 &
    bus_pid=$!
    for _ in $(seq 100); do [ -S "$rt/bus" ] && break; sleep 0.05; done
  fi
  (cd "$home" && timeout -k 5 "$per_test_timeout" "${as[@]}" "${env[@]}" "${cmd[@]}") \
    >"$log" 2>&1 </dev/null && status=0 || status=$?
  if [ -n "$bus_pid" ]; then
    kill "$bus_pid" 2>/dev/null || true
    wait "$bus_pid" 2>/dev/null || true
  fi
  rm -rf "$home" "$rt"
  echo "# exit status $status" >>"$log"
}

# parse NAME LOG: appends "name<TAB>subtest<TAB>ok|fail|skip<TAB>reason" lines to stdout.
parse() {
  local name="$1" log="$2"
  awk -v name="$name" -F'\n' '
    /^ok [0-9]+/ {
      line = $0; sub(/^ok [0-9]+ ?-? ?/, "", line)
      if (match(line, / # SKIP/)) {
        reason = substr(line, RSTART + 7); sub(/^ +/, "", reason)
        test_name = substr(line, 1, RSTART - 1)
        if (test_name == "") test_name = "(unnamed)"
        printf "%s\t%s\tskip\t%s\n", name, test_name, reason
      } else {
        if (line == "") line = "(unnamed)"
        printf "%s\t%s\tok\t\n", name, line
      }
      seen = 1; next
    }
    /^not ok [0-9]+/ {
      line = $0; sub(/^not ok [0-9]+ ?-? ?/, "", line)
      if (line == "") line = "(unnamed)"
      printf "%s\t%s\tfail\t\n", name, line; seen = 1; failed = 1; next
    }
    /^1\.\.0/ { reason = $0; sub(/^1\.\.0 *# *(SKIP)? *-? */, "", reason)
      printf "%s\t(all)\tskip\t%s\n", name, reason; seen = 1; skipped_all = 1; next }
    /^Bail out!/ { bail = $0 }
    /^# exit status / { status = $0; sub(/^# exit status /, "", status); status += 0 }
    END {
      if (bail != "") printf "%s\t(bail out)\tfail\t%s\n", name, bail
      else if (status != 0 && !failed) printf "%s\t(exit status %s)\tfail\t\n", name, status
      else if (!seen) printf "%s\t(no output)\tfail\t\n", name
    }' "$log"
}

# suite DAEMON USER RESULTS LOGDIR: runs every test; prints a line per test and a total.
run_suite() {
  local daemon="$1" user="$2" results="$3" logs="$4"
  : >"$results"
  mkdir -p "$logs"
  local t variant file log name p f s
  for t in "${tests[@]}"; do
    for variant in "" _with_config; do
      file="$suite/$t$variant.test"
      [ -f "$file" ] || continue
      name="$t$variant"
      log="$logs/${name//\//_}.log"
      run_one "$daemon" "$user" "$file" "$log" "$name"
      parse "$name" "$log" >>"$results"
      p=$(awk -F'\t' -v n="$name" '$1==n && $3=="ok"' "$results" | wc -l)
      f=$(awk -F'\t' -v n="$name" '$1==n && $3=="fail"' "$results" | wc -l)
      s=$(awk -F'\t' -v n="$name" '$1==n && $3=="skip"' "$results" | wc -l)
      printf '%-45s %3d passed, %3d failed, %3d skipped\n' "$name" "$p" "$f" "$s"
      awk -F'\t' -v n="$name" '$1==n && $3=="fail" { print "    FAIL " $2 }' "$results"
      awk -F'\t' -v n="$name" '$1==n && $3=="skip" { c[$4]++ }
        END { for (r in c) printf "    skipped %d: %s\n", c[r], r }' "$results" | sort
    done
  done
  p=$(awk -F'\t' '$3=="ok"' "$results" | wc -l)
  f=$(awk -F'\t' '$3=="fail"' "$results" | wc -l)
  s=$(awk -F'\t' '$3=="skip"' "$results" | wc -l)
  echo "$p passed, $f failed, $s skipped"
}

daemon="$root/target/debug/busd"
user="$(id -un)"
results=""
compare=false
while [ $# -gt 0 ]; do
  case "$1" in
    --daemon) daemon="$2"; shift 2 ;;
    --daemon=*) daemon="${1#*=}"; shift ;;
    --as) user="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    --compare) compare=true; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
case "$daemon" in /*) ;; *) daemon="$(command -v "$daemon" || echo "$PWD/$daemon")" ;; esac
ensure_suite

if ! $compare; then
  out="${results:-$(mktemp)}"
  run_suite "$daemon" "$user" "$out" "$(mktemp -d)"
  echo "per-subtest results: $out"
  exit 0
fi

work="$(mktemp -d)"
users=("$(id -un)")
if [ "$(id -u)" = 0 ]; then
  ensure_user
  users+=("$unprivileged")
fi
regressions=0
for u in "${users[@]}"; do
  echo "== reference: /usr/bin/dbus-daemon as $u"
  run_suite /usr/bin/dbus-daemon "$u" "$work/ref-$u.tsv" "$work/logs/ref-$u"
  echo "== under test: $daemon as $u"
  under_test="$daemon"
  if [ "$u" != "$(id -un)" ]; then
    # The checkout may not be readable by that user (e.g. under /root): run a copy.
    copy_dir="$(mktemp -d)"
    chmod 755 "$copy_dir"
    cp "$daemon" "$copy_dir/busd"
    chmod 755 "$copy_dir/busd"
    under_test="$copy_dir/busd"
  fi
  run_suite "$under_test" "$u" "$work/test-$u.tsv" "$work/logs/test-$u"
  # A regression: ok with the reference, anything else (or absent) under test.
  while IFS=$'\t' read -r name subtest _; do
    got=$(awk -F'\t' -v n="$name" -v s="$subtest" '$1==n && $2==s { print $3; exit }' \
      "$work/test-$u.tsv")
    [ "$got" = ok ] && continue
    key="$name	$subtest"
    if grep -qxF "$key" <(grep -v '^#' "$here/expected-differences" | cut -f1,2); then
      echo "   expected difference ($u): $name $subtest: ${got:-missing}"
      continue
    fi
    echo "   REGRESSION ($u): $name $subtest: ${got:-missing} (ok with dbus-daemon)"
    regressions=$((regressions + 1))
  done < <(awk -F'\t' '$3=="ok"' "$work/ref-$u.tsv")
done
echo "logs and results: $work"
if [ "$regressions" -gt 0 ]; then
  echo "$regressions subtests pass with dbus-daemon and fail with $daemon"
  exit 1
fi
echo "no subtest that passes with dbus-daemon fails with $daemon"
