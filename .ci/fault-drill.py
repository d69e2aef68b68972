#!/usr/bin/env python3
"""Fault drill: the resilience issue's "done when", measured from outside against the real binaries.

Starts the release `fake_shoutcloud` example and a fresh `shout-proxy` per fault mode, sends
unique valid requests at a fixed concurrency over keep-alive connections, and checks:

- every valid request gets 200 and the right answer, in every mode;
- p99 latency < 1.5 x the deadline, in every mode;
- hard down (the upstream fails every call): upstream calls < 0.5 x client requests, with the
  calls per open period reported;
- flaky 30 %: upstream calls <= 1.3 x client misses;
- recovery: after the breaker first opens on 5xx and the upstream heals, an answer comes from
  the upstream again within the open period plus a small margin.

Hard-down modes are paced over --hard-down-secs (8 s: four 2 s open periods) so that probes
happen during the load; hang and 5xx also run once as an unpaced burst. The flaky mode runs
--flaky-runs times (3) on fresh proxies, because whether its breaker trips is random and changes
the call count. A full run takes about 75 s after the build. Per-process logs go to
target/fault-drill-logs/, the table to target/fault-drill.md, raw numbers to
target/fault-drill.json.

Python 3 standard library only. Usage (from anywhere in the repository):

    python3 .ci/fault-drill.py                 # build, run every mode, write target/fault-drill.md
    python3 .ci/fault-drill.py --skip-build    # reuse target/release binaries
    python3 .ci/fault-drill.py --modes healthy,flaky --skip-build   # a subset, for debugging

Exit status: 0 when every target is met, 1 when one is not, 2 when the drill itself broke.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import http.client
import json
import math
import os
import platform
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import unicodedata
import urllib.parse
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXY_BIN = os.path.join(REPO, "target", "release", "shout-proxy")
FAKE_BIN = os.path.join(REPO, "target", "release", "examples", "fake_shoutcloud")

# The proxy's settings under test: defaults, except a 2 s open period so a drill fits in minutes.
DEADLINE_MS = 1000
BREAKER_OPEN_MS = 2000
P99_LIMIT_MS = DEADLINE_MS * 1.5
HARD_DOWN_MAX_SHARE = 0.5  # upstream calls < this x client requests
FLAKY_MAX_RATIO = 1.3  # upstream calls <= this x client misses
RECOVERY_MARGIN_MS = 500  # over the open period: poll interval + probe round trip + scheduling

# Fault modes, in the order they run. `upstream` says where the proxy points: the fake, a closed
# port, or a TCP server that resets every connection. `hard_down`: every upstream call fails, so
# the breaker must keep calls "at most a few per open period"; those modes are paced over
# --hard-down-secs so that several open periods (and probes) pass during the load, unless `burst`.
# `flaky` runs --flaky-runs times, each on a fresh proxy: whether the breaker trips on a 30 %
# failure rate is itself random, and it changes the call count.
MODES = [
    {"name": "healthy", "upstream": "fake", "knobs": {"mode": "ok"}},
    {"name": "refused", "upstream": "closed", "knobs": {"mode": "ok"}, "hard_down": True},
    {"name": "hang", "upstream": "fake", "knobs": {"mode": "hang"}, "hard_down": True},
    {"name": "slow-150ms", "upstream": "fake", "knobs": {"mode": "ok", "latency_ms": 150}},
    {"name": "5xx-503", "upstream": "fake",
     "knobs": {"mode": "fail", "failure_status": 503}, "hard_down": True},
    {"name": "429", "upstream": "fake",
     "knobs": {"mode": "fail", "failure_status": 429}, "hard_down": True},
    {"name": "malformed", "upstream": "fake", "knobs": {"mode": "malformed"}, "hard_down": True},
    {"name": "wrong-output", "upstream": "fake", "knobs": {"mode": "wrong"}, "hard_down": True},
    {"name": "flaky-30%", "upstream": "fake",
     "knobs": {"mode": "ok", "failure_rate": 0.3, "failure_status": 503}, "flaky": True},
    {"name": "reset", "upstream": "reset", "knobs": {"mode": "ok"}, "hard_down": True},
    # The asserted hard-down modes once more as one burst (no pacing): the cost of the first trip
    # with 16 requests in flight at once.
    {"name": "hang-burst", "upstream": "fake", "knobs": {"mode": "hang"}, "hard_down": True,
     "burst": True},
    {"name": "5xx-503-burst", "upstream": "fake",
     "knobs": {"mode": "fail", "failure_status": 503}, "hard_down": True, "burst": True},
]
DEFAULT_KNOBS = {"mode": "ok", "latency_ms": 0, "failure_rate": 0.0, "failure_status": 503}

# Words mixed into the unique inputs: ASCII, full case mapping (ß -> SS), precomposed accents,
# Greek, and combining accents (e + U+0301), which a code-point reversal would tear off.
WORDS = [
    "hello", "straße", "ñandú", "Ωmega", "fiancé", "größe", "e\u0301cole", "cafe\u0301",
    "shout", "Ärger", "çava", "a\u0308pfel", "proxy", "jump", "résumé", "día",
]


def log(msg: str) -> None:
    print(f"[fault-drill {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class DrillError(Exception):
    """The drill itself could not run (not a missed target)."""


# --------------------------------------------------------------------------------------------
# The expected answer: reverse by grapheme clusters, then full-case-map upper case.


def graphemes(text: str) -> list[str]:
    """Grapheme clusters, for the inputs this drill uses: a base character plus any combining
    marks (Mn, Mc, Me), ZWJ-joined characters and variation selectors. Not full UAX #29 (no
    Hangul jamo, regional-indicator pairs or prepend rules), so the inputs avoid those."""
    clusters: list[str] = []
    join_next = False
    for ch in text:
        cat = unicodedata.category(ch)
        extend = cat in ("Mn", "Mc", "Me") or ch == "\u200d" or 0xFE00 <= ord(ch) <= 0xFE0F
        if clusters and (extend or join_next):
            clusters[-1] += ch
        else:
            clusters.append(ch)
        join_next = ch == "\u200d"
    return clusters


def expected_answer(text: str) -> str:
    return "".join(reversed(graphemes(text))).upper()


assert expected_answer("test") == "TSET"
assert expected_answer("straße") == "ESSARTS"
assert expected_answer("e\u0301x") == "XE\u0301"


# --------------------------------------------------------------------------------------------
# Processes and ports.


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_post_json(port: int, path: str, payload: dict, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        body = json.dumps(payload).encode()
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_http_ok(port: int, path: str, proc: subprocess.Popen, what: str, timeout: float = 15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise DrillError(f"{what} exited with status {proc.returncode} before it was ready")
        try:
            status, _ = http_get(port, path, timeout=0.5)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise DrillError(f"{what} not ready on 127.0.0.1:{port}{path} after {timeout} s")


class Processes:
    """Every process the drill starts, so that all of them are ended on the way out."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SHOUT_") and not k.startswith("OTEL_")}
        logfile = open(os.path.join(self.log_dir, f"{name}.log"), "ab")  # noqa: SIM115
        proc = subprocess.Popen(argv, stdout=logfile, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)
        logfile.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        # A fresh proxy per mode; its graceful drain (5 s) is not under test here.
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)


