"""Renders the benchmark's results as one SVG, with the Python standard library only.

Top: requests/s of the best round per scenario, with p99 beside each bar and a tick where each
ratio target sits. Middle: the concurrency sweep (shout-proxy on one CPU), p99 against req/s per
path, with the p99 goal. Bottom: shout-proxy's RSS while the memory run pushes unique inputs
through the bounded cache, against the bound and the bound + 50 MiB target.

`python3 bench/chart.py target/bench/results.json docs/benchmark.svg` redraws from a results file.
"""

from __future__ import annotations

import json
import sys
from html import escape
from pathlib import Path

W = 920
LEFT = 150
RIGHT = 170
BAR_H = 22
GAP = 8
FONT = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\""
REFERENCE = {"bare-same", "bare-unique", "upstream-direct"}
# Where each ratio target puts its tick: scenario -> (reference scenario, factor).
TICKS = {"cache-hit": ("bare-same", 0.8), "breaker-open": ("bare-unique", 0.8),
         "miss": ("upstream-direct", 0.5)}


def nice_max(v: float) -> float:
    if v <= 0:
        return 1
    step = 10 ** (len(str(int(v))) - 1)
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if v <= m * step:
            return m * step
    return 10 * step


def text(x, y, s, size=12, anchor="start", weight="normal", fill="#222"):
    return (f'<text x="{x:.1f}" y="{y:.1f}" {FONT} font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}">{escape(str(s))}</text>')


def throughput_panel(results: dict, top: float) -> tuple[list[str], float]:
    best = results["best"]
    names = list(best)
    if not names:
        return [], top
    out = [text(20, top + 18, "Requests/s, best round (wrk -t{} -c{}), p99 latency at the right"
                .format(results["meta"]["threads"], results["meta"]["connections"]),
                size=15, weight="bold")]
    y0 = top + 36
    plot_w = W - LEFT - RIGHT
    vmax = nice_max(max(b["rps"] for b in best.values()) * 1.05)
    height = len(names) * (BAR_H + GAP)
    for i in range(6):
        v = vmax * i / 5
        x = LEFT + plot_w * i / 5
        out.append(f'<line x1="{x:.1f}" y1="{y0 - 4}" x2="{x:.1f}" y2="{y0 + height}" '
                   f'stroke="#ddd"/>')
        out.append(text(x, y0 + height + 16, f"{v / 1000:g}k", size=11, anchor="middle",
                        fill="#555"))
    for i, name in enumerate(names):
        b = best[name]
        y = y0 + i * (BAR_H + GAP)
        w = plot_w * b["rps"] / vmax
        color = "#9aa5b1" if name in REFERENCE else "#2b6cb0"
        errors = b["non_2xx_all_rounds"] + b["socket_errors_all_rounds"]
        out.append(text(LEFT - 8, y + BAR_H * 0.7, name, anchor="end"))
        out.append(f'<rect x="{LEFT}" y="{y:.1f}" width="{w:.1f}" height="{BAR_H}" '
                   f'fill="{color}"><title>{escape(name)}: {b["rps"]:,.0f} req/s</title></rect>')
        label = f"{b['rps']:,.0f}"
        inside = w > 70
        out.append(text(LEFT + w - 6 if inside else LEFT + w + 6, y + BAR_H * 0.7, label,
                        size=11, anchor="end" if inside else "start",
                        fill="#fff" if inside else "#222"))
        p99 = b["latency_ms"]["p99"]
        note = f"p99 {p99:.2f} ms" + (f", {errors} errors" if errors else "")
        out.append(text(W - RIGHT + 10, y + BAR_H * 0.7, note, size=11,
                        fill="#c53030" if errors else "#222"))
        if name in TICKS and TICKS[name][0] in best:
            ref, factor = TICKS[name]
            tx = LEFT + plot_w * best[ref]["rps"] * factor / vmax
            ok = b["rps"] >= best[ref]["rps"] * factor
            out.append(f'<line x1="{tx:.1f}" y1="{y - 3:.1f}" x2="{tx:.1f}" '
                       f'y2="{y + BAR_H + 3:.1f}" stroke="{"#2f855a" if ok else "#c53030"}" '
                       f'stroke-width="3"><title>target: {factor}x {ref}</title></line>')
    legend_y = y0 + height + 34
    out.append(f'<rect x="{LEFT}" y="{legend_y - 10}" width="12" height="12" fill="#9aa5b1"/>')
    out.append(text(LEFT + 18, legend_y, "reference (bare handler, fake upstream)", size=11))
    out.append(f'<rect x="{LEFT + 270}" y="{legend_y - 10}" width="12" height="12" '
               f'fill="#2b6cb0"/>')
    out.append(text(LEFT + 288, legend_y, "shout-proxy", size=11))
    out.append(f'<line x1="{LEFT + 390}" y1="{legend_y - 10}" x2="{LEFT + 390}" '
               f'y2="{legend_y + 2}" stroke="#2f855a" stroke-width="3"/>')
    out.append(text(LEFT + 398, legend_y, "ratio target (green met, red missed)", size=11))
    return out, legend_y + 20


