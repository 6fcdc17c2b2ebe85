#!/usr/bin/env bash
# Per-request cost that does not depend on how loaded the machine is: instructions and
# allocations per request (valgrind's callgrind counts instructions and calls, not time)
# and system calls per request (strace -c), for the bare pingora pass-through, nginx and
# datagate in front of the demo upstream, on the auth route (`GET /api/v1/chart/1` with a
# JWT).
#
#   benches/per_request.sh [instructions|syscalls|both] [CANDIDATES…]
#   SKIP_BUILD=1 …            use the release binaries already built (CARGO_TARGET_DIR)
#   SCENARIO=sql …            auth (default) or sql (SQL Lab execute, rewrite-cache hits)
#   KEEP_WORK=1 …             keep the callgrind output (callgrind_annotate it)
#
# Candidates: bare datagate nginx. For instructions nginx runs as one process
# (`master_process off; daemon off;`, one worker's event loop, the same code path that
# serves requests) so callgrind sees every instruction a request costs it. Throughput
# under load is benches/load.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-both}
shift || true
candidates=("$@")
[ ${#candidates[@]} -gt 0 ] || candidates=(bare datagate nginx)
scenario=${SCENARIO:-auth}
command -v wrk >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
command -v strace >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null; }
command -v valgrind >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$nginx_bin" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null

target=${CARGO_TARGET_DIR:-target}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet --bins --example bare_proxy
bin=$target/release
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT

upstream=127.0.0.1:28088
"$bin/datagate-demo-upstream" --listen $upstream --no-record >"$work/upstream.log" 2>&1 &
pids+=($!)
sed -e 's/127.0.0.1:8080/127.0.0.1:28080/' -e 's/127.0.0.1:9180/127.0.0.1:29180/' \
    -e 's/127.0.0.1:8088/127.0.0.1:28088/' -e 's#output: stdout#output: stderr#' \
    -e 's#url: sqlite:data/datagate.db#url: sqlite:'"$work"'/datagate.db#' \
    -e 's#\.\./casbin_model.conf#'"$PWD"'/casbin_model.conf#' -e 's#\.\./policies#'"$PWD"'/policies#' \
    -e 's#example-secrets/#'"$PWD"'/deploy/example-secrets/#' \
    deploy/datagate.example.yaml >"$work/datagate.yaml"
mint() { "$bin/datagate" token --config "$work/datagate.yaml" --sub alice --org-role Viewer --ttl 2h "$@"; }
case $scenario in
  auth) token=$(mint --roles Gamma); method=GET; path=/api/v1/chart/1; body= ;;
  sql) token=$(mint --roles Gamma,sql_lab); method=POST; path=/api/v1/sqllab/execute/
       body='{"database_id": 1, "sql": "SELECT o.id, o.amount, c.name FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.amount > 5"}' ;;
  *) echo "unknown SCENARIO $scenario" >&2; exit 2 ;;
esac
cat >"$work/request.lua" <<LUA
wrk.method = "$method"
wrk.headers["Authorization"] = "Bearer $token"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[$body]==]
LUA
cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
$( [ "$(id -u)" = 0 ] && echo "user root;" )
pid $work/nginx.pid;
error_log $work/nginx-error.log error;
daemon on;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx-body;
  proxy_temp_path $work/nginx-proxy;
  upstream demo { server $upstream; keepalive 128; }
  server {
    listen 127.0.0.1:28082;
    location / { proxy_pass http://demo; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX

wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
requests_of() { awk '/requests in/ {print $1}' "$1"; }
# start CANDIDATE WRAPPER… : runs the candidate under WRAPPER, prints its pid and port.
start() {
  local name=$1; shift
  case $name in
    bare) "$@" "$bin/examples/bare_proxy" 127.0.0.1:28081 $upstream 2 >"$work/$name.log" 2>&1 & echo "$! 28081" ;;
    datagate) DATAGATE_LOG=error "$@" "$bin/datagate" run --config "$work/datagate.yaml" >"$work/$name.log" 2>&1 & echo "$! 28080" ;;
    nginx) sed -e 's/^daemon on;/daemon off;\nmaster_process off;/' -e "s#pid $work/nginx.pid#pid $work/nginx-single.pid#" \
             "$work/nginx.conf" >"$work/nginx-single.conf"
           "$@" "$nginx_bin" -c "$work/nginx-single.conf" -p "$work" >"$work/$name.log" 2>&1 & echo "$! 28082" ;;
  esac
}
wait_port 28088
# SIGTERM is a graceful shutdown for pingora (it drains for its grace period), so a
# candidate still running after 10 s is killed: the counts are taken, and a survivor would
# still hold its port when the next run starts.
stop() { kill "$1" 2>/dev/null || true; for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -KILL "$1" 2>/dev/null || true; }

