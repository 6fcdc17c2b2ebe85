#!/usr/bin/env bash
# Idle CPU of two datagate processes side by side, each with the repository's policies plus
# 100,000 generated grant lines (and the example config's SQLite store, polled every
# 500 ms), one with `policy.watch: true`, one with `watch: false`: CPU ticks from
# /proc/PID/stat over 60 s after start-up.
#
#   benches/idle_cpu.sh
#   BIN=target/debug benches/idle_cpu.sh      # use an existing build (default: release)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bins
  BIN=target/release
fi
work=$(mktemp -d)
mkdir -p "$work/policies"
cp policies/*.csv policies/*.yaml "$work/policies/"
python3 -c "
for i in range(100000):
    print(f'p, user:u{i}, datasources:uid:ds{i%1000}, Query')" > "$work/policies/90-bulk.csv"
pids=()
for watch in true false; do
  port=$([ $watch = true ] && echo 4 || echo 5)
  sed -e "s/127.0.0.1:8080/127.0.0.1:${port}8080/" -e "s/127.0.0.1:9180/127.0.0.1:${port}9180/" \
    -e 's#output: stdout#output: stderr#' \
    -e 's#\.\./casbin_model.conf#'"$PWD"'/casbin_model.conf#' -e 's#\.\./policies#'"$work"'/policies#' \
    -e 's#example-secrets/#'"$PWD"'/deploy/example-secrets/#' \
    -e 's#sqlite:data/datagate.db#sqlite:'"$work"'/store-'$watch'.db#' \
    -e "s/^  watch: .*/  watch: $watch/" \
    deploy/datagate.example.yaml >"$work/datagate-$watch.yaml"
  grep -q "watch: $watch" "$work/datagate-$watch.yaml" || { echo "no watch key"; exit 1; }
  DATAGATE_LOG=error "$BIN/datagate" run --config "$work/datagate-$watch.yaml" >"$work/log-$watch" 2>&1 &
  pids+=($!)
done
for port in 4 5; do
  for _ in $(seq 1 600); do curl -fsS http://127.0.0.1:${port}9180/readyz >/dev/null 2>&1 && break; sleep 0.1; done
done
sleep 5
ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
a0=$(ticks ${pids[0]}); b0=$(ticks ${pids[1]})
sleep 60
a1=$(ticks ${pids[0]}); b1=$(ticks ${pids[1]})
hz=$(getconf CLK_TCK)
echo "watch: true : $(( a1 - a0 )) ticks in 60 s = $(awk -v t=$((a1-a0)) -v hz=$hz 'BEGIN{printf "%.3f", 100*t/hz/60}') % of a core"
echo "watch: false: $(( b1 - b0 )) ticks in 60 s = $(awk -v t=$((b1-b0)) -v hz=$hz 'BEGIN{printf "%.3f", 100*t/hz/60}') % of a core"
curl -fsS http://127.0.0.1:49180/metrics | grep '^datagate_policy_reloads_total' || true
kill "${pids[@]}"
rm -rf "$work"
