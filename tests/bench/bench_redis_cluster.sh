#!/bin/bash
# bench_redis_cluster.sh - the redis adapter's store/lookup/load throughput
# against a Redis Cluster (3 masters, 3 replicas) and against a single Redis
# node, in the same run, on loopback TCP, through bench_l2 (the adapter driven
# through the registry and runner, as in the daemon; every byte checked).
#
#   tests/bench/bench_redis_cluster.sh [BUILD_DIR] [-- bench_l2 options]
#   REPLICAS=0 tests/bench/bench_redis_cluster.sh      # 3 masters, no replicas
#
# Defaults: build/, then bench_l2's own defaults for chunk size and batch
# (4 MiB, 16 keys), --count 64 --reps 3, no file baseline. The single node
# and the cluster nodes run with the same settings (no persistence); the
# single node is measured first, then the cluster, then the single node again
# (both single-node figures are printed, so drift on a shared machine shows).
# Every server it starts is killed on exit, error or signal.
set -eu

BUILD=${1:-build}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
BENCH="$BUILD/bench/bench_l2"
[ -x "$BENCH" ] || { echo "no $BENCH: run 'make bench' first" >&2; exit 1; }
command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
    { echo "redis-server and redis-cli are needed (scripts/install-deps.sh)" >&2; exit 1; }

DIR=$(mktemp -d /tmp/kvcd-rcbench-XXXXXX)
PIDS=""
cleanup() {
    for p in $PIDS; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { # a port whose cluster bus port (+10000) is free as well
    local p
    while :; do
        p=$(( 10000 + RANDOM % 12000 ))
        if ! ss -Htan | awk '{print $4}' | grep -Eq ":($p|$((p + 10000)))\$"; then
            echo "$p"; return
        fi
    done
}

start() { # name port [args...]
    local n=$1 p=$2 i=0
    shift 2
    redis-server --port "$p" --bind 127.0.0.1 --protected-mode no --dir "$DIR" \
        --save "" --appendonly no --dbfilename "$n.rdb" --logfile "$DIR/$n.log" \
        --daemonize no "$@" &
    PIDS="$PIDS $!"
    disown $!
    until redis-cli -p "$p" ping >/dev/null 2>&1; do
        i=$((i + 1)); [ $i -lt 200 ] || { echo "redis $n did not start" >&2; exit 1; }
        sleep 0.05
    done
}

REPLICAS=${REPLICAS:-1}
ADDRS=""
for i in $(seq 0 $((3 * (1 + REPLICAS) - 1))); do
    p=$(free_port)
    start "c$i" "$p" --cluster-enabled yes --cluster-config-file "c$i.conf" \
        --cluster-node-timeout 1000 --repl-diskless-sync-delay 0
    ADDRS="$ADDRS 127.0.0.1:$p"
    if [ $i -eq 0 ]; then SEED=$p; fi
done
redis-cli --cluster create $ADDRS --cluster-replicas "$REPLICAS" --cluster-yes >"$DIR/create.log" 2>&1
i=0
until redis-cli -p "$SEED" cluster info | grep -q 'cluster_state:ok'; do
    i=$((i + 1)); [ $i -lt 400 ] || { echo "cluster not ok" >&2; exit 1; }
    sleep 0.05
done
SINGLE=$(free_port)
start single "$SINGLE"

OPTS="--count 64 --reps 3 --baseline-dir none $*"
ONE='{"type":"redis","host":"127.0.0.1","port":'$SINGLE'}'
CL='{"type":"redis","cluster":true,"host":"127.0.0.1","port":'$SEED'}'
echo "redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'): single node 127.0.0.1:$SINGLE; cluster of 3 masters with $REPLICAS replica(s) each, seeded at 127.0.0.1:$SEED"
echo "== single node: $BENCH --spec '$ONE' $OPTS"
# shellcheck disable=SC2086
"$BENCH" --spec "$ONE" $OPTS
echo "== cluster: $BENCH --spec '$CL' $OPTS"
# shellcheck disable=SC2086
"$BENCH" --spec "$CL" $OPTS
redis-cli -p "$SINGLE" flushall >/dev/null
echo "== single node again"
# shellcheck disable=SC2086
"$BENCH" --spec "$ONE" $OPTS