# Allocations in a callgrind dump: calls into mimalloc's entry points (both binaries set
# mimalloc as the global allocator; Rust calls `mi_malloc_aligned`, `mi_zalloc_aligned`
# and `mi_realloc_aligned` for every allocation, zeroed one and reallocation). Counting
# calls into Rust's `__rust_alloc` shim instead undercounts: where the compiler inlines
# the shim into a caller, that caller calls mimalloc directly (in the bare pass-through
# 30 of its 76.5 allocations per request did), and inlining differs between binaries.
# nginx allocates from its own pools, so it has no comparable count.
allocations_of() { # dump
  python3 - "$1" <<'PY'
import re, sys
allocator = {"mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned", "mi_malloc", "mi_zalloc", "mi_realloc"}
names, total, pending = {}, 0, False
for line in open(sys.argv[1], errors="replace"):
    if line.startswith(("fn=", "cfn=")):
        match = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
        if match:
            if match.group(2):
                names[match.group(1)] = match.group(2)
            pending = line.startswith("cfn=") and names.get(match.group(1), "") in allocator
    elif line.startswith("calls=") and pending:
        total += int(line[6:].split()[0])
        pending = False
print(total)
PY
}

instructions() { # candidate
  read -r pid port < <(start "$1" valgrind --tool=callgrind --callgrind-out-file="$work/$1.callgrind" --instr-atstart=yes)
  pids+=("$pid")
  wait_port "$port"
  wrk -t1 -c4 -d3s -s "$work/request.lua" "http://127.0.0.1:$port$path" >/dev/null   # warm-up
  callgrind_control -z "$pid" >/dev/null
  wrk -t1 -c4 -d10s -s "$work/request.lua" "http://127.0.0.1:$port$path" >"$work/$1.wrk"
  callgrind_control -d "$pid" >/dev/null
  sleep 1
  local dump requests total
  dump=$(ls -t "$work/$1".callgrind* | grep -v '\.callgrind$' | head -1 || true)
  [ -n "$dump" ] || dump=$work/$1.callgrind
  requests=$(requests_of "$work/$1.wrk")
  total=$(awk '/^summary:|^totals:/ {print $2; exit}' "$dump")
  grep -q 'Non-2xx' "$work/$1.wrk" && echo "$1: non-2xx answers during the run" >&2
  local allocations=-
  if [ "$1" != nginx ]; then
    allocations=$(awk -v a="$(allocations_of "$dump")" -v r="$requests" 'BEGIN {printf "%.1f", a / r}')
  fi
  printf '%-9s %12s instructions, %s allocations per request (%s requests, dump %s)\n' "$1" "$((total / requests))" "$allocations" "$requests" "$(basename "$dump")"
  stop "$pid"
}

syscalls() { # candidate
  local pid port
  if [ "$1" = nginx ]; then
    "$nginx_bin" -c "$work/nginx.conf" -p "$work" ; sleep 0.5
    port=28082
    pid=$(pgrep -f "nginx: worker process" | head -1)
    wait_port $port
    wrk -t1 -c4 -d2s -s "$work/request.lua" "http://127.0.0.1:$port$path" >/dev/null
  else
    read -r pid port < <(start "$1")
    pids+=("$pid")
    wait_port "$port"
    wrk -t1 -c4 -d2s -s "$work/request.lua" "http://127.0.0.1:$port$path" >/dev/null
  fi
  timeout -s INT 12 strace -f -c -p "$pid" -o "$work/$1.strace" 2>/dev/null &
  local tracer=$!
  sleep 1
  wrk -t1 -c4 -d8s -s "$work/request.lua" "http://127.0.0.1:$port$path" >"$work/$1.syswrk"
  kill -INT $tracer 2>/dev/null || true
  wait $tracer 2>/dev/null || true
  local requests calls
  requests=$(requests_of "$work/$1.syswrk")
  # strace -c columns: % time, seconds, usecs/call, calls, [errors], syscall
  calls=$(awk '$NF=="total" {print $4}' "$work/$1.strace")
  printf '%-9s %8s system calls per request (%s requests); top:' "$1" "$(awk -v c="$calls" -v r="$requests" 'BEGIN {printf "%.2f", c / r}')" "$requests"
  awk -v r="$requests" 'NR > 2 && $NF != "total" && $1 !~ /^-/ && $4 / r >= 0.01 { printf " %s %.2f", $NF, $4 / r }' "$work/$1.strace"
  echo
  if [ "$1" = nginx ]; then stop "$(cat "$work/nginx.pid")"; rm -f "$work/nginx.pid"; else stop "$pid"; fi
}

echo "scenario $scenario: $method $path; wrk -t1 -c4 over loopback; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for candidate in "${candidates[@]}"; do
  if [ "$mode" != syscalls ]; then instructions "$candidate"; fi
  if [ "$mode" != instructions ]; then syscalls "$candidate"; fi
done
