#!/usr/bin/env bash
# Schemathesis against the service's own /openapi.json: generated valid and invalid requests for
# every documented operation, every check (`--checks all`: no 5xx, statuses, content types,
# headers and bodies as documented, invalid data rejected, valid data accepted, undeclared
# methods answered 405 with `Allow`, ...). Any failure fails the script.
#
# The proxy runs against the repository's fake shoutcloud (examples/fake_shoutcloud.rs), so the
# upstream path is exercised, not only the fallback.
#
# Installs schemathesis (pinned) into a virtualenv under ~/.cache, idempotently.
# Environment:
#   ST_MAX_EXAMPLES  test cases per operation and phase (default 200)
#   ST_SEED          the data generation seed (default fixed, so CI runs are reproducible;
#                    `random` for a new one, printed at the end)
#   SHOUT_CHECK_PROFILE  debug (default, what `cargo test` built) or release
#   SHOUT_PROXY_BIN, FAKE_SHOUTCLOUD_BIN  already built binaries instead of building them
set -euo pipefail
cd "$(dirname "$0")/.."

ST_VERSION=4.32.5
max_examples=${ST_MAX_EXAMPLES:-200}
seed=${ST_SEED:-20261121}
log() { printf '[schemathesis] %s\n' "$*"; }

# --- install ----------------------------------------------------------------------------
venv=${XDG_CACHE_HOME:-$HOME/.cache}/shout-proxy/schemathesis-$ST_VERSION
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  log "installing schemathesis==$ST_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
fi
log "$("$venv/bin/st" --version)"

# --- build and start the fake shoutcloud and the proxy ------------------------------------
proxy=${SHOUT_PROXY_BIN:-}
fake=${FAKE_SHOUTCLOUD_BIN:-}
if [ -z "$proxy" ] || [ -z "$fake" ]; then
  # The debug build by default: `cargo test` has built it already, so this costs seconds;
  # behaviour, not speed, is under test. SHOUT_CHECK_PROFILE=release for the release build.
  profile=${SHOUT_CHECK_PROFILE:-debug}
  profile_flag=()
  [ "$profile" = release ] && profile_flag=(--release)
  log "cargo build ${profile_flag[*]} --bin shout-proxy --example fake_shoutcloud"
  cargo build "${profile_flag[@]}" --locked --bin shout-proxy --example fake_shoutcloud
  proxy=${proxy:-target/$profile/shout-proxy}
  fake=${fake:-target/$profile/examples/fake_shoutcloud}
fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
admin_port=$(free_port)
fake_port=$(free_port)
out=target/schemathesis
mkdir -p "$out"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

"$fake" --listen "127.0.0.1:$fake_port" >"$out/fake_shoutcloud.log" 2>&1 &
pids+=($!)
"$proxy" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin_port" \
  --upstream-url "http://127.0.0.1:$fake_port/V1/SHOUT" --drain-ms 0 >"$out/shout-proxy.log" 2>&1 &
pids+=($!)

wait_for() {
  for _ in $(seq 150); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { log "FAILED: a process exited; logs in $out/"; tail -n 20 "$out"/*.log; exit 1; }
    done
    sleep 0.2
  done
  log "FAILED: nothing answered at $1"
  exit 1
}
wait_for "http://127.0.0.1:$fake_port/control"
wait_for "http://127.0.0.1:$port/health"
# The upstream path works before the run starts, so a failure below is not a setup fault.
source=$(curl -fsS -o /dev/null -w '%header{x-shout-source}' -H 'Content-Type: application/json' \
  -d '{"data":"schemathesis"}' "http://127.0.0.1:$port/")
log "proxy on :$port against the fake shoutcloud on :$fake_port (a first request answered from: $source)"

# --- the run ----------------------------------------------------------------------------
seed_args=()
[ "$seed" = random ] || seed_args=(--seed "$seed")
status=0
# From inside $out, so schemathesis's and hypothesis's caches land there, not in the work tree.
(
  cd "$out"
  timeout 600 "$venv/bin/st" run "http://127.0.0.1:$port/openapi.json" \
    --checks all \
    --max-examples "$max_examples" \
    "${seed_args[@]}" \
    --workers 2 \
    --request-timeout 10 \
    --wait-for-schema 30 \
    --report junit,ndjson --report-dir .
) || status=$?

calls=$(curl -fsS "http://127.0.0.1:$fake_port/control" 2>/dev/null || echo '?')
log "the fake shoutcloud saw: $calls"
if [ "$status" -eq 0 ]; then
  log "PASSED: every check held on every generated request (reports in $out/)"
else
  log "FAILED (exit $status): see the FAILURES above; reports and logs in $out/"
fi
exit "$status"
