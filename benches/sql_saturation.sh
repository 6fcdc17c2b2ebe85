#!/usr/bin/env bash
# Latency of an authentication-only route while SQL routes are saturated with heavy
# statements: 2,000-branch UNIONs over the protected `orders` table (about 56 KB each,
# every one distinct so none is a rewrite-cache hit), sent by FLOODERS concurrent clients
# to SQL Lab's execute route as CALLERS distinct users (flooder i is user flood-(i % CALLERS)).
# The auth-only route (GET /api/v1/chart/1 with a JWT) is measured with wrk before and
# during the flood; the flood's answers are tallied by status and kind (200, 503 sql_busy,
# 429 sql_caller_limit, ...). During the flood one more user (`probe`) sends the same heavy
# statements one after another: how many were admitted, and their latency, is the fair
# share seen from a caller who is not flooding.
#
# The demo upstream runs the SQL on SQLite, which caps a compound SELECT at 500 terms: a
# statement datagate admitted and forwarded comes back as the upstream's 400, tallied as
# `forwarded`. HONOR_RETRY_AFTER=1 makes refused flooders sleep for the `Retry-After` they
# got (default: retry at once, the adversarial case).
#
#   benches/sql_saturation.sh [DURATION_SECONDS] [FLOODERS] [CALLERS]
#   BIN=target/debug benches/sql_saturation.sh     # use an existing build (default: release)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
flooders=${2:-64}
callers=${3:-$flooders}
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null; }
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bins
  BIN=target/release
fi
work=$(mktemp -d)
pids=()
# Waits for the processes to exit, so the next run finds its ports free.
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
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
for i in $(seq 0 $((callers - 1))); do
  "$BIN/datagate" token --config "$work/datagate.yaml" --sub "flood-$i" --roles Gamma,sql_lab --org-role Viewer --ttl 1h
done >"$work/tokens.txt"
probe_token=$("$BIN/datagate" token --config "$work/datagate.yaml" --sub probe --roles Gamma,sql_lab --org-role Viewer --ttl 1h)

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

echo "machine: $(nproc) cores; binaries: $BIN; auth route: wrk -t1 -c4 -d${duration}s GET /api/v1/chart/1; $flooders flooders as $callers callers"
auth_latency "idle"

cat >"$work/flood.py" <<'PY'
import collections, json, statistics, sys, threading, time, urllib.error, urllib.request
url, tokens_file, probe_token = sys.argv[1], sys.argv[2], sys.argv[3]
flooders, seconds, honor = int(sys.argv[4]), float(sys.argv[5]), sys.argv[6] == "1"
tokens = open(tokens_file).read().split()
tally, lock, salt = collections.Counter(), threading.Lock(), iter(range(10**9))
retry_after = collections.Counter()
deadline = time.time() + seconds
def send(token):
    with lock:
        n = next(salt)
    sql = f"SELECT id FROM orders WHERE id > {n}" + " UNION SELECT id FROM orders" * 1999
    body = json.dumps({"database_id": 1, "sql": sql}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json",
                                                 "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return str(response.status), None
    except urllib.error.HTTPError as error:
        kind = json.loads(error.read() or b'{}').get('kind')
        if error.code == 400 and kind is None:
            return "forwarded", None   # SQLite's own refusal: datagate let it through
        return f"{error.code} {kind}", error.headers.get("Retry-After")
    except Exception as error:
        return type(error).__name__, None
def flood(index):
    token = tokens[index % len(tokens)]
    while time.time() < deadline:
        key, retry = send(token)
        with lock:
            tally[key] += 1
            if retry is not None:
                retry_after[retry] += 1
        if honor and retry is not None:
            time.sleep(min(float(retry), max(0.0, deadline - time.time())))
probe, probe_seconds = collections.Counter(), []
def probe_loop():
    time.sleep(1)
    while time.time() < deadline - 1:
        started = time.time()
        key, _ = send(probe_token)
        probe[key] += 1
        if key in ("200", "forwarded"):
            probe_seconds.append(time.time() - started)
threads = [threading.Thread(target=flood, args=(i,)) for i in range(flooders)]
threads.append(threading.Thread(target=probe_loop))
for thread in threads: thread.start()
for thread in threads: thread.join()
print("flood answers:", dict(tally), "Retry-After values:", dict(retry_after))
median = f"{statistics.median(probe_seconds) * 1000:.0f} ms" if probe_seconds else "-"
print("probe caller answers:", dict(probe), "median admitted latency:", median)
PY
python3 "$work/flood.py" http://127.0.0.1:28080/api/v1/sqllab/execute/ "$work/tokens.txt" "$probe_token" "$flooders" "$((duration + 4))" "${HONOR_RETRY_AFTER:-0}" &
flood=$!
sleep 2
auth_latency "during-sql-flood(${flooders})"
wait "$flood"
curl -fsS http://127.0.0.1:29180/metrics | grep -E '^datagate_sql_pool_rejected_total|^datagate_refusals_total.*sql_(busy|caller_limit)' || true
echo "datagate max RSS: $(awk '/VmHWM/ {print $2, $3}' /proc/"${pids[1]}"/status)"
# Refusals other than the pool's own, by status and reason (the audit stream is stderr).
grep -h '"decision":"deny"' "$work/datagate.log" | grep -v 'SQL statements queued or running\|work queue is full' |
  python3 -c 'import collections, json, sys
tally = collections.Counter((line["status"], line["reason"][:90]) for line in map(json.loads, sys.stdin))
for (status, reason), count in tally.most_common(5): print(f"other refusals: {count} x {status} {reason}")' || true
