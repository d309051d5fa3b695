#!/usr/bin/env python3
"""shutdown_latency.py: shutdown_latency.cpp's measurement on CPython's socketserver.

    shutdown_latency.py [--tries N] [--load-clients C] [--seed S]

How long serve_forever() takes to return after shutdown() is called, on a
ThreadingTCPServer that is idle and one under load (in-process connrate clients). Each try:
a new server on 127.0.0.1:0, serve_forever() in a thread, (the clients started,) a random
pause of 1-20 ms once the loop runs, then shutdown(). CPython's loop notices the request at
its next poll (every 0.5 s) or request, so idle tries take about half a second each.
Prints one key=value line per case, like the C++ program.
"""
import argparse
import math
import random
import socket
import socketserver
import threading
import time


class OneLine(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())


def client(address, stop):
    """connrate client: connect, send a line, read the reply, close; until stop is set."""
    line = b"shutdown-latency load\n"
    while not stop.is_set():
        try:
            with socket.create_connection(address, timeout=1) as sock:
                sock.sendall(line)
                sock.recv(64)
        except OSError:
            time.sleep(0.001)  # e.g. refused once the server has closed


def is_serving(server):
    # serve_forever() clears this event when it starts (CPython has no public flag).
    return not server._BaseServer__is_shut_down.is_set()


def one_try(load_clients, rng):
    """Microseconds from shutdown() to serve_forever() returning."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), OneLine)
    returned = []

    def serve():
        server.serve_forever()
        returned.append(time.perf_counter())

    serving = threading.Thread(target=serve)
    serving.start()
    for _ in range(10000):  # at most 1 s
        if is_serving(server):
            break
        time.sleep(0.0001)

    stop = threading.Event()
    clients = [
        threading.Thread(target=client, args=(server.server_address, stop))
        for _ in range(load_clients)
    ]
    for t in clients:
        t.start()
    time.sleep(rng.uniform(0.001, 0.020))

    called = time.perf_counter()
    server.shutdown()
    serving.join()
    stop.set()
    server.server_close()
    for t in clients:
        t.join()
    return (returned[0] - called) * 1e6


def report(workload, us):
    us = sorted(us)

    def at(p):  # nearest-rank percentile
        return us[min(len(us), max(math.ceil(p * len(us)), 1)) - 1]

    print(
        f"workload={workload} impl=python tries={len(us)} p50_us={at(0.5):.1f} "
        f"p99_us={at(0.99):.1f} max_us={us[-1]:.1f}",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=100)
    parser.add_argument("--load-clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not (1 <= args.tries <= 100000 and 1 <= args.load_clients <= 256):
        parser.error("--tries 1..100000, --load-clients 1..256")
    rng = random.Random(args.seed)
    for clients in (0, args.load_clients):
        us = [one_try(clients, rng) for _ in range(args.tries)]
        report("shutdown-idle" if clients == 0 else "shutdown-load", us)


if __name__ == "__main__":
    main()
