#!/usr/bin/env python3
"""report.py: turns bench/run's raw results into tables, RESULTS.md and results.svg.

    report.py RESULTS_TSV --md OUT.md [--svg OUT.svg] [--meta KEY=VALUE ...] [--append NOTES.md]

RESULTS_TSV has one line per measurement: workload label, server, run number, then the
key=value line that loadgen (or shutdown_latency) printed. For every workload the table
shows the median over the runs and the min-max spread; then the ratio of each of our servers
to each of its peers (ours / peer: below 1 means less CPU per request, above 1 a higher
rate), and for prefork servers (named SERVER/wN: N worker processes) each worker count to one
worker (wN / w1). A ratio whose min-max spreads overlap is printed as "tie".
"""
import argparse
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import OrderedDict, defaultdict

# Our server -> the peers it is compared with, nearest first.
PEERS = OrderedDict(
    [
        ("ours/TCPServer", ["raw/sync", "py/TCPServer"]),
        (
            "ours/ThreadingTCPServer",
            ["raw/threads", "py/ThreadingTCPServer", "asio/blocking", "asio/async", "raw/epoll"],
        ),
        ("ours/ForkingTCPServer", ["py/ForkingTCPServer", "raw/threads"]),
        (
            "ours/ThreadPoolTCPServer",
            ["ours/ThreadingTCPServer", "asio/async", "raw/pool", "raw/pool-accept", "raw/epoll"],
        ),
        ("ours/UDPServer", ["raw/udp", "py/UDPServer", "asio/udp"]),
        ("ours/ThreadingUDPServer", ["raw/udp-threads", "py/ThreadingUDPServer", "raw/udp"]),
        ("ours/ThreadPoolUDPServer", ["ours/ThreadingUDPServer", "py/ThreadingUDPServer", "raw/udp"]),
        # Issue 11's fibers: the event-loop servers first (what fibers are measured against),
        # then the thread-based servers they replace. The name is skipped while no run has it.
        (
            "ours/FiberTCPServer",
            ["raw/epoll", "asio/async", "ours/ThreadingTCPServer", "ours/ThreadPoolTCPServer"],
        ),
        (
            "ours/ThreadingUnixStreamServer",
            ["raw/threads", "py/ThreadingUnixStreamServer", "asio/blocking", "asio/async",
             "raw/epoll"],
        ),
    ]
)
# A prefork server: "ours/TCPServer/w2" is ours/TCPServer serving with 2 worker processes.
WORKERS = re.compile(r"^(?P<base>.+)/w(?P<n>[0-9]+)$")
COLORS = {"ours": 0x1F77B4, "py": 0xFF7F0E, "asio": 0x2CA02C, "raw": 0x8C8C8C}


def parse_results(path):
    """{label: {server: [record per run]}} in the order the labels first appear."""
    results = OrderedDict()
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 4:
                continue
            label, server, run, fields = parts[0], parts[1], parts[2], parts[3]
            record = {"run": run}
            for item in fields.split():
                key, _, value = item.partition("=")
                record[key] = value
            results.setdefault(label, OrderedDict()).setdefault(server, []).append(record)
    return results


def number(record, key):
    try:
        value = float(record.get(key, "nan"))
    except ValueError:
        return math.nan
    return value


class Stat:
    """Median and min-max of one figure over the runs (failed runs left out)."""

    def __init__(self, values):
        self.values = [v for v in values if not math.isnan(v)]
        self.ok = bool(self.values)
        self.median = statistics.median(self.values) if self.ok else math.nan
        self.min = min(self.values) if self.ok else math.nan
        self.max = max(self.values) if self.ok else math.nan

    def overlaps(self, other):
        return self.ok and other.ok and self.min <= other.max and other.min <= self.max


def fmt(x):
    if x is None or math.isnan(x):
        return "-"
    if x == int(x) and abs(x) < 1000:
        return str(int(x))
    if abs(x) >= 1000:
        return f"{x:,.0f}".replace(",", " ")
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_spread(stat):
    if not stat.ok:
        return "failed"
    if len(stat.values) == 1:
        return fmt(stat.median)
    return f"{fmt(stat.median)} ({fmt(stat.min)}–{fmt(stat.max)})"


