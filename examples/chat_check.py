#!/usr/bin/env python3
"""Checks examples/fiber_chat_server: N clients connect; three of them speak in turn, and
every other client must receive each line; the server must hold them all on a few threads.
Usage: chat_check.py PORT CLIENTS SERVER_PID   (loopback only; every wait is bounded)"""
import resource
import selectors
import socket
import sys
import time

port, count, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 64)), hard))


def threads_of(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(next(l for l in status if l.startswith("Threads:")).split()[1])


def welcome_of(i, c):
    welcome = b""
    while not welcome.endswith(b"\n"):
        data = c.recv(256)
        if not data:
            sys.exit(f"client {i} was closed before its welcome")
        welcome += data
    if not welcome.startswith(b"welcome"):
        sys.exit(f"client {i} got {welcome!r} instead of a welcome")


deadline = time.monotonic() + 10
clients = []
while len(clients) < count:  # the server may not be listening yet
    try:
        clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(f"could connect only {len(clients)} of {count} clients")
        time.sleep(0.05)
        continue
    if len(clients) == 1:
        # The threads the server runs with one client (its loops, and whatever a sanitizer's
        # runtime adds): the other clients must add none.
        welcome_of(0, clients[0])
        threads_at_one = threads_of(pid)


def everyone_hears(speaker, line):
    """speaker sends line; True when every other client has received exactly it."""
    pending = {c: b"" for c in clients if c is not speaker}
    speaker.sendall(line)
    sel = selectors.DefaultSelector()
    for c in pending:
        c.setblocking(False)
        sel.register(c, selectors.EVENT_READ)
    end = time.monotonic() + 20
    done = 0
    while done < len(pending) and time.monotonic() < end:
        for key, _ in sel.select(timeout=1):
            data = key.fileobj.recv(4096)
            pending[key.fileobj] += data
            if pending[key.fileobj] == line:
                done += 1
                sel.unregister(key.fileobj)
            elif not data or len(pending[key.fileobj]) >= len(line):
                sys.exit(f"a client got {pending[key.fileobj]!r} instead of {line!r}")
    sel.close()
    for c in pending:
        c.setblocking(True)
    return done == len(pending), done


# Every client has joined once it has its welcome line (the server writes it after joining).
for i, c in enumerate(clients[1:], start=1):
    welcome_of(i, c)
for speaker in (clients[0], clients[count // 2], clients[-1]):
    ok, heard = everyone_hears(speaker, b"hello from one of %d\n" % count)
    if not ok:
        sys.exit(f"only {heard} of {count - 1} clients heard the line")
threads = threads_of(pid)
if threads > threads_at_one:
    sys.exit(f"the server ran {threads} threads for {count} clients, {threads_at_one} for one")
print(f"{count} clients, 3 lines each heard by all {count - 1} others; server threads: {threads}"
      f" (as with one client)")
