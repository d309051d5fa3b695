#!/usr/bin/env python3
"""The include graph of include/socketserver is strictly layered.

Each header belongs to a layer (LAYERS, lowest first) and may include only headers of
lower layers; detail/ headers include nothing but detail/ headers; the smallest server
header (tcp_server.hpp) pulls in no process, prefork or mix-in header; no header but the
TLS add-on includes OpenSSL, and the umbrella header does not include the add-on. Prints the graph
(`--graph` prints only the graph, as docs/ARCHITECTURE.md shows it) and exits 1 on a
violation, naming it.
"""
import os
import re
import sys

LAYERS = [
    ("detail: platform", ["detail/platform.hpp"]),
    ("detail: time, errno", ["detail/time.hpp", "detail/errno.hpp", "detail/fd.hpp",
                             "detail/process.hpp", "detail/exceptions.hpp",
                             "detail/proxy_protocol.hpp", "detail/transport.hpp",
                             "detail/connection_counts.hpp"]),
    ("detail: waits", ["detail/accept_errors.hpp", "detail/blocking.hpp", "detail/wakeup.hpp",
                       "detail/drain_signal.hpp", "detail/fiber_poller.hpp"]),
    ("detail: poll", ["detail/poll.hpp"]),
    ("detail: accept turn", ["detail/accept_turn.hpp"]),
    ("detail: exclusive wait, PROXY header reads", ["detail/exclusive_wait.hpp",
                                                    "detail/proxy_io.hpp"]),
    ("detail: leader lanes", ["detail/leader_lanes.hpp"]),
    ("detail: fiber stacks", ["detail/fiber_stack.hpp"]),
    ("detail: fiber overflow report", ["detail/fiber_overflow.hpp"]),
    ("detail: fiber contexts", ["detail/fiber_context.hpp"]),
    ("detail: fiber loop", ["detail/fiber_loop.hpp"]),
    ("values", ["version.hpp", "error.hpp", "strict_bool.hpp", "stats.hpp"]),
    ("address", ["address.hpp"]),
    ("socket, source networks", ["socket.hpp", "proxy.hpp"]),
    ("requests, files, activation", ["datagram.hpp", "io.hpp", "activation.hpp",
                                     "handover.hpp"]),
    ("any server, fiber waits", ["any_server.hpp", "fiber_waits.hpp"]),
    ("handlers, signals", ["handlers.hpp", "signals.hpp"]),
    ("BaseServer", ["base_server.hpp"]),
    ("TCPServer", ["tcp_server.hpp"]),
    ("UDPServer", ["udp_server.hpp"]),
    ("Unix servers", ["unix_server.hpp"]),
    ("mix-ins", ["threading.hpp", "forking.hpp", "thread_pool.hpp", "prefork.hpp",
                 "fibers.hpp"]),
    ("server types", ["servers.hpp"]),
    ("add-ons (their own CMake targets)", ["tls.hpp"]),
]
# The add-ons that may include a third-party library; no other header may (a user who does
# not include one links nothing new): header -> the include prefix it may use.
THIRD_PARTY = {"tls.hpp": "openssl/"}
# What the smallest server header must not pull in.
NOT_UNDER_TCP_SERVER = ["detail/process.hpp", "prefork.hpp", "forking.hpp", "threading.hpp",
                        "thread_pool.hpp", "fibers.hpp", "detail/fiber_loop.hpp", "servers.hpp"]


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "include",
                        "socketserver")
    headers = sorted(
        os.path.relpath(os.path.join(d, f), root)
        for d, _, files in os.walk(root) for f in files if f.endswith(".hpp"))
    layer_of = {h: i for i, (_, hs) in enumerate(LAYERS) for h in hs}
    errors = []
    graph = {}
    for h in headers:
        if h not in layer_of:
            errors.append(f"{h}: not in any layer (add it to LAYERS in {__file__})")
            continue
        text = open(os.path.join(root, h)).read()
        deps = []
        for inc in re.findall(r'^#\s*include\s+"([^"]+)"', text, re.M):
            target = os.path.normpath(os.path.join(os.path.dirname(h), inc))
            deps.append(target)
            if h.startswith("detail/") and not target.startswith("detail/"):
                errors.append(f"{h} includes public header {target}: detail/ must not")
            if target not in layer_of:
                errors.append(f"{h} includes {target}, which is in no layer")
            elif layer_of[target] >= layer_of[h]:
                errors.append(f"{h} (layer {layer_of[h]}) includes {target} "
                              f"(layer {layer_of[target]}): only lower layers may be included")
        graph[h] = sorted(deps)
        for inc in re.findall(r'^#\s*include\s+<([^>]+)>', text, re.M):
            if inc.startswith("openssl/") and THIRD_PARTY.get(h) != "openssl/":
                errors.append(f"{h} includes <{inc}>: only the TLS add-on (tls.hpp) may")
    for h in (h for h in layer_of if h not in headers):
        errors.append(f"LAYERS names {h}, which does not exist")

    def closure(h, seen):
        for d in graph.get(h, []):
            if d not in seen:
                seen.add(d)
                closure(d, seen)
        return seen

    umbrella = open(os.path.join(root, "..", "socketserver.hpp")).read()
    for inc in re.findall(r'^#\s*include\s+[<"]([^>"]+)[>"]', umbrella, re.M):
        if inc.startswith("openssl/") or inc.endswith("/tls.hpp"):
            errors.append(f"socketserver.hpp includes {inc}: the core must not pull in OpenSSL")

    under_tcp = closure("tcp_server.hpp", set())
    for h in NOT_UNDER_TCP_SERVER:
        if h in under_tcp:
            errors.append(f"tcp_server.hpp pulls in {h}")

    lines = []
    for i, (name, hs) in enumerate(LAYERS):
        lines.append(f"{i:2}  {name}")
        for h in hs:
            if h in graph:
                lines.append(f"      {h:28} -> {', '.join(graph[h]) or '(system headers only)'}")
    print("\n".join(lines))
    if "--graph" in sys.argv:
        return 0
    # docs/ARCHITECTURE.md shows this graph in its first ``` block: it must be this one.
    doc = os.path.join(root, "..", "..", "docs", "ARCHITECTURE.md")
    if os.path.exists(doc):
        blocks = open(doc).read().split("```")
        if len(blocks) < 2 or blocks[1].strip("\n") != "\n".join(lines):
            errors.append("docs/ARCHITECTURE.md's include graph is out of date: replace its "
                          f"first ``` block with the output of {__file__} --graph")
    for e in errors:
        print("LAYERING:", e, file=sys.stderr)
    print(f"{len(headers)} headers, {sum(len(v) for v in graph.values())} includes, "
          f"{len(errors)} violations")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
