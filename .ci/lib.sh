# shellcheck shell=bash
# What the .ci scripts share, sourced by each (`source "$(dirname "$0")/lib.sh"`): strict mode and
# the repository root as working directory; installing missing Debian packages (as root or via
# sudo) and pinned pip packages into a virtualenv, both idempotent; PASS/FAIL lines and a summary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# apt_install PACKAGE...: quietly, without recommends (they bring daemons and exporters not used).
apt_install() {
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  # Where systemd runs, Debian's prometheus starts its own daemon on :9090; the checks run their own.
  ! systemctl is-active --quiet prometheus 2>/dev/null || as_root systemctl stop prometheus || true
}

# need COMMAND:PACKAGE...: installs, in one apt-get run, the packages whose command is missing.
need() {
  local missing=() pair
  for pair in "$@"; do command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}"); done
  [ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
}

# pinned_venv DIR REQUIREMENT...: a virtualenv in DIR holding exactly these pins; rebuilt when they
# change, reused otherwise (DIR/requirements.txt records what it holds).
pinned_venv() {
  local dir=$1
  shift
  [ -x "$dir/bin/python" ] && [ "$(cat "$dir/requirements.txt" 2>/dev/null)" = "$(printf '%s\n' "$@")" ] && return 0
  python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
  python3 -m venv --clear "$dir"
  "$dir/bin/pip" install --disable-pip-version-check -q --upgrade pip "$@"
  printf '%s\n' "$@" >"$dir/requirements.txt"
}

# Every check prints PASS, FAIL or SKIP with what it covered; `summary` repeats them and fails the
# script when any failed. Nothing is skipped silently.
RESULTS=()
FAILED=0
section() { printf '\n== %s (%ss since start)\n' "$1" "$SECONDS"; }
pass() { RESULTS+=("PASS  $1"); echo "PASS  $1"; }
fail() { RESULTS+=("FAIL  $1"); echo "FAIL  $1" >&2; FAILED=$((FAILED + 1)); }
skip() { RESULTS+=("SKIP  $1"); echo "SKIP  $1"; }
# judge LABEL COMMAND...: runs COMMAND, then PASS or FAIL LABEL by its exit status.
judge() { if "${@:2}"; then pass "$1"; else fail "$1"; fi; }
# summary NAME: the results again and their counts; exit status 1 when any check failed.
summary() {
  section summary
  printf '%s\n' "${RESULTS[@]}"
  printf '\n%s: %s passed, %s failed\n' "$1" "$(printf '%s\n' "${RESULTS[@]}" | grep -c '^PASS' || true)" "$FAILED"
  [ "$FAILED" -eq 0 ]
}