def ratio(ours, peer):
    """(text, value): ours/peer by medians, "tie" when the spreads overlap."""
    if not (ours.ok and peer.ok) or peer.median == 0:
        return "-", math.nan
    value = ours.median / peer.median
    if ours.overlaps(peer):
        return f"tie ({value:.2f})", value
    return f"{value:.2f}", value


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def total(runs, key):
    """The sum of an integer field over the runs (missing or nan counts as 0)."""
    values = [number(r, key) for r in runs]
    return int(sum(v for v in values if not math.isnan(v)))


def worker_pairs(servers):
    """(name, wN server, w1 server) for every prefork server with more than one worker whose
    one-worker run is in the same table: throughput should grow with workers while CPU per
    request stays flat."""
    pairs = []
    for server in servers:
        match = WORKERS.match(server)
        if match and int(match["n"]) > 1 and f"{match['base']}/w1" in servers:
            pairs.append((f"{match['base']} w{match['n']} / w1", server, f"{match['base']}/w1"))
    return pairs


def timed_section(label, servers):
    unit = next((r.get("unit") for runs in servers.values() for r in runs if r.get("unit")), "op")
    stats = {}
    rows = []
    for server, runs in servers.items():
        rate = Stat([number(r, "rate") for r in runs])
        cpu = Stat([number(r, "cpu_us_per_op") for r in runs])
        stats[server] = (rate, cpu)
        lost = total(runs, "lost")
        failed = sum(1 for r in runs if r.get("failed"))
        problems = str(total(runs, "errors"))
        problems += f" +{lost} lost" if lost else ""
        problems += f", {failed} runs failed" if failed else ""
        rows.append(
            [
                server,
                fmt_spread(rate),
                fmt_spread(cpu),
                fmt(Stat([number(r, "p50_us") for r in runs]).median),
                fmt(Stat([number(r, "p99_us") for r in runs]).median),
                problems,
                fmt(Stat([number(r, "client_cpu_us_per_op") for r in runs]).median),
            ]
        )
    rate_name = "MiB/s" if unit == "MiB" else f"{unit}/s"
    out = [
        f"### {label}",
        "",
        table(
            ["server", rate_name, f"server CPU µs/{unit}", "p50 µs", "p99 µs", "errors",
             f"loadgen CPU µs/{unit}"],
            rows,
        ),
    ]
    ratio_rows = []
    for ours, peers in PEERS.items():
        if ours not in stats:
            continue
        for peer in peers:
            if peer not in stats:
                continue
            cpu_text, _ = ratio(stats[ours][1], stats[peer][1])
            rate_text, _ = ratio(stats[ours][0], stats[peer][0])
            ratio_rows.append([f"{ours} / {peer}", cpu_text, rate_text])
    if ratio_rows:
        out += ["", table(["ours / peer", f"CPU µs/{unit} ratio", "rate ratio"], ratio_rows)]
    worker_rows = []
    for name, more, one in worker_pairs(stats):
        cpu_text, _ = ratio(stats[more][1], stats[one][1])
        rate_text, _ = ratio(stats[more][0], stats[one][0])
        worker_rows.append([name, cpu_text, rate_text])
    if worker_rows:
        out += ["", table(["workers", f"CPU µs/{unit} ratio", "rate ratio"], worker_rows)]
    return "\n".join(out), stats, unit


