#!/usr/bin/env bash
# Admin writes with a large grants store: a store seeded with GRANTS datasource grants
# (1,000 users × GRANTS/1,000 datasources, written straight into the store's tables), two
# replicas A and B on it, then WRITES grant changes through A's Grafana-compatible
# endpoint `POST /api/access-control/datasources/{uid}/users/{id}`, one at a time.
# Measured per write: its latency at A from request to response (the response is sent
# after A serves the new snapshot), and the propagation to B (from A's response until B's
# policy status shows the new store revision). Also each replica's resident memory with
# the store loaded, against the same replicas on an empty store, and how the snapshots
# were built (B must have applied every write incrementally).
#
#   benches/admin_write.sh [GRANTS] [WRITES] [sqlite|postgres]
#   BIN=target/release benches/admin_write.sh      # use an existing build (default: build release)
#   PostgreSQL: DATAGATE_BENCH_PG_URL (or DATAGATE_TEST_PG_URL) names a server; a fresh
#   database is created there and dropped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
grants=${1:-100000}
writes=${2:-200}
backend=${3:-sqlite}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bins
  BIN=${CARGO_TARGET_DIR:-target}/release
fi
work=$(mktemp -d)
pids=()
pg_database=
pg_url=${DATAGATE_BENCH_PG_URL:-${DATAGATE_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/test}}
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$pg_database" ]; then psql -q "$pg_url" -c "DROP DATABASE IF EXISTS $pg_database" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

case "$backend" in
  sqlite) store_url="sqlite:$work/store.db" ;;
  postgres)
    pg_database="datagate_bench_$$"
    psql -q "$pg_url" -c "CREATE DATABASE $pg_database" >/dev/null
    store_url="${pg_url%/*}/$pg_database" ;;
  *) echo "backend must be sqlite or postgres" >&2; exit 2 ;;
esac

# config NAME PROXY_PORT ADMIN_PORT
config() {
  sed -e "s/127.0.0.1:8080/127.0.0.1:$2/" -e "s/127.0.0.1:9180/127.0.0.1:$3/" \
      -e 's/127.0.0.1:8088/127.0.0.1:38088/' -e 's#output: stdout#output: stderr#' \
      -e 's#\.\./casbin_model.conf#'"$PWD"'/casbin_model.conf#' -e 's#\.\./policies#'"$PWD"'/policies#' \
      -e 's#example-secrets/#'"$PWD"'/deploy/example-secrets/#' \
      -e 's#url: sqlite:data/datagate.db#url: '"$store_url"'#' \
      -e 's#poll_interval: .*#poll_interval: 200ms#' \
      deploy/datagate.example.yaml >"$work/$1.yaml"
}
config a 38080 39180
config b 38081 39181
pid_a= pid_b=
# start NAME ADMIN_PORT → sets pid_NAME
start() {
  DATAGATE_LOG=error "$BIN/datagate" run --config "$work/$1.yaml" >>"$work/$1.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  eval "pid_$1=$pid"
  for _ in $(seq 1 3000); do
    curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "datagate $1 did not become ready" >&2; cat "$work/$1.log" >&2; exit 1
}
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

start a 39180          # creates and migrates the store
start b 39181
empty_a=$(rss "$pid_a"); empty_b=$(rss "$pid_b")
stop_all

seed_started=$(date +%s.%N)
if [ "$backend" = sqlite ]; then
  python3 - "$work/store.db" "$grants" <<'PY'
import sqlite3, sys, time
path, grants = sys.argv[1], int(sys.argv[2])
users, now = 1000, int(time.time() * 1000)
db = sqlite3.connect(path)
db.executemany("INSERT INTO users (uid, login, created_at) VALUES (?, ?, ?)",
               [(f"bench-user-{i}", f"bench{i}", now) for i in range(users)])
ids = [row[0] for row in db.execute("SELECT id FROM users ORDER BY id")]
db.executemany(
    "INSERT INTO datasource_grants (datasource_uid, grantee_kind, grantee, permission) VALUES (?, 'user', ?, 'Query')",
    ((f"bench-ds-{n // users}", str(ids[n % users])) for n in range(grants)))