def memory_panel(results: dict, top: float) -> tuple[list[str], float]:
    mem = results.get("memory")
    if not mem or not mem.get("samples"):
        return [], top
    samples = [s for s in mem["samples"] if s["inputs"] >= 0]
    bound = mem["cache_max_bytes"] / 2**20
    limit = mem["limit_mib"]
    out = [text(20, top + 18, f"shout-proxy RSS while {mem['inputs']:,} unique inputs go "
                f"through a {bound:g} MiB cache", size=15, weight="bold")]
    y0, h = top + 36, 200
    plot_w = W - LEFT - RIGHT
    xmax = max(s["inputs"] for s in samples) or 1
    ymax = nice_max(max([limit * 1.1] + [s["peak_rss_mib"] for s in samples]))
    sx = lambda v: LEFT + plot_w * v / xmax  # noqa: E731
    sy = lambda v: y0 + h - h * v / ymax  # noqa: E731
    for i in range(6):
        v = ymax * i / 5
        out.append(f'<line x1="{LEFT}" y1="{sy(v):.1f}" x2="{LEFT + plot_w}" y2="{sy(v):.1f}" '
                   f'stroke="#eee"/>')
        out.append(text(LEFT - 8, sy(v) + 4, f"{v:g} MiB", size=11, anchor="end", fill="#555"))
    for i in range(5):
        v = xmax * i / 4
        out.append(text(sx(v), y0 + h + 16, f"{v / 1000:,.0f}k", size=11, anchor="middle",
                        fill="#555"))
    out.append(text(LEFT + plot_w / 2, y0 + h + 32, "unique inputs sent (cache misses)",
                    size=11, anchor="middle", fill="#555"))
    for value, label, color in ((bound, f"cache bound {bound:g} MiB", "#999"),
                                (limit, f"target {limit:g} MiB", "#c53030")):
        out.append(f'<line x1="{LEFT}" y1="{sy(value):.1f}" x2="{LEFT + plot_w}" '
                   f'y2="{sy(value):.1f}" stroke="{color}" stroke-dasharray="6 4"/>')
        out.append(text(LEFT + plot_w + 6, sy(value) + 4, label, size=11, fill=color))
    points = " ".join(f"{sx(s['inputs']):.1f},{sy(s['rss_mib']):.1f}" for s in samples)
    out.append(f'<polyline points="{points}" fill="none" stroke="#2b6cb0" stroke-width="2"/>')
    weighed = [s for s in samples if "cache_weighted_mib" in s]
    if weighed:
        points = " ".join(f"{sx(s['inputs']):.1f},{sy(s['cache_weighted_mib']):.1f}"
                          for s in weighed)
        out.append(f'<polyline points="{points}" fill="none" stroke="#dd6b20" '
                   f'stroke-width="2" stroke-dasharray="2 2"/>')
        w = weighed[-1]
        out.append(text(sx(w["inputs"]) - 4, sy(w["cache_weighted_mib"]) - 8,
                        f"cache weighted_bytes {w['cache_weighted_mib']:.0f} MiB", size=11,
                        anchor="end", fill="#dd6b20"))
    last = samples[-1]
    out.append(text(sx(last["inputs"]) - 4, sy(last["rss_mib"]) - 8,
                    f"RSS {last['rss_mib']:.0f} MiB", size=11, anchor="end", fill="#2b6cb0"))
    out.append(f'<line x1="{LEFT}" y1="{y0 + h}" x2="{LEFT + plot_w}" y2="{y0 + h}" '
               f'stroke="#555"/>')
    return out, y0 + h + 44


SWEEP_COLORS = {"cache-hit": "#2b6cb0", "miss": "#dd6b20", "breaker-open": "#2f855a"}