def idle_section(label, servers):
    """The idle workload: with active clients (--active A > 0), their rate, CPU and latency
    with the idle connections open and without (the baseline), then the server's memory and
    threads; with none, only the memory table. Returns the text and {server: figures}."""
    runs_of = list(servers.values())
    with_active = any(number(r, "active") > 0 for runs in runs_of for r in runs)
    figures = {}
    active_rows, memory_rows = [], []
    for server, runs in servers.items():
        kib = Stat([number(r, "rss_per_conn_kib") for r in runs])
        rate = Stat([number(r, "rate") for r in runs])
        cpu = Stat([number(r, "cpu_us_per_op") for r in runs])
        p99 = Stat([number(r, "p99_us") for r in runs])
        base_p99 = Stat([number(r, "base_p99_us") for r in runs])
        # p99 with idle / p99 without, paired within each run (the same server process).
        p99_ratio = Stat([number(r, "p99_us") / number(r, "base_p99_us")
                          if number(r, "base_p99_us") > 0 else math.nan for r in runs])
        threads = Stat([number(r, "threads") for r in runs])
        figures[server] = {"kib": kib, "rate": rate, "cpu": cpu, "p99": p99,
                           "p99_ratio": p99_ratio, "threads": threads,
                           "cpus": Stat([number(r, "cpus") for r in runs])}
        failed = sum(1 for r in runs if r.get("failed"))
        if with_active:
            errors = f"{total(runs, 'active_errors')} / {total(runs, 'base_errors')}"
            served = not rate.ok or rate.max > 0
            active_rows.append(
                [
                    server,
                    fmt_spread(rate),
                    fmt_spread(Stat([number(r, "base_rate") for r in runs])),
                    fmt_spread(cpu) if served else "none served",
                    fmt_spread(Stat([number(r, "base_cpu_us_per_op") for r in runs])),
                    fmt(Stat([number(r, "p50_us") for r in runs]).median),
                    fmt(p99.median),
                    fmt(base_p99.median),
                    fmt_spread(p99_ratio) if served else "none served",
                    errors + (f", {failed} runs failed" if failed else ""),
                ]
            )
        idle_errors = total(runs, "idle_errors") if with_active else total(runs, "errors")
        causes = [f"{total(runs, key)} {what}" for key, what in
                  (("idle_connect_failed", "no connect"), ("idle_unserved", "no echo"),
                   ("idle_bad_echo", "bad echo"), ("idle_skipped", "not tried"),
                   ("idle_closed", "closed by server")) if total(runs, key)]
        tried = Stat([number(r, "idle_tried") for r in runs])
        requested = Stat([number(r, "idle") for r in runs])
        opened = Stat([number(r, "idle_open") for r in runs])
        if not opened.ok:  # before idle_open existed: conns
            opened = Stat([number(r, "conns") for r in runs])
        conns = fmt(opened.median)
        if tried.ok and requested.ok and tried.median < requested.median:
            conns += f" (of {fmt(tried.median)} that fit the descriptor limit, {fmt(requested.median)} asked)"
        elif tried.ok and opened.median < tried.median:
            conns += f" of {fmt(tried.median)}"
        memory_rows.append(
            [
                server,
                conns,
                fmt(Stat([number(r, "rss_before_kib") for r in runs]).median / 1024),
                fmt(Stat([number(r, "rss_kib") for r in runs]).median / 1024),
                fmt_spread(kib),
                fmt(Stat([number(r, "threads_before") for r in runs]).median),
                fmt(threads.median),
                str(idle_errors) + (f" ({', '.join(causes)})" if causes else ""),
            ]
        )
    out = [f"### {label}", ""]
    if with_active:
        first = next((r for runs in runs_of for r in runs if r.get("loadgen_cpus")), {})
        out += [
            "Active clients (pingpong, 64-byte lines) with the idle connections open, and without "
            "them (the baseline, the same server process just before). Errors: with idle / "
            "without; an active client that gets no echo within 2 s counts one, and so does one "
            "that completed nothing in the window.",
            "",
            table(
                ["server", "msg/s with idle", "msg/s without", "server CPU µs/msg with idle",
                 "CPU µs/msg without", "p50 µs with idle", "p99 µs with idle", "p99 µs without",
                 "p99 with / without", "errors"],
                active_rows,
            ),
            "",
        ]
        if first:
            out += [f"Placement: server on CPUs {first.get('server_cpus', '?')}, loadgen (idle and "
                    f"active clients) on CPUs {first.get('loadgen_cpus', '?')}, of "
                    f"{first.get('cpus', '?')}.", ""]
    out.append(
        table(
            ["server", "idle connections open", "RSS without MiB", "RSS with them MiB",
             "RSS KiB per idle connection", "threads without", "threads with them",
             "idle errors"],
            memory_rows,
        )
    )
    ratio_rows = []
    for ours, peers in PEERS.items():
        if ours not in figures:
            continue
        for peer in peers:
            if peer not in figures:
                continue
            a, b = figures[ours], figures[peer]
            row = [f"{ours} / {peer}"]
            if with_active:
                row += [ratio(a["cpu"], b["cpu"])[0], ratio(a["rate"], b["rate"])[0],
                        ratio(a["p99"], b["p99"])[0]]
            row.append(ratio(a["kib"], b["kib"])[0])
            ratio_rows.append(row)
    if ratio_rows:
        header = ["ours / peer"]
        if with_active:
            header += ["CPU µs/msg ratio (with idle)", "rate ratio (with idle)",
                       "p99 ratio (with idle)"]
        header.append("RSS per idle connection ratio")
        out += ["", table(header, ratio_rows)]
    return "\n".join(out), figures


