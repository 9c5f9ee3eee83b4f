#!/usr/bin/env bash
# A local Redis Cluster for the measurements (three masters, three
# replicas, no persistence), as the tests start one:
#
#   tools/redis_cluster.sh start DIR FIRST_PORT   # ports FIRST_PORT .. FIRST_PORT+5
#   tools/redis_cluster.sh stop DIR
#
# The seeds are then redis://127.0.0.1:FIRST_PORT/ and the next ones.
set -euo pipefail

cmd=${1:?start or stop}
dir=${2:?a directory for the nodes}

case "$cmd" in
start)
    first=${3:?the first port}
    mkdir -p "$dir"
    addrs=()
    for i in 0 1 2 3 4 5; do
        port=$((first + i))
        mkdir -p "$dir/$port"
        redis-server --port "$port" --bind 127.0.0.1 \
            --cluster-enabled yes --cluster-config-file nodes.conf \
            --cluster-node-timeout 1000 --save "" --appendonly no \
            --dir "$dir/$port" --logfile redis.log \
            --daemonize yes --pidfile "$dir/$port/redis.pid"
        addrs+=("127.0.0.1:$port")
    done
    for i in 0 1 2 3 4 5; do
        until redis-cli -p $((first + i)) ping >/dev/null 2>&1; do sleep 0.1; done
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
    until redis-cli -p "$first" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
    echo "cluster up: ${addrs[*]}"
    ;;
stop)
    for pidfile in "$dir"/*/redis.pid; do
        [[ -f "$pidfile" ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    sleep 0.5
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start DIR FIRST_PORT | stop DIR" >&2
    exit 2
    ;;
esac
