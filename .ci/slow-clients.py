#!/usr/bin/env python3
"""Slow clients, measured from outside: 500 connections that send half a request head and stall
must not slow normal requests down (p99 under 50 ms), and the server must close them after its
header read timeout.

Usage: python3 .ci/slow-clients.py [--stalled 500] [--requests 1000]
Needs target/release/shout-proxy (cargo build --release). Standard library only.
Exit status: 0 when both targets hold, 1 when one is missed, 2 when the check itself broke.
"""

import argparse
import http.client
import json
import socket
import subprocess
import sys
import time

HEADER_TIMEOUT_MS = 2000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, deadline=15.0):
    started = time.time()
    while time.time() - started < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("shout-proxy did not become ready")


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100.0 * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stalled", type=int, default=500)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()

    port, admin = free_port(), free_port()
    closed_upstream = free_port()  # nothing listens: every answer is the local fallback
    proxy = subprocess.Popen(
        [
            "target/release/shout-proxy",
            "--listen", f"127.0.0.1:{port}",
            "--admin-listen", f"127.0.0.1:{admin}",
            "--upstream-url", f"http://127.0.0.1:{closed_upstream}/V1/SHOUT",
            "--header-read-timeout-ms", str(HEADER_TIMEOUT_MS),
            "--drain-ms", "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stalled = []
    try:
        wait_ready(admin)
        for _ in range(args.stalled):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            stalled.append(s)
        stalled_at = time.time()

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        latencies, failures = [], 0
        for i in range(args.requests):
            body = json.dumps({"data": f"normal {i}"})
            started = time.perf_counter()
            conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            latencies.append((time.perf_counter() - started) * 1000)
            expected = f"normal {i}"[::-1].upper()
            if response.status != 200 or json.loads(payload)["data"] != expected:
                failures += 1
        measured_in = time.time() - stalled_at

        # Wait past the header timeout, then every stalled connection must read EOF or reset.
        time.sleep(max(0.0, HEADER_TIMEOUT_MS / 1000 + 0.5 - (time.time() - stalled_at)))
        closed = 0
        for s in stalled:
            s.settimeout(1.0)
            try:
                if s.recv(64) == b"":
                    closed += 1
            except (ConnectionResetError, BrokenPipeError):
                closed += 1
            except socket.timeout:
                pass
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        print(f"{args.stalled} stalled connections; {args.requests} normal requests in {measured_in:.1f} s beside them")
        print(f"normal requests: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(latencies):.2f} ms, failures {failures}")
        print(f"stalled connections closed by the server after the {HEADER_TIMEOUT_MS} ms header timeout: {closed}/{args.stalled}")
        ok = p99 < 50 and failures == 0 and closed == args.stalled
        print("PASS" if ok else "FAIL: targets are p99 < 50 ms, no failures, every stalled connection closed")
        return 0 if ok else 1
    finally:
        for s in stalled:
            s.close()
        proxy.terminate()
        proxy.wait(timeout=10)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # the check itself broke: say so, distinctly from a miss
        print(f"slow-clients check broke: {error}", file=sys.stderr)
        sys.exit(2)
