#!/usr/bin/env bash
# Runs each example server with its clients — ours and the Python documentation's own,
# unchanged — and checks they print what the documentation shows. Loopback and a temporary
# directory only; every wait is bounded; every server started is stopped by PID.
# Usage: run_pairs.sh BUILD_EXAMPLES_DIR
set -u
bin=$1
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$tmp"; }
trap cleanup EXIT
failures=0
python=$(command -v python3 || true)

# Free means bindable: nothing listening, and no TIME_WAIT left by an earlier run.
port_is_free() {
  if [ -n "$python" ]; then
    "$python" -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" "$1" 2>/dev/null
  else
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}
# The documentation's clients use port 9999: the first pair uses it when free, so they run
# unchanged. A server that just closed connections leaves its port in TIME_WAIT (the docs'
# servers do not set allow_reuse_address), so each later pair takes another free port.
next_port() {
  port=9999
  [ "${used_9999:-}" != 1 ] && port_is_free $port && { used_9999=1; return; }
  for _ in $(seq 1 50); do
    port=$(( 20000 + RANDOM % 20000 )); port_is_free $port && return
  done
}

expect() {  # expect NAME EXPECTED-LINE OUTPUT
  if grep -qxF -- "$2" <<<"$3"; then echo "ok   $1: $2"; else
    echo "FAIL $1: expected '$2' in:"; echo "$3"; failures=$((failures + 1)); fi
}

# wait_ready CMD...: retries a client until the server answers (at most ~10 s).
wait_ready() {
  for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "FAIL: server never answered: $*"; failures=$((failures + 1)); return 1
}

run_pair() {  # run_pair SERVER-CMD CLIENT-CMD [PYTHON-CLIENT]
  local server=$1 client=$2 pyclient=${3:-}
  $server >"$tmp/server.out" 2>&1 &
  local pid=$!; pids+=("$pid")
  wait_ready $client ready || { cat "$tmp/server.out"; kill $pid; return; }
  expect "$client" "Sent:     hello world with TCP" "$($client hello world with TCP)"
  expect "$client" "Received: HELLO WORLD WITH TCP" "$($client hello world with TCP)"
  expect "$client" "Received: PYTHON IS NICE" "$($client python is nice)"
  if [ -n "$pyclient" ] && [ -n "$python" ]; then
    sed "s/PORT = \"localhost\", 9999/PORT = \"localhost\", $port/" "$here/python/$pyclient" >"$tmp/$pyclient"
    expect "python $pyclient" "Received: HELLO WORLD WITH TCP" "$("$python" "$tmp/$pyclient" hello world with TCP)"
  fi
  kill $pid; wait $pid 2>/dev/null
  case "$server" in
    *production_server*) expect "$server" "stopped: 4 requests, 0 errors, 0 cut short" "$(cat "$tmp/server.out")" ;;
    *prefork_server*) grep -q "wrote b'hello world with TCP'" "$tmp/server.out" &&
        echo "ok   $server: a worker wrote the line" ||
        { echo "FAIL $server:"; cat "$tmp/server.out"; failures=$((failures + 1)); } ;;
    *) expect "$server" "b'hello world with TCP'" "$(cat "$tmp/server.out")" ;;
  esac
}

next_port; run_pair "$bin/tcp_server localhost $port" "$bin/tcp_client --port $port" TCPClient.py
next_port; run_pair "$bin/tcp_stream_server localhost $port" "$bin/tcp_client --port $port" TCPClient.py
next_port; run_pair "$bin/udp_server localhost $port" "$bin/udp_client --port $port" UDPClient.py
run_pair "$bin/unix_stream_server $tmp/example.sock" "$bin/unix_client --path $tmp/example.sock"
# Beyond the docs: the same protocol from a pooled, drained server and from prefork workers.
next_port; run_pair "$bin/production_server localhost $port" "$bin/tcp_client --port $port"
next_port; run_pair "$bin/prefork_server localhost $port 2" "$bin/tcp_client --port $port"
# The same handler on fibers, kept alive (the client closes after one line).
next_port; run_pair "$bin/fiber_echo_server localhost $port" "$bin/tcp_client --port $port"

# max_threads: 8 clients at once against a server that runs at most 4 request threads (each
# takes 100 ms a line): every client is answered, the last ones once a thread is free.
run_bounded() {  # run_bounded SERVER-CMD CLIENT-CMD
  local server=$1 client=$2 i
  $server >"$tmp/server.out" 2>&1 &
  local pid=$!; pids+=("$pid")
  wait_ready $client ready || { cat "$tmp/server.out"; kill $pid; return; }
  local clients=()
  for i in 1 2 3 4 5 6 7 8; do
    timeout 20 $client client $i >"$tmp/client.$i" 2>&1 &
    clients+=($!)
  done
  for i in "${clients[@]}"; do wait "$i"; done
  for i in 1 2 3 4 5 6 7 8; do
    expect "$client (8 at once)" "Received: CLIENT $i" "$(cat "$tmp/client.$i")"
  done
  kill $pid; wait $pid 2>/dev/null
  if grep -qE '^stopped: [0-9]+ connections served, at most [1-4] threads at once$' "$tmp/server.out"; then
    echo "ok   $server: $(tail -n 1 "$tmp/server.out")"
  else
    echo "FAIL $server: more than 4 threads at once, or no summary:"; cat "$tmp/server.out"
    failures=$((failures + 1))
  fi
}
next_port; run_bounded "$bin/bounded_threads_server localhost $port" "$bin/tcp_client --port $port"

# The chat server: 2,000 clients on two loop threads; a line from one reaches all the others.
if [ -n "$python" ]; then
  next_port
  "$bin/fiber_chat_server" localhost $port 2 >"$tmp/server.out" 2>&1 &
  pid=$!; pids+=("$pid")
  if out=$("$python" "$here/chat_check.py" $port 2000 $pid 2>&1); then
    echo "ok   fiber_chat_server: $out"
  else
    echo "FAIL fiber_chat_server: $out"; cat "$tmp/server.out"; failures=$((failures + 1))
  fi
  kill $pid; wait $pid 2>/dev/null
fi

echo "$(( failures == 0 ? 1 : 0 )) passed, $(( failures == 0 ? 0 : 1 )) failed"
exit $(( failures == 0 ? 0 : 1 ))
