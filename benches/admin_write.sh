#!/usr/bin/env bash
# The latency of one admin write with a large grants store: a SQLite store seeded with
# GRANTS datasource grants (1,000 users × GRANTS/1,000 datasources, written straight into
# the store's tables), then WRITES grant changes through the Grafana-compatible endpoint
# `POST /api/access-control/datasources/{uid}/users/{id}`, one at a time, each timed by curl
# from request to response (the response is sent after the new snapshot serves).
#
#   benches/admin_write.sh [GRANTS] [WRITES]
#   BIN=target/debug benches/admin_write.sh      # use an existing build (default: release)
set -euo pipefail
cd "$(dirname "$0")/.."
grants=${1:-100000}
writes=${2:-20}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bins
  BIN=target/release
fi
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

sed -e 's/127.0.0.1:8080/127.0.0.1:38080/' -e 's/127.0.0.1:9180/127.0.0.1:39180/' \
    -e 's/127.0.0.1:8088/127.0.0.1:38088/' -e 's#output: stdout#output: stderr#' \
    -e 's#\.\./casbin_model.conf#'"$PWD"'/casbin_model.conf#' -e 's#\.\./policies#'"$PWD"'/policies#' \
    -e 's#example-secrets/#'"$PWD"'/deploy/example-secrets/#' \
    -e 's#sqlite:data/datagate.db#sqlite:'"$work"'/store.db#' \
    deploy/datagate.example.yaml >"$work/datagate.yaml"
start() {
  DATAGATE_LOG=error "$BIN/datagate" run --config "$work/datagate.yaml" >>"$work/datagate.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    curl -fsS http://127.0.0.1:39180/readyz >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "datagate did not become ready" >&2; cat "$work/datagate.log" >&2; exit 1
}
start            # creates and migrates the store
kill "$pid"; wait "$pid" 2>/dev/null || true
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
    [(f"bench-ds-{n // users}", str(ids[n % users])) for n in range(grants)])
db.execute("UPDATE store_revision SET revision = revision + 1")
db.commit()
print("seeded", db.execute("SELECT count(*) FROM datasource_grants").fetchone()[0], "grants")
PY
start
admin=$("$BIN/datagate" token --config "$work/datagate.yaml" --sub root --roles Admin --org-role Admin --ttl 1h)
echo "machine: $(nproc) cores; binaries: $BIN; store: SQLite, $grants grants; $writes writes"
for n in $(seq 1 "$writes"); do
  level=$([ $((n % 2)) = 0 ] && echo Query || echo Edit)
  curl -sS -o "$work/answer.json" -w '%{http_code} %{time_total}\n' -X POST \
    -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
    -d "{\"permission\": \"$level\"}" \
    "http://127.0.0.1:39180/api/access-control/datasources/demo/users/1" >>"$work/times.txt"
done
if grep -qv '^200 ' "$work/times.txt"; then
  echo "a write failed:" >&2; cat "$work/times.txt" "$work/answer.json" >&2; exit 1
fi
awk '{print $2 * 1000}' "$work/times.txt" | sort -n | awk '
  { v[NR] = $1; sum += $1 }
  END { printf "one write: min %.0f ms, median %.0f ms, max %.0f ms, mean %.0f ms\n",
        v[1], v[int((NR + 1) / 2)], v[NR], sum / NR }'
echo "datagate max RSS: $(awk '/VmHWM/ {print $2, $3}' /proc/"$pid"/status)"
