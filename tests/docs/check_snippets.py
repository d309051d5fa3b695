#!/usr/bin/env python3
"""Compiles every C++ snippet of the given Markdown files, so the docs cannot drift from the code.

A snippet is a fenced block whose info string is `cpp`. An HTML comment on the line just
before the fence (invisible when the Markdown is rendered) says how to compile it:

  (none), or <!-- snippet: program -->
      A whole translation unit, as a reader would save it: its own #includes and, usually,
      main(). Compiled alone, exactly as written.
  <!-- snippet: toplevel -->
      Declarations at namespace scope (classes, functions) that lean on the names every
      snippet may assume (PRELUDE below: the library, the usual std headers, and handlers
      called MyHandler, MyTCPHandler, MyUDPHandler and MyStreamHandler). A snippet that
      declares one of those names itself uses its own.
  <!-- snippet: body -->
      Statements: compiled as the body of a function, after the prelude.
  <!-- snippet: body, after -->  /  <!-- snippet: toplevel, after -->
      As above, in the same namespace as the snippet before it in the same file, so it may
      use what that one declared (a walk-through in several steps).
  <!-- snippet: program, tls -->
      A program that uses the TLS add-on (OpenSSL's headers): skipped, and said so, when
      --without-tls is given (the build found no OpenSSL).

The toplevel and body snippets of one file are compiled together as one translation unit
(fast: one compile per file), each in a namespace of its own, with #line directives so that
an error names the Markdown file and line. In a namespace main() is an ordinary function,
so a toplevel snippet that defines one is compiled without -Wreturn-type (only the real
main() may end without `return`). Fails if a file has no snippet at all.

Usage: check_snippets.py --cxx COMPILER --include DIR --out DIR FILE.md...
"""
import argparse
import os
import re
import subprocess
import sys

PRELUDE = """\
#include <sys/socket.h>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <socketserver.hpp>

// The handlers snippets may name without declaring them.
struct MyHandler : socketserver::StreamRequestHandler<> {
  void handle() { wfile.write(rfile.readline()); }
};
struct MyTCPHandler : socketserver::BaseRequestHandler<> {
  void handle() { request.sendall(request.recv(1024)); }
};
struct MyStreamHandler : socketserver::StreamRequestHandler<> {
  void handle() { wfile.write(rfile.readline()); }
};
struct MyUDPHandler : socketserver::BaseRequestHandler<socketserver::datagram> {
  void handle() { request.socket.sendto(request.data, client_address); }
};
"""

MARKER = re.compile(
    r"^<!--\s*snippet:\s*(program|toplevel|body)\s*(,\s*after\s*)?(,\s*tls\s*)?-->\s*$")
FENCE_OPEN = re.compile(r"^```cpp\s*$")


def extract(path):
    """Yields (kind, after, tls, first_line, code) for each ```cpp block of the file."""
    lines = open(path, encoding="utf-8").read().splitlines()
    i = 0
    while i < len(lines):
        if FENCE_OPEN.match(lines[i]):
            kind, after, tls = "program", False, False
            marker = MARKER.match(lines[i - 1]) if i > 0 else None
            if marker:
                kind, after = marker.group(1), marker.group(2) is not None
                tls = marker.group(3) is not None
            elif i > 0 and lines[i - 1].lstrip().startswith("<!-- snippet"):
                sys.exit(f"{path}:{i}: unknown snippet marker: {lines[i - 1]}")
            start = i + 1
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                i += 1
            if i == len(lines):
                sys.exit(f"{path}:{start}: unterminated ```cpp block")
            yield kind, after, tls, start + 1, "\n".join(lines[start:i])
        i += 1


def compile_tu(cxx, include, source, flags):
    command = [cxx, "-std=c++17", "-pthread", "-I", include, *flags, "-c", source, "-o", os.devnull]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        sys.stderr.write("failed: " + " ".join(command) + "\n")
    return result.returncode == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cxx", default="c++")
    parser.add_argument("--include", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--without-tls", action="store_true",
                        help="skip the snippets marked tls (no OpenSSL in this build)")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    # Warnings are errors, except those a fragment cannot help (a variable shown but unused).
    flags = ["-Wall", "-Wextra", "-Wpedantic", "-Werror", "-Wno-unused-variable",
             "-Wno-unused-parameter", "-Wno-unused-but-set-variable", "-Wno-unused-function",
             ]
    ok = True
    for md in args.files:
        md_abs = os.path.abspath(md)
        name = re.sub(r"\W", "_", os.path.relpath(md_abs))
        snippets = list(extract(md))
        if not snippets:
            print(f"{md}: no ```cpp snippet found")
            ok = False
            continue
        combined = [PRELUDE]
        counts = {"program": 0, "toplevel": 0, "body": 0}
        current = None
        for index, (kind, after, tls, line, code) in enumerate(snippets):
            if tls and args.without_tls:
                print(f"{md}:{line}: skipped (uses the TLS add-on; this build has no OpenSSL)")
                continue
            counts[kind] += 1
            if kind == "program":
                source = os.path.join(args.out, f"{name}_{line}.cpp")
                with open(source, "w", encoding="utf-8") as out:
                    out.write(f'#line {line} "{md_abs}"\n{code}\n')
                ok = compile_tu(args.cxx, args.include, source, flags) and ok
                continue
            if not after or current is None:
                current = f"snippet_{line}"
            combined.append(f"namespace {current} {{")
            body = kind == "body"
            if body:
                combined.append(f"inline void body_{line}() {{")
            has_main = kind == "toplevel" and re.search(r"\bmain\s*\(", code)
            if has_main:
                combined.append('#pragma GCC diagnostic push')
                combined.append('#pragma GCC diagnostic ignored "-Wreturn-type"')
            combined.append(f'#line {line} "{md_abs}"')
            combined.append(code)
            if has_main:
                combined.append('#pragma GCC diagnostic pop')
            if body:
                combined.append("}")
            combined.append(f"}}  // namespace {current}")
        if counts["toplevel"] + counts["body"]:
            source = os.path.join(args.out, f"{name}_fragments.cpp")
            with open(source, "w", encoding="utf-8") as out:
                out.write("\n".join(combined) + "\n")
            ok = compile_tu(args.cxx, args.include, source, flags) and ok
        print(f"{md}: {len(snippets)} snippets ({counts['program']} programs, "
              f"{counts['toplevel']} toplevel, {counts['body']} body)")
    print("all snippets compile" if ok else "SNIPPETS FAILED TO COMPILE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