def shutdown_section(results):
    rows = []
    figures = {}
    servers = OrderedDict()
    for label in ("shutdown-idle", "shutdown-load"):
        for server, runs in results.get(label, {}).items():
            servers.setdefault(server, {})[label] = runs[0]
    for server, cases in servers.items():
        row = [server]
        for label in ("shutdown-idle", "shutdown-load"):
            r = cases.get(label, {})
            p50, p99 = number(r, "p50_us"), number(r, "p99_us")
            figures[(server, label)] = p99
            row += [fmt(p50), fmt(p99)]
        row.append(next((c.get("tries", "-") for c in cases.values()), "-"))
        rows.append(row)
    if not rows:
        return "", figures
    text = "\n".join(
        [
            "### shutdown() until serve_forever() returns (ThreadingTCPServer, in-process)",
            "",
            table(["server", "idle p50 µs", "idle p99 µs", "under load p50 µs",
                   "under load p99 µs", "tries"], rows),
        ]
    )
    return text, figures


def verdict(value, low, high, limit):
    """"met" or "missed" by the median ratio; "(within noise)" when the ratio's range over
    the runs (best and worst pairing of min and max) straddles the limit."""
    text = "met" if value <= limit else "missed"
    if low <= limit < high:
        text += " (within noise)"
    return text


