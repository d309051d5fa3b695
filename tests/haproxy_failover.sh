#!/usr/bin/env bash
# Scale-out recipe test (docs/DEPLOY.md): HAProxy on loopback in front of two of our
# servers. Traffic through it reaches both; after one server is stopped, every request is
# still answered, by the other. Skips (exit 77) where haproxy is not installed.
# With proxy-v2, HAProxy sends each connection's PROXY protocol v2 header (send-proxy-v2)
# and every reply must name the loopback client's own address and port, as the backend's
# handler saw them.
# Usage: haproxy_failover.sh NAMED_ECHO_BINARY [proxy-v2]
set -u
backend_bin=$1
mode=${2:-plain}
send_proxy=""; backend_mode=""
if [ "$mode" = proxy-v2 ]; then send_proxy=" send-proxy-v2"; backend_mode="proxy-v2"; fi
haproxy=$(command -v haproxy || true)
[ -x /usr/sbin/haproxy ] && haproxy=/usr/sbin/haproxy
if [ -z "$haproxy" ]; then echo "SKIPPED: haproxy is not installed (apt-get install haproxy)"; exit 77; fi
python=$(command -v python3 || true)
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "0 passed, 1 failed"; exit 1; }

start_backend() {  # start_backend NAME -> sets backend_pid, backend_port
  "$backend_bin" "$1" 0 $backend_mode >"$tmp/$1.port" 2>"$tmp/$1.err" &
  backend_pid=$!; pids+=("$backend_pid")
  for _ in $(seq 1 100); do [ -s "$tmp/$1.port" ] && break; sleep 0.05; done
  backend_port=$(head -1 "$tmp/$1.port")
  [ -n "$backend_port" ] || fail "backend $1 did not start: $(cat "$tmp/$1.err")"
}
start_backend alpha; alpha_pid=$backend_pid; alpha_port=$backend_port
start_backend beta; beta_port=$backend_port

# A free port for HAProxy's frontend (bindable now; HAProxy binds it right after).
front=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$tmp/haproxy.cfg" <<CFG
global
    maxconn 256
defaults
    mode tcp
    timeout connect 1s
    timeout client 5s
    timeout server 5s
    retries 3
    option redispatch
frontend front
    bind 127.0.0.1:$front
    default_backend echo
backend echo
    balance roundrobin
    server alpha 127.0.0.1:$alpha_port check inter 100ms fall 1 rise 1$send_proxy
    server beta 127.0.0.1:$beta_port check inter 100ms fall 1 rise 1$send_proxy
CFG
"$haproxy" -c -q -f "$tmp/haproxy.cfg" || fail "haproxy rejected the configuration"
"$haproxy" -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.log" 2>&1 &
pids+=($!)

# ask N: sends N requests through HAProxy (a connection each), prints one reply per line.
# With proxy-v2, a reply "NAME from 127.0.0.1:PORT: ..." is printed as "NAME: ..." when PORT
# is this client's own port, else as it came (and the checks below fail on it).
ask() {
  "$python" - "$front" "$1" "$mode" <<'PY'
import socket, sys
port, n, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for i in range(n):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        me = "127.0.0.1:%d" % s.getsockname()[1]
        s.sendall(b"request %d\n" % i)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    reply = data.decode().strip() or "NO-REPLY"
    if mode == "proxy-v2":
        reply = reply.replace(" from " + me + ":", ":", 1)
    print(reply)
PY
}
for _ in $(seq 1 100); do ask 1 2>/dev/null | grep -q ': request 0' && break; sleep 0.05; done

before=$(ask 20) || fail "requests through haproxy failed"
echo "$before" | grep -q '^alpha: request' || fail "alpha got no traffic: $before"
echo "$before" | grep -q '^beta: request' || fail "beta got no traffic: $before"
echo "ok   both backends answered through haproxy ($mode)"
if [ "$mode" = proxy-v2 ]; then
  # ask() has turned every reply naming the client's own address and port into "NAME: ...".
  echo "$before" | grep -v -q -E '^(alpha|beta): request' && fail "a handler did not see the client's address: $before"
  echo "ok   every handler saw the loopback client's own address and port"
fi

kill -TERM "$alpha_pid"; wait "$alpha_pid" 2>/dev/null
after=$(ask 20) || fail "requests after stopping alpha failed"
[ "$(echo "$after" | grep -c '^beta: request')" = 20 ] || fail "not every request answered by beta: $after"
echo "ok   all 20 requests answered by beta after alpha stopped"
[ "$mode" = proxy-v2 ] && echo "3 passed, 0 failed" || echo "2 passed, 0 failed"
