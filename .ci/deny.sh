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

if ! cargo deny --version 2>/dev/null | grep -q "$DENY_VERSION"; then
  log "installing cargo-deny $DENY_VERSION (cargo install --locked; several minutes)"
  started=$(date +%s)
  cargo install --locked "cargo-deny@$DENY_VERSION"
  log "installed in $(( $(date +%s) - started )) s"
fi
log "$(cargo deny --version)"

failed=()
results=()

# --- bans, licences, sources: always ------------------------------------------------------
for check in bans licenses sources; do
  if cargo deny --locked check "$check"; then
    results+=("$check ok")
  else
    results+=("$check FAILED")
    failed+=("$check")
  fi
done

# --- advisories: only with a database -------------------------------------------------------
dbs=${CARGO_HOME:-$HOME/.cargo}/advisory-dbs
advisories_mode=
if timeout 120 cargo deny --locked fetch db; then
  advisories_mode=fresh
else
  stale=$(ls -d "$dbs"/advisory-db-*/.git 2>/dev/null | head -n 1 || true)
  if [ -n "$stale" ]; then
    advisories_mode=stale
    db_date=$(git -C "$(dirname "$stale")" log -1 --format=%cs 2>/dev/null || echo unknown)
  fi
fi

case "$advisories_mode" in
  fresh | stale)
    offline=()
    if [ "$advisories_mode" = stale ]; then
      log "the advisory database could not be fetched; using the copy on this machine from $db_date"
      offline=(--offline)
    fi
    if cargo deny --locked "${offline[@]}" check advisories; then
      results+=("advisories ok${db_date:+ (database of $db_date, not refreshed)}")
    else
      results+=("advisories FAILED")
      failed+=(advisories)
    fi
    ;;
  *)
    log "the RustSec advisory database could not be fetched from GitHub (unreachable from here)"
    log "and none was fetched before on this machine: known vulnerabilities were NOT checked."
    results+=("advisories SKIPPED (no advisory database: GitHub unreachable)")
    if [ "${DENY_REQUIRE_ADVISORIES:-0}" = 1 ]; then
      failed+=("advisories (required by DENY_REQUIRE_ADVISORIES=1)")
    fi
    ;;
esac

log "summary: $(IFS=','; echo "${results[*]}" | sed 's/,/, /g')"
if [ "${#failed[@]}" -gt 0 ]; then
  log "FAILED: ${failed[*]}"
  exit 1
fi
log "PASSED (the checks that ran)"
