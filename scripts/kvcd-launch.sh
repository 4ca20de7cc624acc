#!/bin/sh
# kvcd-launch.sh - start kvcd next to an inference server.
#
#   kvcd-launch.sh [--pid-file FILE] [--wait-timeout SECONDS] [--] [KVCD FLAGS...]
#
# Starts kvcd with the given flags, waits until it answers PING on the endpoint
# it binds (from --endpoint, --host/--port or a --config file, as kvcd itself
# reads them; exit 1 if it never answers within the timeout, or kvcd's own
# status if it dies first or refuses its flags), writes the pid file, prints the
# settings an inference server needs (and, with --http-port, the Prometheus
# scrape config for kvcd's /metrics), then stays in the foreground:
# SIGTERM/SIGINT/SIGHUP are forwarded to kvcd, and the script exits with kvcd's
# exit status once it has stopped (removing the pid file).
#
# The binaries come from $KVCD_BIN / $KVCDCTL_BIN, else next to this script's
# build directory, else $PATH.
set -u

pid_file=
wait_timeout=30
while [ $# -gt 0 ]; do
    case "$1" in
    --pid-file) pid_file=$2; shift 2 ;;
    --wait-timeout) wait_timeout=$2; shift 2 ;;
    --help|-h)
        sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
        exit 0 ;;
    --) shift; break ;;
    *) break ;;
    esac
done

here=$(cd "$(dirname "$0")" && pwd)
pick() {
    # $1: env value, $2: name
    if [ -n "$1" ]; then echo "$1"
    elif [ -x "$here/../build/$2" ]; then echo "$here/../build/$2"
    else command -v "$2" || echo "$2"
    fi
}
kvcd=$(pick "${KVCD_BIN:-}" kvcd)
kvcdctl=$(pick "${KVCDCTL_BIN:-}" kvcdctl)

# The endpoint kvcd will bind, from kvcd's own parser: the flags and the
# --config file they name (its "endpoint", "host", "port"). A bad flag stops
# here with kvcd's message and status.
endpoint=$("$kvcd" "$@" --print-endpoint) || {
    rc=$?
    echo "kvcd-launch: kvcd refused its flags (status $rc)" >&2
    exit "$rc"
}
# The HTTP endpoint, for the scrape config printed below.
http_host=127.0.0.1 http_port= prev=
for a in "$@"; do
    case "$prev" in
    --http-host) http_host=$a ;;
    --http-port) http_port=$a ;;
    esac
    case "$a" in
    --http-host=*) http_host=${a#--http-host=} ;;
    --http-port=*) http_port=${a#--http-port=} ;;
    esac
    prev=$a
done

"$kvcd" "$@" &
child=$!

cleanup() {
    [ -n "$pid_file" ] && rm -f "$pid_file"
}

forward() {
    kill -TERM "$child" 2>/dev/null
}
trap forward TERM INT HUP

# Wait for PING.
start=$(date +%s)
until "$kvcdctl" -e "$endpoint" -t 500 ping >/dev/null 2>&1; do
    if ! kill -0 "$child" 2>/dev/null; then
        wait "$child"
        rc=$?
        echo "kvcd-launch: kvcd exited with status $rc before answering PING" >&2
        exit "$rc"
    fi
    if [ $(( $(date +%s) - start )) -ge "$wait_timeout" ]; then
        echo "kvcd-launch: kvcd did not answer PING on $endpoint within ${wait_timeout}s" >&2
        kill -KILL "$child" 2>/dev/null
        wait "$child" 2>/dev/null
        exit 1
    fi
    sleep 0.1
done

if [ -n "$pid_file" ]; then
    echo "$child" > "$pid_file.tmp.$$" && mv "$pid_file.tmp.$$" "$pid_file"
fi
echo "kvcd is ready (pid $child)"
echo "KVCD_ENDPOINT=$endpoint"
echo "# Python: kvcd_client.Client(\"$endpoint\")   C: kvcd_client_connect(\"$endpoint\", ...)"
if [ -n "$http_port" ] && [ "$http_port" != 0 ]; then
    cat <<EOF
KVCD_METRICS_URL=http://$http_host:$http_port/metrics
# readiness probe: GET /healthcheck   liveness probe: GET /livez
# Prometheus (prometheus.yml):
#   scrape_configs:
#     - job_name: kvcd
#       scrape_interval: 15s
#       static_configs:
#         - targets: ['$http_host:$http_port']
EOF
fi

# wait returns early when a trapped signal arrives; loop until kvcd is gone.
while :; do
    wait "$child"
    rc=$?
    kill -0 "$child" 2>/dev/null || break
done
cleanup
exit "$rc"
