#!/usr/bin/env bash
# The Swagger UI at /docs in a real browser: Debian's headless Chromium, driven by
# playwright-core (pinned in .ci/browser/package-lock.json), opens POST /, clicks "Try it out",
# sends {"data": "hello"}, clicks Execute and expects OLLEH in the response panel. It fails when
# any request of the page leaves the service (the UI must work without internet) and saves
# target/browser/swagger.png either way, as a CI artefact.
#
# Installs what it needs (Debian's chromium, `npm ci`), idempotently. No shoutcloud is needed:
# `cargo xtask with --no-fake` points the release proxy at a closed port, so the fallback answers.
# shellcheck source=.ci/lib.sh
source "$(dirname "$0")/lib.sh"
need chromium:chromium
echo "$(chromium --version 2>/dev/null | head -n 1); node $(node --version)"
# npm ci installs the locked playwright-core only (about 2 s, from npm's cache when it has it); it
# never downloads a browser of its own.
(cd .ci/browser && npm ci --prefer-offline --no-audit --no-fund --loglevel=error)
cargo build --release --locked --bin shout-proxy
SCREENSHOT="$PWD/target/browser/swagger.png" cargo xtask with --no-fake -- timeout 180 node .ci/browser/swagger.mjs
