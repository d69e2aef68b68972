#!/usr/bin/env bash
# The Swagger UI at /docs in a real browser: Debian's headless Chromium, driven by
# playwright-core (pinned in .ci/browser/package-lock.json), opens POST /, clicks "Try it out",
# sends {"data": "hello"}, clicks Execute and expects OLLEH in the response panel. It fails when
# any request of the page leaves the service (the UI must work without internet) and saves
# target/browser/swagger.png either way, as a CI artefact.
#
# Installs what it needs (Debian's chromium, `npm ci`), idempotently. No shoutcloud is needed:
# the upstream URL points at a closed port, so the local fallback answers.
#
# Environment: SHOUT_CHECK_PROFILE (debug, the default, or release); SHOUT_PROXY_BIN to test an
# already built binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[browser-test] %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- installs ---------------------------------------------------------------------------
if ! command -v chromium >/dev/null 2>&1; then
  log "installing Debian's chromium"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
command -v node >/dev/null 2>&1 || { log "FAILED: node (>= 20) is needed"; exit 1; }
log "$(chromium --version 2>/dev/null | head -n 1); node $(node --version)"

pinned=$(node -p "require('./.ci/browser/package-lock.json').packages['node_modules/playwright-core'].version")
installed=$(node -p "try { require('./.ci/browser/node_modules/playwright-core/package.json').version } catch { '' }")
if [ "$pinned" != "$installed" ]; then
  log "npm ci (playwright-core $pinned; it never downloads a browser of its own)"
  (cd .ci/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

# --- the service ------------------------------------------------------------------------
bin=${SHOUT_PROXY_BIN:-}
if [ -z "$bin" ]; then
  # The debug build by default (`cargo test` has built it already); SHOUT_CHECK_PROFILE=release
  # for the release build.
  profile=${SHOUT_CHECK_PROFILE:-debug}
  profile_flag=()
  [ "$profile" = release ] && profile_flag=(--release)
  log "cargo build ${profile_flag[*]} --bin shout-proxy"
  cargo build "${profile_flag[@]}" --locked --bin shout-proxy
  bin=target/$profile/shout-proxy
fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
admin_port=$(free_port)
mkdir -p target/browser
proxy_log=target/browser/shout-proxy.log

"$bin" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin_port" \
  --upstream-url http://127.0.0.1:9/V1/SHOUT --drain-ms 0 >"$proxy_log" 2>&1 &
proxy_pid=$!
trap 'kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true' EXIT

for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  kill -0 "$proxy_pid" 2>/dev/null || { log "FAILED: shout-proxy exited; see $proxy_log"; cat "$proxy_log"; exit 1; }
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/health" >/dev/null || { log "FAILED: shout-proxy did not answer on :$port"; exit 1; }

# --- the browser ------------------------------------------------------------------------
log "driving http://127.0.0.1:$port/docs"
status=0
BASE_URL="http://127.0.0.1:$port" SCREENSHOT="$PWD/target/browser/swagger.png" \
  timeout 180 node .ci/browser/swagger.mjs || status=$?

if [ "$status" -eq 0 ]; then
  log "PASSED: Swagger UI POST / showed OLLEH, all assets from the service; screenshot target/browser/swagger.png"
else
  log "FAILED (exit $status); screenshot target/browser/swagger.png, service log $proxy_log"
fi
exit "$status"
