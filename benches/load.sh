#!/usr/bin/env bash
# Proxy throughput and added latency, side by side in one run: the demo upstream directly,
# nginx (`proxy_pass` with upstream keepalive, 2 workers), a bare pingora pass-through
# (examples/bare_proxy.rs, datagate's server settings) and datagate, all in front of the
# same demo upstream (src/bin/demo_upstream.rs), driven by wrk over loopback.
#
# Rounds are interleaved (round 1: every scenario × every candidate, then round 2, …) so
# the noise of a shared machine hits every candidate alike; medians over rounds and ratios
# are printed. Throughput runs use `wrk -t1 -c$CONNECTIONS`; the added latency per request
# is measured apart with one connection (`-c1`, no queueing): p50/p99 of the candidate
# minus p50/p99 of the upstream directly.
#
# Each throughput run also reads the candidate's own CPU time (user + system, from
# /proc/PID/stat, every thread; nginx's workers summed) and divides it by the requests it
# served: CPU µs per request, kernel work on its sockets included. The ratio of two
# candidates' CPU per request is the throughput ratio they would have if the proxy alone
# were the limit. It is no steadier than req/s on a shared 2-core machine (a busier
# machine means fewer requests per wake-up and colder caches, so CPU per request rises):
# compare candidates within one run, and instructions per request
# (benches/per_request.sh) between builds.
#
#   benches/load.sh [DURATION_SECONDS] [CONNECTIONS] [ROUNDS]
#   SKIP_BUILD=1 benches/load.sh …     use the release binaries already built
#   SCENARIOS="auth sql" …             a subset of: auth sql grafana export
#   CANDIDATES="bare datagate" …       a subset of: direct nginx bare datagate
#   KEEP_WORK=1 …                      keep the temporary directory (configs, raw wrk output)
#   PIN=1 …                            each proxy on the last core with one worker thread
#                                      (one nginx worker), wrk and the upstream on the others
#
# PIN=1 is the proxy-bound comparison. Unpinned, every process (wrk, the upstream, a
# proxy's two threads) competes for both cores, and where the scheduler puts them moves a
# candidate's rounds by more than the candidates differ; pinned, a proxy's core is the
# limit and its req/s is what one core of it serves. The other core (wrk and the
# upstream) has its own limit, the `direct` row: a candidate near it is held back by the
# client side, so read its CPU per request, which that does not compress.
#
# nginx is installed from Debian's packages when missing (`apt-get install nginx-light`
# or `nginx`); wrk likewise.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-6}
connections=${2:-32}
rounds=${3:-3}
latency_duration=${LATENCY_DURATION:-3}
scenarios=(${SCENARIOS:-auth sql grafana export})
candidates=(${CANDIDATES:-direct nginx bare datagate})
# Unpinned: every process may run anywhere, proxies with two worker threads (one per core
# here). PIN=1: proxies on the last core with one worker, wrk and the upstream on the rest.
proxy_threads=2
on_proxy_core=()
on_client_cores=()
if [ -n "${PIN:-}" ]; then
  last_core=$(($(nproc) - 1))
  [ "$last_core" -ge 1 ] || { echo "PIN=1 needs at least 2 cores" >&2; exit 2; }
  proxy_threads=1
  on_proxy_core=(taskset -c "$last_core")
  on_client_cores=(taskset -c "0-$((last_core - 1))")
fi

install_debian() { # package…
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}
command -v wrk >/dev/null || install_debian wrk
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$nginx_bin" ] || install_debian nginx-light || install_debian nginx
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

target=${CARGO_TARGET_DIR:-target}
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release --quiet --bins --example bare_proxy
fi
bin=$target/release
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null
  kill "${pids[@]}" 2>/dev/null || true
  # SIGTERM is a graceful shutdown for pingora (it drains for its grace period): give the
  # candidates 10 s, then kill what is left rather than wait for it.
  for _ in $(seq 1 100); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

