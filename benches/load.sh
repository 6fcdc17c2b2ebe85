#!/usr/bin/env bash
# Proxy throughput, measured side by side in one run: a bare pingora pass-through
# (examples/bare_proxy.rs) and datagate, both in front of the same demo upstream, driven by
# wrk over loopback. Prints requests/s, latency percentiles and the ratio.
#
#   benches/load.sh [DURATION_SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
connections=${2:-32}
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null; }

cargo build --release --quiet --bins --example bare_proxy
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin/datagate-demo-upstream" --listen 127.0.0.1:18088 >"$work/upstream.log" 2>&1 &
pids+=($!)
"$bin/examples/bare_proxy" 127.0.0.1:18081 127.0.0.1:18088 2 >"$work/bare.log" 2>&1 &
pids+=($!)

sed -e 's/127.0.0.1:8080/127.0.0.1:18080/' -e 's/127.0.0.1:9180/127.0.0.1:19180/' \
    -e 's/127.0.0.1:8088/127.0.0.1:18088/' -e 's#output: stdout#output: stderr#' \
    -e 's#\.\./casbin_model.conf#'"$PWD"'/casbin_model.conf#' -e 's#\.\./policies#'"$PWD"'/policies#' \
    -e 's#example-secrets/#'"$PWD"'/deploy/example-secrets/#' \
    deploy/datagate.example.yaml >"$work/datagate.yaml"
DATAGATE_LOG=error "$bin/datagate" run --config "$work/datagate.yaml" >"$work/datagate.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:19180/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
for port in 18088 18081 18080; do
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
  done
done
token=$("$bin/datagate" token --config "$work/datagate.yaml" --sub alice --roles Gamma --org-role Viewer --ttl 1h)
sql_token=$("$bin/datagate" token --config "$work/datagate.yaml" --sub alice --roles Gamma,sql_lab --org-role Viewer --ttl 1h)

# SQL Lab execute with a fixed body: through datagate it is parsed, RLS-rewritten (a
# rewrite-cache hit after the first request) and executed on the demo upstream.
cat >"$work/sql.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"database_id": 1, "sql": "SELECT o.id, o.amount, c.name FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.amount > 5"}'
LUA

run() { # name url [wrk args…]
  local name=$1 url=$2
  shift 2
  wrk -t1 -c"$connections" -d"${duration}s" --latency -H "Authorization: Bearer ${bearer:-$token}" "$@" "$url" >"$work/$name.txt"
  set -- "$name"
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/$1.txt")
  p50=$(awk '$1=="50%" {print $2}' "$work/$1.txt")
  p99=$(awk '$1=="99%" {print $2}' "$work/$1.txt")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$work/$1.txt")
  printf '%-34s %10s req/s   p50 %8s   p99 %8s   non-2xx %s\n' "$1" "$rps" "$p50" "$p99" "${non2xx:-0}"
  echo "$rps" >"$work/$1.rps"
}

echo "machine: $(nproc) cores; wrk -t1 -c$connections -d${duration}s; GET /api/v1/chart/1 (JWT, can_read on Chart)"
run bare-pingora http://127.0.0.1:18081/api/v1/chart/1
run datagate-auth-route http://127.0.0.1:18080/api/v1/chart/1
awk -v a="$(cat "$work/datagate-auth-route.rps")" -v b="$(cat "$work/bare-pingora.rps")" \
  'BEGIN { printf "ratio datagate/bare: %.2f\n", a / b }'
echo "POST /api/v1/sqllab/execute/ (JWT, can_execute_sql_query, RLS rewrite, SQL executed upstream)"
bearer=$sql_token run bare-pingora-sql http://127.0.0.1:18081/api/v1/sqllab/execute/ -s "$work/sql.lua"
bearer=$sql_token run datagate-sql-rls http://127.0.0.1:18080/api/v1/sqllab/execute/ -s "$work/sql.lua"
awk -v a="$(cat "$work/datagate-sql-rls.rps")" -v b="$(cat "$work/bare-pingora-sql.rps")" \
  'BEGIN { printf "ratio datagate/bare (SQL route, rewrite-cache hits): %.2f\n", a / b }'
