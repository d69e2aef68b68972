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
# Every check prints PASS, FAIL or SKIP; a summary ends the run (.ci/lib.sh).
# shellcheck source=.ci/lib.sh
source "$(dirname "$0")/lib.sh"

DENY_VERSION=0.20.2
cargo deny --version 2>/dev/null | grep -q "$DENY_VERSION" || cargo install --locked "cargo-deny@$DENY_VERSION"
cargo deny --version
for c in bans licenses sources; do judge "$c" cargo deny --locked check "$c"; done

# Advisories only with a database: a fresh one, or one fetched earlier on this machine.
refreshed="refreshed now"
timeout 120 cargo deny --locked fetch db || refreshed="NOT refreshed: GitHub unreachable"
db=$(find "${CARGO_HOME:-$HOME/.cargo}/advisory-dbs" -maxdepth 2 -path '*/advisory-db-*/.git' 2>/dev/null | head -n 1 || true)
if [ -n "$db" ]; then
  db_date=$(git -C "$(dirname "$db")" log -1 --format=%cs 2>/dev/null || echo unknown)
  judge "advisories (database of $db_date, $refreshed)" cargo deny --locked --offline check advisories
elif [ "${DENY_REQUIRE_ADVISORIES:-0}" = 1 ]; then
  fail "advisories: no advisory database (GitHub unreachable), required by DENY_REQUIRE_ADVISORIES=1"
else
  skip "advisories: no advisory database (GitHub unreachable, none fetched before on this machine): known vulnerabilities were NOT checked"
fi
summary deny