upstream=127.0.0.1:18088
declare -A port=([direct]=18088 [bare]=18081 [nginx]=18082 [datagate]=18080)

declare -A pid=()
"${on_client_cores[@]}" "$bin/datagate-demo-upstream" --listen $upstream --no-record >"$work/upstream.log" 2>&1 &
pids+=($!)
pid[direct]=$!
"${on_proxy_core[@]}" "$bin/examples/bare_proxy" 127.0.0.1:${port[bare]} $upstream $proxy_threads >"$work/bare.log" 2>&1 &
pids+=($!)
pid[bare]=$!

# nginx as a user would deploy it in front of one service: 2 workers (one per core here),
# HTTP/1.1 to the upstream with a keepalive pool, no access log (datagate logs nothing per
# allowed request either).
mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<NGINX
worker_processes $proxy_threads;
$( [ "$(id -u)" = 0 ] && echo "user root;" )
pid $work/nginx.pid;
error_log $work/nginx/error.log error;
daemon on;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  client_max_body_size 8m;
  upstream demo { server $upstream; keepalive 128; }
  server {
    listen 127.0.0.1:${port[nginx]} reuseport;
    location / {
      proxy_pass http://demo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
"${on_proxy_core[@]}" "$nginx_bin" -c "$work/nginx.conf" -p "$work/nginx"

sed -e 's/127.0.0.1:8080/127.0.0.1:18080/' -e 's/127.0.0.1:9180/127.0.0.1:19180/' \
    -e 's/127.0.0.1:8088/127.0.0.1:18088/' -e 's#output: stdout#output: stderr#' \
    -e 's#url: sqlite:data/datagate.db#url: sqlite:'"$work"'/datagate.db#' \
    -e 's#\.\./casbin_model.conf#'"$PWD"'/casbin_model.conf#' -e 's#\.\./policies#'"$PWD"'/policies#' \
    -e 's#example-secrets/#'"$PWD"'/deploy/example-secrets/#' \
    -e 's#^  proxy: \(.*\)#  proxy: \1\n  threads: '"$proxy_threads"'#' \
    deploy/datagate.example.yaml >"$work/datagate.yaml"
grep -q "^  threads: $proxy_threads\$" "$work/datagate.yaml" || { echo "could not set datagate's listen.threads" >&2; exit 1; }
DATAGATE_LOG=error "${on_proxy_core[@]}" "$bin/datagate" run --config "$work/datagate.yaml" >"$work/datagate.log" 2>&1 &
pids+=($!)
pid[datagate]=$!
for _ in $(seq 1 200); do
  curl -fsS http://127.0.0.1:19180/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
for name in direct bare nginx datagate; do
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/${port[$name]}) 2>/dev/null && break
    sleep 0.1
  done
done
mint() { "$bin/datagate" token --config "$work/datagate.yaml" --sub alice --org-role Viewer --ttl 2h "$@"; }
declare -A token=(
  [auth]=$(mint --roles Gamma)
  [sql]=$(mint --roles Gamma,sql_lab)
  [grafana]=$(mint --roles Gamma)
  [export]=$(mint --roles Alpha)
)

# One wrk script per scenario: method, body, headers. The same request goes to every
# candidate; only datagate reads it (authenticates, authorizes, rewrites the SQL).
lua() { # scenario method body
  cat >"$work/$1.lua" <<LUA
wrk.method = "$2"
wrk.headers["Authorization"] = "Bearer ${token[$1]}"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[$3]==]
LUA
}
declare -A path=(
  [auth]=/api/v1/chart/1
  [sql]=/api/v1/sqllab/execute/
  [grafana]=/api/ds/query
  [export]='/demo.csv?sql=SELECT%20id%2C%20amount%2C%20region%20FROM%20orders%20WHERE%20amount%20%3E%205'
)
declare -A describe=(
  [auth]="GET /api/v1/chart/1 (JWT, can_read on Chart)"
  [sql]="POST SQL Lab execute (JWT, can_execute_sql_query, RLS rewrite-cache hit, SQL run upstream)"
  [grafana]="POST /api/ds/query, three rawSql queries (datasource grant, RLS on each)"
  [export]="GET /demo.csv?sql= (datasource grant, can_export_data, RLS, export-typed response)"
)
lua auth GET ""
lua sql POST '{"database_id": 1, "sql": "SELECT o.id, o.amount, c.name FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.amount > 5"}'
lua grafana POST '{"queries": [{"refId": "A", "datasource": {"uid": "demo"}, "rawSql": "SELECT id, amount FROM orders WHERE amount > 5"}, {"refId": "B", "datasource": {"uid": "demo"}, "rawSql": "SELECT region, count(*) AS n FROM customers GROUP BY region"}, {"refId": "C", "datasource": {"uid": "demo"}, "rawSql": "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id"}]}'
lua export GET ""

