#!/usr/bin/env bash
# Runs the demo: the SQL-over-HTTP demo upstream on 127.0.0.1:8088 and datagate with
# deploy/datagate.example.yaml (proxy 127.0.0.1:8080, admin 127.0.0.1:9180), then prints
# ready-to-paste curl commands. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${CARGO_TARGET_DIR:-target}/debug"
if [ ! -x "$bin/datagate" ]; then
  # Measured on a 2-core machine: see README, *Quickstart*.
  echo "First build: compiling datagate and its ~430 dependencies (pingora, the AWS SDKs, sqlx, …)." >&2
  echo "Budget about 20 minutes on 2 cores (README, *Quickstart*); later runs start in seconds." >&2
fi
started=$SECONDS
cargo build --bins        # cargo's progress bar shows which crate is compiling
echo "built in $((SECONDS - started)) s" >&2
config=deploy/datagate.example.yaml

for port in 8080 8088 9180; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port $port is already in use; stop whatever runs there first" >&2
    exit 1
  fi
done

"$bin/datagate" check --config "$config"

"$bin/datagate-demo-upstream" --listen 127.0.0.1:8088 >/tmp/datagate-demo-upstream.log 2>&1 &
upstream_pid=$!
DATAGATE_LOG=warn "$bin/datagate" run --config "$config" >/tmp/datagate-demo-audit.log 2>/tmp/datagate-demo.log &
datagate_pid=$!
trap 'kill $upstream_pid $datagate_pid 2>/dev/null || true' EXIT INT TERM

for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:9180/readyz >/dev/null 2>&1 && break
  sleep 0.1
done

alice=$("$bin/datagate" token --config "$config" --sub alice --roles Gamma,sql_lab --org-role Viewer --ttl 8h)
bob=$("$bin/datagate" token --config "$config" --sub bob --roles sql_lab --ttl 8h)
carol=$("$bin/datagate" token --config "$config" --sub carol --roles Analyst --org-role Viewer --ttl 8h)
admin=$("$bin/datagate" token --config "$config" --sub root --roles Admin --org-role Admin --ttl 8h)

cat <<MSG

datagate is running: proxy http://127.0.0.1:8080, admin http://127.0.0.1:9180
(audit lines: /tmp/datagate-demo-audit.log, logs: /tmp/datagate-demo.log)

export ALICE='$alice'
export BOB='$bob'
export CAROL='$carol'
export ADMIN='$admin'

# allowed: Gamma may read charts (can_read on Chart)
curl -i http://127.0.0.1:8080/api/v1/chart/1 -H "Authorization: Bearer \$ALICE"

# 403: bob holds only sql_lab, which may run SQL but not delete charts (can_write on Chart)
curl -i -X DELETE http://127.0.0.1:8080/api/v1/chart/1 -H "Authorization: Bearer \$BOB"

# 401: anonymous callers (Public) may not read charts; a bad token is 401 too
curl -i http://127.0.0.1:8080/api/v1/chart/1
curl -i http://127.0.0.1:8080/api/v1/chart/1 -H "Authorization: Bearer not-a-jwt"

# Grafana-style query: every datasource in the body is checked (demo: Viewer may query 'demo')
curl -i http://127.0.0.1:8080/api/ds/query -H "Authorization: Bearer \$ALICE" -H 'Content-Type: application/json' \\
  -d '{"queries":[{"refId":"A","datasource":{"uid":"demo"},"rawSql":"SELECT id, amount FROM orders"}]}'
# 403: one of the datasources is not granted
curl -i http://127.0.0.1:8080/api/ds/query -H "Authorization: Bearer \$ALICE" -H 'Content-Type: application/json' \\
  -d '{"queries":[{"refId":"A","datasource":{"uid":"demo"},"rawSql":"SELECT 1"},{"refId":"B","datasource":{"uid":"finance"},"rawSql":"SELECT 1"}]}'

# row-level security: the same SQL, rewritten per caller (alice sees only her own orders)
curl -s http://127.0.0.1:8080/api/v1/sqllab/execute/ -H "Authorization: Bearer \$ALICE" -H 'Content-Type: application/json' \
  -d '{"sql":"SELECT id, tenant_id, amount FROM orders","database_id":1}'
curl -s 'http://127.0.0.1:8080/demo.json?sql=SELECT+count(*)+FROM+orders' -H "Authorization: Bearer \$ALICE"
# refused before the upstream, with a stable kind
curl -s http://127.0.0.1:8080/api/v1/sqllab/execute/ -H "Authorization: Bearer \$ALICE" -H 'Content-Type: application/json' \
  -d '{"sql":"SELECT * FROM sqlite_master"}'

# export controls: every built-in Superset role holds can_csv, so the default policies
# grant alice (Gamma) the download; carol (a custom Analyst role, no export permission)
# may query but not download, and the response guard also stops a download the route
# did not declare
curl -s 'http://127.0.0.1:8080/demo.csv?sql=SELECT+id+FROM+orders' -H "Authorization: Bearer \$ALICE"
curl -s 'http://127.0.0.1:8080/demo.csv?sql=SELECT+id+FROM+orders' -H "Authorization: Bearer \$CAROL"
curl -s 'http://127.0.0.1:8080/api/v1/chart/1?demo_content_type=text/csv' -H "Authorization: Bearer \$CAROL"
# what the caller may do, for a frontend to grey out buttons
curl -s http://127.0.0.1:8080/api/me/permissions -H "Authorization: Bearer \$ALICE"

# grants through the Grafana-compatible admin API (stored in deploy/data/datagate.db):
# bob gets Query on demo, then the same request succeeds
curl -s -X POST http://127.0.0.1:9180/api/users -H "Authorization: Bearer \$ADMIN" -d '{"login":"bob"}'
curl -s -X POST http://127.0.0.1:9180/api/access-control/datasources/demo/users/1 -H "Authorization: Bearer \$ADMIN" -d '{"permission":"Query"}'
curl -s http://127.0.0.1:9180/api/access-control/datasources/demo -H "Authorization: Bearer \$ADMIN"

# what would happen, without sending anything upstream
$bin/datagate explain --config $config --token "\$BOB" --method DELETE --path /api/v1/chart/1

# policy status and a reload (Admin only), metrics
curl -s http://127.0.0.1:9180/api/admin/policy/status -H "Authorization: Bearer \$ADMIN"
curl -s -X POST http://127.0.0.1:9180/api/admin/reload -H "Authorization: Bearer \$ADMIN"
curl -s http://127.0.0.1:9180/metrics | grep ^datagate_

Edit policies/*.csv and the next request sees the new revision. Ctrl-C stops the demo.
MSG
wait $datagate_pid