def sweep_panel(results: dict, top: float) -> tuple[list[str], float]:
    runs = results.get("sweep") or []
    if not runs:
        return [], top
    goal = (results.get("autoscaling") or {}).get("p99_goal_ms", 5.0)
    out = [text(20, top + 18, "One pod's worth (shout-proxy on one CPU): p99 latency against "
                "req/s, connections 1 to 32", size=15, weight="bold")]
    y0, h = top + 36, 200
    plot_w = W - LEFT - RIGHT
    xmax = nice_max(max(r["rps"] for r in runs) * 1.05)
    ymax = nice_max(max([goal * 2] + [min(r["latency_ms"]["p99"], goal * 6) for r in runs]))
    sx = lambda v: LEFT + plot_w * v / xmax  # noqa: E731
    sy = lambda v: y0 + h - h * min(v, ymax) / ymax  # noqa: E731
    for i in range(6):
        v = ymax * i / 5
        out.append(f'<line x1="{LEFT}" y1="{sy(v):.1f}" x2="{LEFT + plot_w}" y2="{sy(v):.1f}" '
                   f'stroke="#eee"/>')
        out.append(text(LEFT - 8, sy(v) + 4, f"{v:g} ms", size=11, anchor="end", fill="#555"))
        x = xmax * i / 5
        out.append(text(sx(x), y0 + h + 16, f"{x / 1000:g}k", size=11, anchor="middle",
                        fill="#555"))
    out.append(text(LEFT + plot_w / 2, y0 + h + 32, "requests/s", size=11, anchor="middle",
                    fill="#555"))
    out.append(f'<line x1="{LEFT}" y1="{sy(goal):.1f}" x2="{LEFT + plot_w}" y2="{sy(goal):.1f}" '
               f'stroke="#c53030" stroke-dasharray="6 4"/>')
    out.append(text(LEFT + plot_w + 6, sy(goal) + 4, f"p99 goal {goal:g} ms", size=11,
                    fill="#c53030"))
    legend_y = y0 + 14
    for i, (kind, color) in enumerate(SWEEP_COLORS.items()):
        pts = sorted((r for r in runs if r["scenario"] == kind), key=lambda r: r["connections"])
        if not pts:
            continue
        line = " ".join(f"{sx(r['rps']):.1f},{sy(r['latency_ms']['p99']):.1f}" for r in pts)
        out.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"/>')
        for r in pts:
            out.append(f'<circle cx="{sx(r["rps"]):.1f}" cy="{sy(r["latency_ms"]["p99"]):.1f}" '
                       f'r="3" fill="{color}"><title>{kind} c={r["connections"]}: '
                       f'{r["rps"]:,.0f} req/s, p99 {r["latency_ms"]["p99"]:.2f} ms</title>'
                       f'</circle>')
        out.append(f'<rect x="{LEFT + plot_w + 6}" y="{legend_y + 18 * (i + 1) - 10}" '
                   f'width="12" height="12" fill="{color}"/>')
        out.append(text(LEFT + plot_w + 24, legend_y + 18 * (i + 1), kind, size=11))
    out.append(f'<line x1="{LEFT}" y1="{y0 + h}" x2="{LEFT + plot_w}" y2="{y0 + h}" '
               f'stroke="#555"/>')
    return out, y0 + h + 44


def render(results: dict) -> str:
    meta = results["meta"]
    parts, y = throughput_panel(results, 10)
    sweep_parts, y = sweep_panel(results, y + 10)
    parts += sweep_parts
    mem_parts, y = memory_panel(results, y + 10)
    parts += mem_parts
    m = meta["machine"]
    parts.append(text(20, y + 6, f"{meta['date']}, {m['nproc']} cores ({m['cpu_model']}), load "
                      f"{meta['load_before']} -> {meta['load_after']}, shout-proxy "
                      f"{m['git_commit']}; {meta['seconds']:g} s per run, best of "
                      f"{meta['rounds']} interleaved rounds", size=10, fill="#666"))
    height = y + 20
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height:.0f}" '
            f'viewBox="0 0 {W} {height:.0f}">\n<rect width="100%" height="100%" fill="#fff"/>\n'
            + "\n".join(parts) + "\n</svg>\n")


def write(results: dict, path: Path) -> None:
    Path(path).write_text(render(results))


if __name__ == "__main__":
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "target/bench/results.json")
    dst = Path(sys.argv[2] if len(sys.argv) > 2 else "target/bench/benchmark.svg")
    write(json.loads(src.read_text()), dst)
    print(dst)
