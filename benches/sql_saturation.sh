#!/usr/bin/env bash
# Latency of an authentication-only route while SQL routes are saturated with heavy
# statements: 2,000-branch UNIONs over the protected `orders` table (about 56 KB each,
# every one distinct so none is a rewrite-cache hit), sent by FLOODERS concurrent clients
# to SQL Lab's execute route. The auth-only route (GET /api/v1/chart/1 with a JWT) is
# measured with wrk before and during the flood; the flood's answers are tallied by status
# and kind (200, 503 sql_busy, ...).
#
#   benches/sql_saturation.sh [DURATION_SECONDS] [FLOODERS]
#   BIN=target/debug benches/sql_saturation.sh     # use an existing build (default: release)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
flooders=${2:-64}
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null; }
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bins
  BIN=target/release
fi
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$BIN/datagate-demo-upstream" --listen 127.0.0.1:28088 >"$work/upstream.log" 2>&1 &
pids+=($!)
sed -e 's/127.0.0.1:8080/127.0.0.1:28080/' -e 's/127.0.0.1:9180/127.0.0.1:29180/' \
    -e 's/127.0.0.1:8088/127.0.0.1:28088/' -e 's#output: stdout#output: stderr#' \
    -e 's#\.\./casbin_model.conf#'"$PWD"'/casbin_model.conf#' -e 's#\.\./policies#'"$PWD"'/policies#' \
    -e 's#example-secrets/#'"$PWD"'/deploy/example-secrets/#' \
    deploy/datagate.example.yaml >"$work/datagate.yaml"
DATAGATE_LOG=error "$BIN/datagate" run --config "$work/datagate.yaml" >"$work/datagate.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do
  curl -fsS http://127.0.0.1:29180/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
token=$("$BIN/datagate" token --config "$work/datagate.yaml" --sub alice --roles Gamma --org-role Viewer --ttl 1h)
sql_token=$("$BIN/datagate" token --config "$work/datagate.yaml" --sub alice --roles Gamma,sql_lab --org-role Viewer --ttl 1h)

auth_latency() { # label
  wrk -t1 -c4 -d"${duration}s" --latency -H "Authorization: Bearer $token" \
    http://127.0.0.1:28080/api/v1/chart/1 >"$work/$1.txt"
  printf '%-28s %10s req/s   p50 %8s   p90 %8s   p99 %8s   non-2xx %s\n' "$1" \
    "$(awk '/Requests\/sec/ {print $2}' "$work/$1.txt")" \
    "$(awk '$1=="50%" {print $2}' "$work/$1.txt")" \
    "$(awk '$1=="90%" {print $2}' "$work/$1.txt")" \
    "$(awk '$1=="99%" {print $2}' "$work/$1.txt")" \
    "$(awk '/Non-2xx/ {print $5}' "$work/$1.txt")"
}

echo "machine: $(nproc) cores; binaries: $BIN; auth route: wrk -t1 -c4 -d${duration}s GET /api/v1/chart/1"
auth_latency "idle"

cat >"$work/flood.py" <<'PY'
import collections, json, sys, threading, time, urllib.error, urllib.request
url, token, flooders, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
tally, lock, salt = collections.Counter(), threading.Lock(), iter(range(10**9))
deadline = time.time() + seconds
def flood():
    while time.time() < deadline:
        with lock:
            n = next(salt)
        sql = f"SELECT id FROM orders WHERE id > {n}" + " UNION SELECT id FROM orders" * 1999
        body = json.dumps({"database_id": 1, "sql": sql}).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json",
                                                     "Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                key = str(response.status)
        except urllib.error.HTTPError as error:
            key = f"{error.code} {json.loads(error.read() or b'{}').get('kind')}"
        except Exception as error:
            key = type(error).__name__
        with lock:
            tally[key] += 1
threads = [threading.Thread(target=flood) for _ in range(flooders)]
for thread in threads: thread.start()
for thread in threads: thread.join()
print("flood answers:", dict(tally))
PY
python3 "$work/flood.py" http://127.0.0.1:28080/api/v1/sqllab/execute/ "$sql_token" "$flooders" "$((duration + 4))" &
flood=$!
sleep 2
auth_latency "during-sql-flood(${flooders})"
wait "$flood"
curl -fsS http://127.0.0.1:29180/metrics | grep -E '^datagate_sql_pool_rejected_total|^datagate_refusals_total.*sql_busy' || true
echo "datagate max RSS: $(awk '/VmHWM/ {print $2, $3}' /proc/"${pids[1]}"/status)"
