#!/usr/bin/env bash
# cargo-deny against deny.toml: licences (an explicit allow-list), bans (duplicates warn, `*`
# requirements and OpenSSL fail), sources (crates.io only), and RustSec advisories.
#
# Advisories need the RustSec database, which cargo-deny clones from GitHub. Where GitHub cannot
# be reached (this project's machines reach only package registries), the advisories check is
# SKIPPED and the summary says so in capitals: nothing is reported as checked that was not.
# A database fetched earlier on this machine is used instead, with its date printed.
# Set DENY_REQUIRE_ADVISORIES=1 (CI with internet access) to make a skip fail the script.
#
# Installs cargo-deny (pinned) with `cargo install --locked` when missing: a source build that
# took 6-18 min on 2 cores here, once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."

DENY_VERSION=0.20.2
log() { printf '[deny] %s\n' "$*"; }
cargo deny --version 2>/dev/null | grep -q "$DENY_VERSION" || cargo install --locked "cargo-deny@$DENY_VERSION"
log "$(cargo deny --version)"
failed=() results=()
check() { # $1: what the summary calls it; the rest: cargo deny's arguments
  if cargo deny --locked "${@:2}"; then results+=("$1 ok"); else results+=("$1 FAILED") failed+=("$1"); fi
}
for c in bans licenses sources; do check "$c" check "$c"; done

# Advisories only with a database: a fresh one, or one fetched earlier on this machine.
stale=$(find "${CARGO_HOME:-$HOME/.cargo}/advisory-dbs" -maxdepth 2 -path '*/advisory-db-*/.git' 2>/dev/null | head -n 1 || true)
if timeout 120 cargo deny --locked fetch db; then
  check advisories check advisories
elif [ -n "$stale" ]; then
  db_date=$(git -C "$(dirname "$stale")" log -1 --format=%cs 2>/dev/null || echo unknown)
  log "the advisory database could not be fetched; using the copy on this machine from $db_date"
  check "advisories (database of $db_date, not refreshed)" --offline check advisories
else
  log "the RustSec advisory database could not be fetched from GitHub (unreachable from here)"
  log "and none was fetched before on this machine: known vulnerabilities were NOT checked."
  results+=("advisories SKIPPED (no advisory database: GitHub unreachable)")
  [ "${DENY_REQUIRE_ADVISORIES:-0}" != 1 ] || failed+=("advisories (required by DENY_REQUIRE_ADVISORIES=1)")
fi

printf -v summary '%s, ' "${results[@]}"
log "summary: ${summary%, }"
[ "${#failed[@]}" -eq 0 ] || { log "FAILED: ${failed[*]}"; exit 1; }
log "PASSED (the checks that ran)"