# Seeded behind datagate's back: a revision with no change record, so the replicas load
# the whole store at start-up (the writes after it go through the change log).
db.execute("UPDATE store_revision SET revision = revision + 1")
db.commit()
PY
else
  psql -q "$store_url" <<SQL >/dev/null
INSERT INTO users (uid, login, created_at)
  SELECT 'bench-user-' || i, 'bench' || i, 0 FROM generate_series(0, 999) AS i;
INSERT INTO datasource_grants (datasource_uid, grantee_kind, grantee, permission)
  SELECT 'bench-ds-' || (n / 1000), 'user', ((SELECT min(id) FROM users) + (n % 1000))::text, 'Query'
  FROM generate_series(0, $grants - 1) AS n;
UPDATE store_revision SET revision = revision + 1;
SQL
fi
echo "seeded $grants grants in $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $seed_started }") s"

started=$(date +%s.%N)
start a 39180
echo "replica A ready in $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $started }") s (store loaded, snapshot built in full)"
start b 39181
loaded_a=$(rss "$pid_a"); loaded_b=$(rss "$pid_b")
admin=$("$BIN/datagate" token --config "$work/a.yaml" --sub root --roles Admin --org-role Admin --ttl 1h)

python3 - "$admin" "$writes" >"$work/times.txt" <<'PY'
import http.client, json, sys, time
admin, writes = sys.argv[1], int(sys.argv[2])
a = http.client.HTTPConnection("127.0.0.1", 39180)
b = http.client.HTTPConnection("127.0.0.1", 39181)
auth = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
def status(connection):
    connection.request("GET", "/api/admin/policy/status", headers=auth)
    return json.loads(connection.getresponse().read())
for n in range(writes):
    level = "Query" if n % 2 else "Edit"
    started = time.perf_counter()
    a.request("POST", "/api/access-control/datasources/demo/users/1",
              body=json.dumps({"permission": level}), headers=auth)
    response = a.getresponse()
    body = response.read()
    answered = time.perf_counter()
    if response.status != 200:
        sys.exit(f"write {n} failed: {response.status} {body!r}")
    revision = status(a)["store_revision"]
    deadline = answered + 30
    while status(b)["store_revision"] < revision:
        if time.perf_counter() > deadline:
            sys.exit(f"replica B never reached store revision {revision}")
        time.sleep(0.0005)
    reached = time.perf_counter()
    print(f"{(answered - started) * 1000:.3f} {(reached - answered) * 1000:.3f}")
print(json.dumps({"a": status(a), "b": status(b)}), file=sys.stderr)
PY
summary() {
  sort -n | awk -v what="$1" '
    { v[NR] = $1; sum += $1 }
    END { printf "%s: p50 %.1f ms, p99 %.1f ms, min %.1f ms, max %.1f ms, mean %.1f ms (%d writes)\n",
          what, v[int(NR * 0.5 + 0.5)], v[int(NR * 0.99 + 0.5)], v[1], v[NR], sum / NR, NR }'
}
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); binaries: $BIN"
echo "store: $backend, $grants grants; $writes writes"
awk '{print $1}' "$work/times.txt" | summary "write latency at A"
awk '{print $2}' "$work/times.txt" | summary "propagation to B (after A's response)"
echo "RSS, empty store → $grants grants: A $((empty_a / 1024)) → $((loaded_a / 1024)) MiB, B $((empty_b / 1024)) → $((loaded_b / 1024)) MiB (after the writes: A $(( $(rss "$pid_a") / 1024 )) MiB, B $(( $(rss "$pid_b") / 1024 )) MiB)"
for name in a b; do
  port=$([ "$name" = a ] && echo 39180 || echo 39181)
  builds=$(curl -fsS "http://127.0.0.1:$port/metrics" | grep '^datagate_snapshot_builds_total' | tr '\n' ' ')
  echo "replica $name snapshot builds since start-up: ${builds:-none}"
done
