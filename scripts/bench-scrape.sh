#!/bin/sh
# bench-scrape.sh - what scraping /metrics every second costs the data path.
#
#   scripts/bench-scrape.sh [--pairs N] [--build DIR] [-- BENCH_FRAMES FLAGS...]
#
# Runs build/bench/bench_frames N times without and N times with a scraper
# (curl GET /metrics once a second against the benchmark's own kvcd, started
# with --http-port through a wrapper), alternating off/on so both see the same
# machine noise, and prints the median kvcd STORE and LOAD throughput of each,
# their ratio, and the median time of one scrape. Default bench_frames flags:
# --sizes 4 --no-single --only kvcd-store,kvcd-load --reps 5 --csv.
#
# Then, because throughput on a shared machine varies more than the effect, it
# measures the cost directly: a kvcd with two L2 adapters answers 1000 scrapes
# back to back, and the daemon's CPU time (all its threads, from /proc) divided
# by 1000 is the CPU one scrape costs; at one scrape a second that is the
# fraction of one core the scraping takes from the data path, at most.
#
# Needs curl and python3. Run it on an otherwise idle machine.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
pairs=3
build=$here/build
while [ $# -gt 0 ]; do
    case "$1" in
    --pairs) pairs=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-scrape.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || set -- --sizes 4 --no-single --only kvcd-store,kvcd-load --reps 5
echo "command: scripts/bench-scrape.sh --pairs $pairs -- $*"

tmp=$(mktemp -d)
scraper=
cleanup() {
    [ -n "$scraper" ] && kill "$scraper" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$tmp/kvcd-http" <<EOF
#!/bin/sh
exec "$build/kvcd" "\$@" --http-port $port
EOF
chmod +x "$tmp/kvcd-http"

scrape_loop() {
    while :; do
        curl -s -o /dev/null -w '%{http_code} %{time_total} %{size_download}\n' \
            "http://127.0.0.1:$port/metrics" >> "$tmp/scrapes" 2>/dev/null || true
        sleep 1
    done
}

: > "$tmp/scrapes"
i=0
while [ "$i" -lt "$pairs" ]; do
    "$build/bench/bench_frames" --csv "$@" "$build/kvcd" | sed 's/^/off,/' >> "$tmp/csv"
    scrape_loop &
    scraper=$!
    "$build/bench/bench_frames" --csv "$@" "$tmp/kvcd-http" | sed 's/^/on,/' >> "$tmp/csv"
    kill "$scraper"; wait "$scraper" 2>/dev/null || true
    scraper=
    i=$((i + 1))
done

python3 - "$tmp/csv" "$tmp/scrapes" <<'EOF'
import csv, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    mode, rest = line.split(",", 1)
    f = rest.strip().split(",")
    if f[0] != "throughput":
        continue
    rows.setdefault((f[1], f[2], f[3]), {}).setdefault(mode, []).append(float(f[5]))
print("%-6s %5s %5s %12s %12s %8s  (kvcd GB/s, median of runs)" % ("op", "MiB", "batch", "no scrape", "scrape 1/s", "ratio"))
for (op, mib, batch), m in sorted(rows.items()):
    off, on = statistics.median(m["off"]), statistics.median(m["on"])
    print("%-6s %5s %5s %12.3f %12.3f %8.4f   off %s  on %s" % (op, mib, batch, off, on, on / off,
          " ".join("%.3f" % x for x in m["off"]), " ".join("%.3f" % x for x in m["on"])))
sc = [l.split() for l in open(sys.argv[2])] if len(sys.argv) > 2 else []
ok = [s for s in sc if s[0] == "200"]
if ok:
    print("scrapes: %d (%d answered 200), median %.2f ms, %d bytes" % (
        len(sc), len(ok), 1000 * statistics.median(float(s[1]) for s in ok), int(ok[-1][2])))
EOF

"$build/kvcd" --endpoint "ipc://$tmp/cost.sock" --l1-size-gb 0.0625 --http-port "$port" \
    --l2-adapter '{"type":"mock"}' --l2-adapter '{"type":"mock"}' 2>"$tmp/cost.log" &
kpid=$!
python3 - "$kpid" "$port" <<'EOF'
import os, sys, time, urllib.request
pid, port = int(sys.argv[1]), int(sys.argv[2])
url = "http://127.0.0.1:%d/metrics" % port
for _ in range(100):
    try:
        urllib.request.urlopen(url).read(); break
    except OSError:
        time.sleep(0.05)
def cpu():
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
n, c0, t0 = 1000, cpu(), time.monotonic()
for _ in range(n):
    body = urllib.request.urlopen(url).read()
c1, t1 = cpu(), time.monotonic()
print("cost: %d scrapes of %d bytes: kvcd CPU %.3f ms per scrape, %.2f ms wall per scrape;"
      " at 1 scrape/s that is %.3f%% of one core" % (n, len(body), 1000 * (c1 - c0) / n,
      1000 * (t1 - t0) / n, 100 * (c1 - c0) / n))
EOF
kill "$kpid"; wait "$kpid" || true