# Each scenario must answer 200 through datagate before it is measured.
for scenario in "${scenarios[@]}"; do
  status=$(wrk -t1 -c1 -d1s -s "$work/$scenario.lua" "http://127.0.0.1:${port[datagate]}${path[$scenario]}" |
    awk '/Non-2xx/ {print "non-2xx"}')
  if [ -n "$status" ]; then
    echo "scenario $scenario: datagate answers non-2xx; its log:" >&2
    curl -sS -X "$(awk -F'"' '/wrk.method/ {print $2}' "$work/$scenario.lua")" \
      -H "Authorization: Bearer ${token[$scenario]}" -H 'Content-Type: application/json' \
      --data-binary "$(sed -n 's/^wrk.body = \[==\[\(.*\)\]==\]$/\1/p' "$work/$scenario.lua")" \
      "http://127.0.0.1:${port[datagate]}${path[$scenario]}" >&2 || true
    tail -5 "$work/datagate.log" >&2
    exit 1
  fi
done

to_us() { # wrk latency (12.3us / 1.2ms / 1.01s) → microseconds
  awk '{ v = $1; if (v ~ /us$/) { sub(/us$/, "", v); print v } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 } else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 } else print v }'
}
clock_ticks=$(getconf CLK_TCK)
candidate_pids() { # candidate → its processes (nginx: master and workers)
  if [ "$1" = nginx ]; then
    cat "$work/nginx.pid"
    pgrep -P "$(cat "$work/nginx.pid")"
  else
    echo "${pid[$1]}"
  fi
}
cpu_ticks() { # candidate → user + system clock ticks of its processes, all threads
  local total=0 process fields
  for process in $(candidate_pids "$1"); do
    # After `PID (comm) `, field 14 (utime) is the 12th and field 15 (stime) the 13th.
    read -r -a fields < <(sed 's/^.*) //' "/proc/$process/stat")
    total=$((total + fields[11] + fields[12]))
  done
  echo "$total"
}
measure() { # round scenario candidate
  local out=$work/r$1-$2-$3 before after
  before=$(cpu_ticks "$3")
  "${on_client_cores[@]}" wrk -t1 -c"$connections" -d"${duration}s" -s "$work/$2.lua" "http://127.0.0.1:${port[$3]}${path[$2]}" >"$out.txt"
  after=$(cpu_ticks "$3")
  awk '/Requests\/sec/ {print $2}' "$out.txt" >>"$work/$2-$3.rps"
  awk -v ticks=$((after - before)) -v hz="$clock_ticks" '/requests in/ { if ($1 > 0) printf "%.2f\n", ticks * 1000000 / hz / $1 }' \
    "$out.txt" >>"$work/$2-$3.cpu"
  awk '/Non-2xx/ {print $5}' "$out.txt" >>"$work/$2-$3.non2xx"
  "${on_client_cores[@]}" wrk -t1 -c1 -d"${latency_duration}s" --latency -s "$work/$2.lua" "http://127.0.0.1:${port[$3]}${path[$2]}" >"$out.lat"
  awk '$1=="50%" {print $2}' "$out.lat" | to_us >>"$work/$2-$3.p50"
  awk '$1=="99%" {print $2}' "$out.lat" | to_us >>"$work/$2-$3.p99"
}
median() { sort -g "$1" | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { sort -g "$1" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s–%s", lo, hi }'; }

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start (shared with other work)"
if [ -n "${PIN:-}" ]; then
  echo "pinned: proxies on core $last_core with one worker each; wrk and the upstream on cores 0-$((last_core - 1))"
else
  echo "unpinned: proxies with $proxy_threads worker threads; every process on any core"
fi
echo "throughput: wrk -t1 -c$connections -d${duration}s; latency: wrk -t1 -c1 -d${latency_duration}s; $rounds interleaved rounds, medians"
for round in $(seq 1 "$rounds"); do
  for scenario in "${scenarios[@]}"; do
    for candidate in "${candidates[@]}"; do
      measure "$round" "$scenario" "$candidate"
    done
  done
  echo "round $round done (load average $(cut -d' ' -f1 /proc/loadavg))"
done

for scenario in "${scenarios[@]}"; do
  echo
  echo "== $scenario: ${describe[$scenario]}"
  printf '%-9s %10s %19s %11s %9s %9s %12s %12s %8s\n' candidate 'req/s' 'range' 'CPU µs/req' 'p50 µs' 'p99 µs' '+p50 µs' '+p99 µs' non-2xx
  direct_p50=$(median "$work/$scenario-direct.p50" 2>/dev/null || echo 0)
  direct_p99=$(median "$work/$scenario-direct.p99" 2>/dev/null || echo 0)
  for candidate in "${candidates[@]}"; do
    rps=$(median "$work/$scenario-$candidate.rps")
    echo "$rps" >"$work/$scenario-$candidate.median"
    cpu=$(median "$work/$scenario-$candidate.cpu")
    echo "$cpu" >"$work/$scenario-$candidate.cpu-median"
    p50=$(median "$work/$scenario-$candidate.p50")
    p99=$(median "$work/$scenario-$candidate.p99")
    non2xx=$(awk '{ s += $1 } END { print s + 0 }' "$work/$scenario-$candidate.non2xx")
    added50=$(awk -v a="$p50" -v b="$direct_p50" 'BEGIN { printf "%.0f", a - b }')
    added99=$(awk -v a="$p99" -v b="$direct_p99" 'BEGIN { printf "%.0f", a - b }')
    [ "$candidate" = direct ] && added50=- && added99=-
    printf '%-9s %10.0f %19s %11.1f %9.0f %9.0f %12s %12s %8s\n' "$candidate" "$rps" "$(range "$work/$scenario-$candidate.rps")" "$cpu" "$p50" "$p99" "$added50" "$added99" "$non2xx"
  done
  ratio() { # a b
    [ -f "$work/$scenario-$1.median" ] && [ -f "$work/$scenario-$2.median" ] &&
      awk -v a="$(cat "$work/$scenario-$1.median")" -v b="$(cat "$work/$scenario-$2.median")" -v n="$1/$2" \
        'BEGIN { if (b > 0) printf "  %s %.2f", n, a / b }'
  }
  cpu_ratio() { # a b → b's CPU per request over a's (a's throughput relative to b's, CPU-bound)
    [ -f "$work/$scenario-$1.cpu-median" ] && [ -f "$work/$scenario-$2.cpu-median" ] &&
      awk -v a="$(cat "$work/$scenario-$1.cpu-median")" -v b="$(cat "$work/$scenario-$2.cpu-median")" -v n="$1/$2" \
        'BEGIN { if (a > 0) printf "  %s %.2f", n, b / a }'
  }
  echo "ratios:$(ratio datagate bare)$(ratio datagate nginx)$(ratio bare nginx)$(ratio nginx direct)"
  echo "by CPU per request:$(cpu_ratio datagate bare)$(cpu_ratio datagate nginx)$(cpu_ratio bare nginx)"
done