class ResetServer:
    """Accepts connections, reads what arrives, and closes with SO_LINGER 0 (a TCP RST)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="reset-server", daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.accepted += 1
            try:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.settimeout(0.05)
                try:
                    conn.recv(65536)  # let the request arrive: the upstream dies mid-request
                except OSError:
                    pass
            finally:
                conn.close()

    def count(self) -> int:
        with self.lock:
            return self.accepted

    def close(self):
        self.stopping.set()
        self.thread.join(timeout=2)
        self.sock.close()


# --------------------------------------------------------------------------------------------
# Load.


@dataclass
class Outcome:
    input: str
    status: int | None
    correct: bool
    source: str
    latency_ms: float
    error: str = ""


class Client:
    """One keep-alive connection per worker thread."""

    def __init__(self, port: int):
        self.port = port
        self.local = threading.local()
        self.all: list[http.client.HTTPConnection] = []
        self.lock = threading.Lock()

    def conn(self) -> http.client.HTTPConnection:
        c = getattr(self.local, "conn", None)
        if c is None:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self.local.conn = c
            with self.lock:
                self.all.append(c)
        return c

    def drop(self):
        c = getattr(self.local, "conn", None)
        if c is not None:
            c.close()
            self.local.conn = None

    def shout(self, i: int, text: str) -> Outcome:
        path = ("/", "/v1", "/v1/")[i % 3]
        if i % 2 == 0:
            body = json.dumps({"data": text}).encode()
            ctype = "application/json"
        else:
            body = urllib.parse.urlencode({"data": text}).encode()
            ctype = "application/x-www-form-urlencoded"
        started = time.perf_counter()
        try:
            c = self.conn()
            c.request("POST", path, body=body, headers={"Content-Type": ctype})
            resp = c.getresponse()
            raw = resp.read()
            latency = (time.perf_counter() - started) * 1000
            source = resp.getheader("X-Shout-Source", "") or ""
            try:
                data = json.loads(raw).get("data")
            except (ValueError, AttributeError):
                data = None
            correct = resp.status == 200 and data == expected_answer(text)
            err = "" if correct else f"HTTP {resp.status} body {raw[:120]!r}"
            return Outcome(text, resp.status, correct, source, latency, err)
        except (OSError, http.client.HTTPException) as e:
            latency = (time.perf_counter() - started) * 1000
            self.drop()
            return Outcome(text, None, False, "", latency, f"{type(e).__name__}: {e}")

    def close(self):
        with self.lock:
            for c in self.all:
                c.close()


def unique_inputs(mode: str, n: int, run_id: str) -> list[str]:
    return [f"{WORDS[i % len(WORDS)]} {mode} {run_id} #{i}" for i in range(n)]


def run_load(port: int, inputs: list[str], concurrency: int, spread_secs: float):
    """Sends every input once with `concurrency` workers; when `spread_secs` > 0 request i does
    not start before i * spread_secs / len(inputs), so the load spans that long."""
    client = Client(port)
    interval = spread_secs / len(inputs) if spread_secs > 0 else 0.0
    t0 = time.perf_counter()

    def one(i: int) -> Outcome:
        if interval:
            wait = t0 + i * interval - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        return client.shout(i, inputs[i])

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
            outcomes = list(pool.map(one, range(len(inputs))))
    finally:
        client.close()
    return outcomes, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Observing the proxy and the fake.

METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(admin_port: int) -> dict[tuple[str, tuple], float]:
    status, body = http_get(admin_port, "/metrics")
    if status != 200:
        raise DrillError(f"/metrics answered {status}")
    out: dict[tuple[str, tuple], float] = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = METRIC_LINE.match(line)
        if not m:
            continue
        labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            continue
    return out


def by_label(metrics: dict, name: str, label: str) -> dict[str, float]:
    res: dict[str, float] = {}
    for (n, labels), v in metrics.items():
        if n == name:
            d = dict(labels)
            if label in d:
                res[d[label]] = res.get(d[label], 0) + v
    return res


def total(metrics: dict, name: str) -> float:
    return sum(v for (n, _), v in metrics.items() if n == name)


def status_json(admin_port: int) -> dict:
    status, body = http_get(admin_port, "/status")
    if status != 200:
        raise DrillError(f"/status answered {status}")
    return json.loads(body)


def fake_calls(fake_port: int) -> int:
    status, body = http_get(fake_port, "/control")
    if status != 200:
        raise DrillError(f"fake GET /control answered {status}")
    return int(json.loads(body)["calls"])


def set_knobs(fake_port: int, knobs: dict) -> None:
    payload = dict(DEFAULT_KNOBS)
    payload.update(knobs)
    status, body = http_post_json(fake_port, "/control", payload)
    if status != 200:
        raise DrillError(f"fake POST /control answered {status}: {body[:200]!r}")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return float("nan")
    return s[max(0, math.ceil(q * len(s)) - 1)]


# --------------------------------------------------------------------------------------------
# The drill.


@dataclass
class Drill:
    args: argparse.Namespace
    procs: Processes
    fake_port: int = 0
    reset: ResetServer | None = None
    results: list[dict] = field(default_factory=list)
    recovery: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    run_id: str = ""

    def start_proxy(self, upstream_url: str, label: str):
        port, admin = free_port(), free_port()
        proc = self.procs.start(f"shout-proxy-{label}", [
            PROXY_BIN,
            "--listen", f"127.0.0.1:{port}",
            "--admin-listen", f"127.0.0.1:{admin}",
            "--upstream-url", upstream_url,
            "--breaker-open-ms", str(BREAKER_OPEN_MS),
            *self.args.proxy_arg,
        ])
        wait_http_ok(admin, "/readyz", proc, f"shout-proxy ({label})")
        return proc, port, admin

    def upstream_url(self, kind: str) -> str:
        if kind == "fake":
            return f"http://127.0.0.1:{self.fake_port}/V1/SHOUT"
        if kind == "closed":
            return f"http://127.0.0.1:{free_port()}/V1/SHOUT"  # bound then closed: refused
        if kind == "reset":
            assert self.reset is not None
            return f"http://127.0.0.1:{self.reset.port}/V1/SHOUT"
        raise ValueError(kind)

    def upstream_count(self, kind: str) -> int | None:
        if kind == "fake":
            return fake_calls(self.fake_port)
        if kind == "reset":
            assert self.reset is not None
            return self.reset.count()
        return None  # nothing listens on a closed port; the proxy's attempt counter stands in

    def run_mode(self, mode: dict) -> dict:
        name, kind = mode["name"], mode["upstream"]
        hard_down = bool(mode.get("hard_down"))
        set_knobs(self.fake_port, mode["knobs"])
        proc, port, admin = self.start_proxy(self.upstream_url(kind), name)
        try:
            before = self.upstream_count(kind)
            spread = self.args.hard_down_secs if hard_down and not mode.get("burst") else 0.0
            inputs = unique_inputs(name, self.args.requests, self.run_id)
            log(f"{name}: {len(inputs)} requests, {self.args.concurrency} concurrent"
                + (f", spread over {spread:g} s" if spread else ""))
            outcomes, duration = run_load(port, inputs, self.args.concurrency, spread)
            time.sleep(0.1)  # let counters settle (the loads are done: clients await them)
            after = self.upstream_count(kind)
            metrics = scrape(admin)
            status = status_json(admin)
        finally:
            self.procs.stop(proc)

        lat = [o.latency_ms for o in outcomes]
        sources: dict[str, int] = {}
        for o in outcomes:
            sources[o.source or "none"] = sources.get(o.source or "none", 0) + 1
        attempts = by_label(metrics, "shout_upstream_attempts_total", "outcome")
        proxy_attempts = int(sum(attempts.values()))
        if before is None or after is None:
            calls, calls_from = proxy_attempts, "proxy attempts"
        else:
            calls = after - before
            calls_from = "fake /control" if kind == "fake" else "accepted connections"
        answers = by_label(metrics, "shout_answers_total", "source")
        misses = int(answers.get("upstream", 0) + answers.get("fallback", 0))
        breaker = status.get("pipeline", {}).get("breaker", {})
        transitions = by_label(metrics, "shout_breaker_transitions_total", "state")
        periods = duration * 1000 / BREAKER_OPEN_MS
        res = {
            "mode": name,
            "upstream": kind,
            "knobs": mode["knobs"],
            "hard_down": hard_down,
            "spread_secs": spread,
            "requests": len(outcomes),
            "correct": sum(o.correct for o in outcomes),
            "sources": sources,
            "p50_ms": percentile(lat, 0.50),
            "p99_ms": percentile(lat, 0.99),
            "max_ms": max(lat),
            "duration_s": duration,
            "upstream_calls": calls,
            "upstream_calls_from": calls_from,
            "proxy_attempts": attempts,
            "client_misses": misses,
            "calls_per_miss": calls / len(outcomes),
            "open_periods": periods,
            "calls_per_open_period": calls / max(periods, 1.0),
            "breaker_state": breaker.get("state"),
            "breaker_trips": int(transitions.get("open", 0)),
            "breaker_rejected": int(total(metrics, "shout_breaker_rejected_total")),
            "breaker_transitions": transitions,
            "retries": int(total(metrics, "shout_upstream_retries_total")),
            "budget_exhausted": int(total(metrics, "shout_upstream_retry_budget_exhausted_total")),
            "fallbacks": {k: int(v) for k, v in
                          by_label(metrics, "shout_fallbacks_total", "reason").items() if v},
            "errors": [o.__dict__ for o in outcomes if not o.correct][:5],
        }
        self.check_mode(res, mode)
        log(f"{name}: {res['correct']}/{res['requests']} correct, sources {sources}, "
            f"p99 {res['p99_ms']:.0f} ms, upstream calls {calls} ({calls_from}), "
            f"breaker {res['breaker_state']} trips {res['breaker_trips']}")
        return res

    def check_mode(self, res: dict, mode: dict) -> None:
        name = res["mode"]
        checks = []
        checks.append((f"{name}: 100% correct",
                       res["correct"] == res["requests"],
                       f"{res['correct']}/{res['requests']} correct"))
        checks.append((f"{name}: p99 < {P99_LIMIT_MS:.0f} ms",
                       res["p99_ms"] < P99_LIMIT_MS, f"p99 {res['p99_ms']:.0f} ms"))
        if res["client_misses"] != res["requests"]:
            checks.append((f"{name}: every request a cache miss", False,
                           f"misses {res['client_misses']} != requests {res['requests']}"))
        if mode.get("hard_down"):
            checks.append((f"{name}: upstream calls < {HARD_DOWN_MAX_SHARE} x requests",
                           res["upstream_calls"] < HARD_DOWN_MAX_SHARE * res["requests"],
                           f"{res['upstream_calls']} calls for {res['requests']} requests; "
                           f"{res['calls_per_open_period']:.1f} per {BREAKER_OPEN_MS} ms period"))
        if mode.get("flaky"):
            checks.append((f"{name}: upstream calls <= {FLAKY_MAX_RATIO} x misses",
                           res["upstream_calls"] <= FLAKY_MAX_RATIO * res["client_misses"],
                           f"{res['upstream_calls']} calls for {res['client_misses']} misses "
                           f"= {res['upstream_calls'] / max(res['client_misses'], 1):.2f}x"))
        res["checks"] = [{"target": t, "ok": ok, "measured": m} for t, ok, m in checks]
        for t, ok, m in checks:
            if not ok:
                self.failures.append(f"{t}: {m}")

    def run_recovery(self) -> dict:
        """Trips the breaker for the first time on 503s, heals the fake at once, then polls one
        request every 100 ms until an answer comes from the upstream again."""
        set_knobs(self.fake_port, {"mode": "fail", "failure_status": 503})
        proc, port, admin = self.start_proxy(self.upstream_url("fake"), "recovery")
        client = Client(port)
        n = 0
        try:
            trip_lower = trip_seen = None
            for _ in range(50):
                started = time.monotonic()
                client.shout(n, f"trip recovery {self.run_id} #{n}")
                n += 1
                st = status_json(admin)["pipeline"]["breaker"]
                if st["state"] == "open":
                    trip_lower, trip_seen = started, time.monotonic()
                    break
            if trip_lower is None:
                raise DrillError("recovery: the breaker did not open on 503s")
            set_knobs(self.fake_port, {"mode": "ok"})
            healed = time.monotonic()
            polls = []
            back = None
            while time.monotonic() - healed < 15:
                t = time.monotonic()
                o = client.shout(n, f"recover {self.run_id} #{n}")
                n += 1
                polls.append((round((t - healed) * 1000), o.source, o.correct))
                if not o.correct:
                    self.failures.append(f"recovery: wrong answer while polling: {o.error}")
                if o.source == "upstream":
                    back = time.monotonic()
                    break
                time.sleep(max(0.0, 0.1 - (time.monotonic() - t)))
            final = status_json(admin)["pipeline"]["breaker"]
        finally:
            client.close()
            self.procs.stop(proc)
        if back is None:
            rec = {"ok": False, "detail": "no upstream answer within 15 s", "polls": polls}
            self.failures.append("recovery: no upstream answer within 15 s of healing")
            return rec
        since_trip = (back - trip_lower) * 1000
        limit = BREAKER_OPEN_MS + RECOVERY_MARGIN_MS
        rec = {
            "trip_requests": n - len(polls),
            "trip_detect_ms": (trip_seen - trip_lower) * 1000,
            "since_heal_ms": (back - healed) * 1000,
            "since_trip_ms": since_trip,
            "limit_ms": limit,
            "polls": len(polls),
            "final_breaker": final,
            "ok": since_trip <= limit,
        }
        if not rec["ok"]:
            self.failures.append(
                f"recovery: upstream again {since_trip:.0f} ms after the first trip "
                f"> {limit} ms (open {BREAKER_OPEN_MS} + margin {RECOVERY_MARGIN_MS})")
        log(f"recovery: upstream again {rec['since_heal_ms']:.0f} ms after healing, "
            f"{since_trip:.0f} ms after the trip (limit {limit} ms)")
        return rec


# --------------------------------------------------------------------------------------------
# Report.


def fmt_sources(s: dict) -> str:
    return "/".join(str(s.get(k, 0)) for k in ("upstream", "cache", "fallback")) + (
        f" (+{sum(v for k, v in s.items() if k not in ('upstream', 'cache', 'fallback'))} none)"
        if any(k not in ("upstream", "cache", "fallback") for k in s) else "")


def fmt_dict(d: dict) -> str:
    return ", ".join(f"{k} {int(v)}" for k, v in sorted(d.items()) if v) or "-"


def source_version() -> str:
    """The commit the binaries were built from, and whether the build inputs had local edits."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "examples",
                                "Cargo.toml", "Cargo.lock"], cwd=REPO, text=True,
                               capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"commit {head}" + (" with uncommitted changes to src/ or Cargo files" if dirty else "")


