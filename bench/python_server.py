#!/usr/bin/env python3
"""CPython's socketserver speaking the benchmark's line-echo protocol (the peer of
ours_server.cpp, with the same handlers and options).

    python_server.py --type TYPE [--mode connrate|pingpong] [--port N | --unix PATH]

TYPE is a socketserver class name: TCPServer, ThreadingTCPServer, ForkingTCPServer,
UDPServer, ThreadingUDPServer, UnixStreamServer, ThreadingUnixStreamServer,
ForkingUnixStreamServer. Prints the bound port or path when ready; serves until SIGTERM or
SIGINT, which a sigwait() in the main thread turns into shutdown().
"""
import argparse
import os
import signal
import socketserver
import threading

TYPES = (
    "TCPServer",
    "ThreadingTCPServer",
    "ForkingTCPServer",
    "UDPServer",
    "ThreadingUDPServer",
    "UnixStreamServer",
    "ThreadingUnixStreamServer",
    "ForkingUnixStreamServer",
)
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class OneLine(socketserver.StreamRequestHandler):
    """connrate: one line in, the same line out, then the server closes the connection."""

    def handle(self):
        self.wfile.write(self.rfile.readline())


class Echo(socketserver.StreamRequestHandler):
    """pingpong (and bulk): every line echoed until the client closes."""

    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)


class DatagramEcho(socketserver.BaseRequestHandler):
    """udp: every datagram echoed to its sender."""

    def handle(self):
        data, sock = self.request
        sock.sendto(data, self.client_address)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--type", choices=TYPES, default="ThreadingTCPServer")
    parser.add_argument("--mode", choices=("connrate", "pingpong"), default="connrate")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--port", type=int, default=0)
    where.add_argument("--unix")
    args = parser.parse_args()
    is_unix = "Unix" in args.type
    if is_unix != (args.unix is not None):
        parser.error("Unix servers take --unix PATH, the others --port")

    # Before any thread exists, so only the sigwait() below receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    if "UDP" in args.type:
        handler = DatagramEcho
    else:
        handler = OneLine if args.mode == "connrate" else Echo
    # The same listen backlog as every other server in the benchmark, and request threads
    # that do not keep the process alive (see ours_server.cpp).
    server_class = type(
        "BenchServer",
        (getattr(socketserver, args.type),),
        {"request_queue_size": 128, "daemon_threads": True},
    )
    address = args.unix if is_unix else ("127.0.0.1", args.port)
    server = server_class(address, handler)
    print(args.unix if is_unix else server.server_address[1], flush=True)

    serving = threading.Thread(target=server.serve_forever, name="serve_forever")
    serving.start()
    signal.sigwait(STOP_SIGNALS)
    server.shutdown()
    serving.join()
    server.server_close()
    if is_unix:
        os.unlink(args.unix)  # CPython leaves the socket file behind


if __name__ == "__main__":
    main()