def targets_section(timed, idle, shutdown):
    """The figures the library is judged against."""
    rows = []

    def ratio_target(label_prefix, ours, peer, limit, column, at_most):
        """A row per matching workload: ours / peer on column 0 (rate) or 1 (CPU/req),
        judged against `limit` as an upper (at_most) or lower bound."""
        for label, (stats, _) in timed.items():
            if not label.startswith(label_prefix) or ours not in stats or peer not in stats:
                continue
            a, b = stats[ours][column], stats[peer][column]
            if not (a.ok and b.ok) or b.min == 0:
                continue
            value, low, high = a.median / b.median, a.min / b.max, a.max / b.min
            if at_most:
                text = verdict(value, low, high, limit)
            else:
                text = "met" if value >= limit else "missed"
                if low < limit <= high:
                    text += " (within noise)"
            what = "CPU/req ≤" if at_most else "rate ≥"
            rows.append([f"{ours} {what} {limit}× {peer} ({label})",
                         f"{value:.2f} ({low:.2f}–{high:.2f})", text])

    def cpu_target(label_prefix, ours, peer, limit):
        ratio_target(label_prefix, ours, peer, limit, 1, True)

    def rate_target(label_prefix, ours, peer, at_least):
        ratio_target(label_prefix, ours, peer, at_least, 0, False)

    # Issue 4's targets.
    for workload in ("connrate", "pingpong"):
        cpu_target(workload, "ours/ThreadingTCPServer", "raw/threads", 1.1)
        rate_target(workload, "ours/ThreadingTCPServer", "raw/threads", 0.9)
        cpu_target(workload, "ours/ThreadingTCPServer", "py/ThreadingTCPServer", 0.3)
    cpu_target("connrate", "ours/TCPServer", "raw/sync", 1.1)
    # Issue 13: the PROXY protocol costs at most 5% per connection.
    cpu_target("proxy connrate", "ours/ThreadingTCPServer+proxy-v2", "ours/ThreadingTCPServer", 1.05)
    cpu_target("proxy connrate", "ours/TCPServer+proxy-v2", "ours/TCPServer", 1.05)
    cpu_target("pingpong", "ours/TCPServer", "raw/sync", 1.1)
    cpu_target("connrate", "ours/TCPServer", "py/TCPServer", 0.5)
    cpu_target("udp", "ours/UDPServer", "raw/udp", 1.1)
    cpu_target("udp", "ours/UDPServer", "py/UDPServer", 0.5)
    cpu_target("unix", "ours/ThreadingUnixStreamServer", "raw/threads", 1.1)
    cpu_target("unix", "ours/ThreadingUnixStreamServer", "py/ThreadingUnixStreamServer", 0.5)
    cpu_target("connrate", "ours/ForkingTCPServer", "py/ForkingTCPServer", 0.25)
    cpu_target("udp", "ours/ThreadingUDPServer", "py/ThreadingUDPServer", 0.2)
    cpu_target("bulk", "ours/ThreadingTCPServer", "raw/threads", 1.1)
    rate_target("bulk", "ours/ThreadingTCPServer", "raw/threads", 0.9)
    # Issue 5's pool targets.
    cpu_target("connrate", "ours/ThreadPoolTCPServer", "ours/ThreadingTCPServer", 0.7)
    cpu_target("connrate", "ours/ThreadPoolTCPServer", "asio/async", 1.0)
    rate_target("connrate", "ours/ThreadPoolTCPServer", "asio/async", 1.0)
    # Floors: where the hand-written server of the same design stands against the target's
    # peer (a target below its design's floor cannot be met by that design).
    cpu_target("connrate", "raw/sync", "py/TCPServer", 0.5)
    cpu_target("udp", "raw/udp", "py/UDPServer", 0.5)
    cpu_target("pingpong", "raw/threads", "py/ThreadingTCPServer", 0.3)
    cpu_target("udp", "raw/udp-threads", "py/ThreadingUDPServer", 0.2)
    cpu_target("connrate", "raw/pool", "asio/async", 1.0)
    cpu_target("connrate", "raw/pool-accept", "asio/async", 1.0)
    cpu_target("connrate", "ours/ThreadPoolTCPServer", "raw/pool", 1.1)
    p99 = shutdown.get(("ours/ThreadingTCPServer", "shutdown-idle"), math.nan)
    if not math.isnan(p99):
        rows.append(["shutdown() p99 < 1 ms (idle)", f"{fmt(p99)} µs", "met" if p99 < 1000 else "missed"])
    for label, figures in idle.items():
        threading = figures.get("ours/ThreadingTCPServer")
        kib = threading["kib"] if threading else None
        if kib is not None and kib.ok:
            rows.append([f"RSS per idle ThreadingTCPServer connection < 64 KiB ({label})",
                         f"{fmt(kib.median)} KiB", "met" if kib.max < 64 else "missed"])
        # Issue 11's fiber targets, once ours/FiberTCPServer runs in this workload.
        fiber = figures.get("ours/FiberTCPServer")
        if fiber is None:
            continue
        threads, cpus = fiber["threads"], fiber["cpus"]
        if threads.ok and cpus.ok:
            limit = cpus.median + 4
            rows.append([f"FiberTCPServer threads ≤ cores + 4 = {fmt(limit)} ({label})",
                         fmt_spread(threads), "met" if threads.max <= limit else "missed"])
        if fiber["kib"].ok and kib is not None and kib.ok and kib.median > 0:
            value = fiber["kib"].median / kib.median
            low, high = fiber["kib"].min / kib.max, fiber["kib"].max / kib.min
            rows.append([f"FiberTCPServer RSS per idle connection ≤ 0.5× ThreadingTCPServer ({label})",
                         f"{value:.2f} ({low:.2f}–{high:.2f})", verdict(value, low, high, 0.5)])
        p99 = fiber["p99_ratio"]
        if p99.ok:
            rows.append([f"FiberTCPServer active p99 with idle ≤ 1.2× without ({label})",
                         fmt_spread(p99), verdict(p99.median, p99.min, p99.max, 1.2)])
    if not rows:
        return ""
    return "\n".join(["## Targets", "", "Ratios are ours / peer by medians, with their range over "
                      "the runs (best and worst pairing of the two spreads).", "",
                      table(["target", "measured", "verdict"], rows)])