def report(drill: Drill, started_at: datetime.datetime, elapsed: float) -> str:
    a = drill.args
    lines = []
    lines.append(f"Binaries built from {source_version()}"
                 + (" (`--skip-build`: as found in target/release)." if a.skip_build else "."))
    lines.append(f"Run {started_at.strftime('%Y-%m-%d %H:%M UTC')} on {platform.node()} "
                 f"({os.cpu_count()} cores, {platform.system()} {platform.release()}, "
                 f"Python {platform.python_version()}); the drill took {elapsed:.0f} s. "
                 f"{a.requests} unique requests per mode, {a.concurrency} concurrent; hard-down "
                 f"modes spread over {a.hard_down_secs:g} s. Proxy defaults (deadline "
                 f"{DEADLINE_MS} ms, attempt timeout 300 ms, 2 retries, budget 0.2 + a floor of 10 retries in any one second, breaker 10 consecutive failures) with "
                 f"`--breaker-open-ms {BREAKER_OPEN_MS}`"
                 + (f" and **{' '.join(a.proxy_arg)}** (an experiment, not the defaults)"
                    if a.proxy_arg else "")
                 + "; a fresh proxy per mode.")
    lines.append("")
    lines.append("| mode | requests | correct | upstream/cache/fallback | p50 / p99 / max ms "
                 "| upstream calls | calls / miss | calls per 2 s period | breaker at end "
                 "(trips, probes) | fallbacks by reason |")
    lines.append("| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | --- | --- |")
    for r in drill.results:
        calls = f"{r['upstream_calls']}" + ("¹" if r["upstream_calls_from"] == "proxy attempts"
                                            else "")
        lines.append(
            f"| {r['mode']} | {r['requests']} | {100 * r['correct'] / r['requests']:.0f} % "
            f"| {fmt_sources(r['sources'])} "
            f"| {r['p50_ms']:.0f} / {r['p99_ms']:.0f} / {r['max_ms']:.0f} "
            f"| {calls} | {r['calls_per_miss']:.2f} "
            + (f"| {r['calls_per_open_period']:.1f} ({r['duration_s']:.1f} s) " if r["hard_down"]
               else f"| - ({r['duration_s']:.1f} s) ")
            + f"| {r['breaker_state']} ({r['breaker_trips']}, "
            f"{int(r['breaker_transitions'].get('half_open', 0))}) "
            f"| {fmt_dict(r['fallbacks'])} |")
    lines.append("")
    lines.append("Upstream calls are the fake's `GET /control` count (before/after), or the "
                 "connections the reset server accepted; ¹ nothing listens on a refused port, so "
                 "there it is the proxy's own `shout_upstream_attempts_total`. Calls per 2 s "
                 "period = calls / max(1, mode duration / 2 s). Probes = breaker transitions to "
                 "half_open.")
    lines.append("")
    lines.append("| mode | proxy attempts by outcome | retries | retry budget refusals "
                 "| breaker rejections |")
    lines.append("| --- | --- | ---: | ---: | ---: |")
    for r in drill.results:
        lines.append(f"| {r['mode']} | {fmt_dict(r['proxy_attempts'])} | {r['retries']} "
                     f"| {r['budget_exhausted']} | {r['breaker_rejected']} |")
    lines.append("")
    rec = drill.recovery
    if rec:
        if "since_trip_ms" in rec:
            lines.append(
                f"Recovery (fresh proxy, fake answering 503, {rec['trip_requests']} sequential "
                f"requests until `/status` showed the first trip, then the fake healed at once "
                f"and one request every 100 ms): upstream again **{rec['since_heal_ms']:.0f} ms "
                f"after healing, {rec['since_trip_ms']:.0f} ms after the trip** (measured from "
                f"the start of the request that tripped it, an upper bound); limit "
                f"{rec['limit_ms']} ms = open period {BREAKER_OPEN_MS} ms + "
                f"{RECOVERY_MARGIN_MS} ms; {rec['polls']} polls; breaker then "
                f"{rec['final_breaker'].get('state')}.")
        else:
            lines.append(f"Recovery: {rec.get('detail')}")
        lines.append("")
    lines.append("| target | result | measured |")
    lines.append("| --- | --- | --- |")
    for r in drill.results:
        for c in r["checks"]:
            lines.append(f"| {c['target']} | {'PASS' if c['ok'] else '**FAIL**'} "
                         f"| {c['measured']} |")
    if rec and "since_trip_ms" in rec:
        lines.append(f"| recovery within open period + {RECOVERY_MARGIN_MS} ms "
                     f"| {'PASS' if rec['ok'] else '**FAIL**'} "
                     f"| {rec['since_trip_ms']:.0f} ms after the trip |")
    lines.append("")
    lines.append(f"**{'ALL TARGETS MET' if not drill.failures else 'TARGETS MISSED'}**"
                 + ("" if not drill.failures else ": " + "; ".join(drill.failures)))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skip-build", action="store_true", help="reuse target/release binaries")
    p.add_argument("--requests", type=int, default=200, help="unique requests per mode")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--hard-down-secs", type=float, default=8.0,
                   help="spread the requests of hard-down modes over this long (0: burst)")
    p.add_argument("--modes", default="", help="comma-separated subset of: "
                   + ",".join(m["name"] for m in MODES).replace("%", "%%"))
    p.add_argument("--flaky-runs", type=int, default=3,
                   help="run the flaky mode this many times, each on a fresh proxy")
    p.add_argument("--no-recovery", action="store_true", help="skip the recovery measurement")
    p.add_argument("--proxy-arg", action="append", default=[], metavar="ARG",
                   help="extra shout-proxy argument, for experiments (repeatable), e.g. "
                   "--proxy-arg=--retry-budget-min-per-sec=1; the report names them")
    p.add_argument("--out", default=os.path.join(REPO, "target", "fault-drill.md"))
    args = p.parse_args()

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)

    if not args.skip_build:
        log("cargo build --release --bin shout-proxy --example fake_shoutcloud")
        rc = subprocess.call(["cargo", "build", "--release", "--bin", "shout-proxy",
                              "--example", "fake_shoutcloud"], cwd=REPO)
        if rc != 0:
            log(f"build failed ({rc})")
            return 2
    for b in (PROXY_BIN, FAKE_BIN):
        if not os.access(b, os.X_OK):
            log(f"missing {b}; run without --skip-build")
            return 2

    modes = MODES
    if args.modes:
        wanted = args.modes.split(",")
        unknown = set(wanted) - {m["name"] for m in MODES}
        if unknown:
            p.error(f"unknown modes {sorted(unknown)}")
        modes = [m for m in MODES if m["name"] in wanted]

    log_dir = os.path.join(REPO, "target", "fault-drill-logs")
    os.makedirs(log_dir, exist_ok=True)
    for f in os.listdir(log_dir):
        if f.endswith(".log"):
            os.remove(os.path.join(log_dir, f))
    procs = Processes(log_dir)
    drill = Drill(args=args, procs=procs, run_id=format(int(time.time() * 1000) % 10**8, "x"))
    started_at = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    try:
        drill.fake_port = free_port()
        fake = procs.start("fake_shoutcloud", [FAKE_BIN, "--listen",
                                                f"127.0.0.1:{drill.fake_port}"])
        wait_http_ok(drill.fake_port, "/control", fake, "fake_shoutcloud")
        drill.reset = ResetServer()
        for mode in modes:
            if mode.get("flaky") and args.flaky_runs > 1:
                for k in range(1, args.flaky_runs + 1):
                    drill.results.append(drill.run_mode(dict(mode, name=f"{mode['name']}#{k}")))
            else:
                drill.results.append(drill.run_mode(mode))
            if mode["name"] == "5xx-503" and not args.no_recovery:
                drill.recovery = drill.run_recovery()
        if not args.no_recovery and not drill.recovery:
            drill.recovery = drill.run_recovery()
    except DrillError as e:
        log(f"the drill broke: {e} (logs in {log_dir})")
        return 2
    finally:
        procs.stop_all()
        if drill.reset is not None:
            drill.reset.close()

    text = report(drill, started_at, time.monotonic() - t0)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump({"results": drill.results, "recovery": drill.recovery,
                   "failures": drill.failures}, f, indent=2, ensure_ascii=False, default=str)
    log(f"wrote {args.out}")
    if drill.failures:
        for f in drill.failures:
            log(f"TARGET MISSED: {f}")
        return 1
    log("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