def write_svg(timed, svg_path):
    """One bar chart panel per workload: median server CPU per request, min-max bars."""
    gnuplot = shutil.which("gnuplot")
    if gnuplot is None:
        print("report.py: gnuplot not found, no SVG written", file=sys.stderr)
        return False
    panels = [(label, stats, unit) for label, (stats, unit) in timed.items()
              if any(cpu.ok for _, cpu in stats.values())]
    if not panels:
        return False
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "cpu.dat")
        with open(data, "w", encoding="utf-8") as f:
            for label, stats, _ in panels:
                f.write(f"# {label}\n")
                for server, (_, cpu) in stats.items():
                    if cpu.ok:
                        color = COLORS.get(server.split("/")[0], 0)
                        f.write(f'"{server}" {cpu.median} {cpu.min} {cpu.max} {color}\n')
                f.write("\n\n")
        script = [
            f"set terminal svg size {500 * cols},{430 * rows} dynamic font 'sans,11' background rgb 'white'",
            f"set output '{svg_path}'",
            "set multiplot layout %d,%d title 'Server CPU time per request (median of runs; bars: min–max). "
            "Lower is better. Blue: ours, orange: CPython, green: Boost.Asio, grey: hand-written' noenhanced" % (rows, cols),
            "set style fill solid 0.85 border lc rgb '#333333'",
            "set boxwidth 0.7",
            "set grid ytics lc rgb '#dddddd'",
            "set xtics rotate by 35 right nomirror font ',9' noenhanced",
            "set ytics nomirror",
            "set key off",
            "set bmargin 9",
            "set lmargin 14",
        ]
        for i, (label, stats, unit) in enumerate(panels):
            values = [cpu for _, cpu in stats.values() if cpu.ok]
            low, high = min(v.min for v in values), max(v.max for v in values)
            # One slow peer would flatten the others' bars: switch to a log scale then.
            log_scale = low > 0 and high / low > 15
            script += [
                f"set title '{label}: µs/{unit}{' (log scale)' if log_scale else ''}' noenhanced",
                f"set xrange [-0.6:{len(values) - 0.4}]",
                f"set logscale y; set yrange [{low / 2}:*]" if log_scale
                else "unset logscale y; set yrange [0:*]",
                f"plot '{data}' index {i} using 0:2:5:xtic(1) with boxes lc rgb variable, "
                f"'' index {i} using 0:3:(0):($4-$3) with vectors heads size screen 0.004,90 "
                "lc rgb 'black'",
            ]
        script.append("unset multiplot")
        gp = os.path.join(tmp, "plot.gp")
        with open(gp, "w", encoding="utf-8") as f:
            f.write("\n".join(script) + "\n")
        result = subprocess.run([gnuplot, gp], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            print(f"report.py: gnuplot failed:\n{result.stderr}", file=sys.stderr)
            return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--md", required=True)
    parser.add_argument("--svg")
    parser.add_argument("--meta", action="append", default=[], help="KEY=VALUE for the header")
    parser.add_argument("--append", help="a Markdown file (the analysis) to add at the end")
    args = parser.parse_args()

    results = parse_results(args.results)
    timed, idle, sections = OrderedDict(), OrderedDict(), []
    for label, servers in results.items():
        if label.startswith("shutdown-"):
            continue
        if label.startswith("idle"):
            text, figures = idle_section(label, servers)
            idle[label] = figures
        else:
            text, stats, unit = timed_section(label, servers)
            timed[label] = (stats, unit)
        sections.append(text)
    shutdown_text, shutdown = shutdown_section(results)
    if shutdown_text:
        sections.append(shutdown_text)
    targets = targets_section(timed, idle, shutdown)

    body = "\n\n".join(([targets] if targets else []) + ["## Results"] + sections) + "\n"
    print(body)

    header = ["# Benchmark results", "", "Written by `bench/run` (see bench/README.md for what each "
              "column means and how CPU per request is measured).", ""]
    header += [f"- **{k}**: {v}" for k, v in (m.split("=", 1) for m in args.meta if "=" in m)]
    header += ["", "The load generator and the servers share the machine's cores, and other work on "
               "the machine adds noise: CPU per request is the figure to compare, and a ratio "
               "printed as `tie` means the runs could not tell the two servers apart."]
    svg_ok = bool(args.svg) and write_svg(timed, os.path.abspath(args.svg))
    if svg_ok:
        header += ["", f"![server CPU per request]({os.path.basename(args.svg)})"]
    if args.append and os.path.exists(args.append):
        with open(args.append, encoding="utf-8") as f:
            body += "\n" + f.read()
    with open(args.md, "w", encoding="utf-8") as f:
        f.write("\n".join(header) + "\n\n" + body)


if __name__ == "__main__":
    main()
