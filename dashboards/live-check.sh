#!/usr/bin/env bash
# Proves the dashboards against live services: starts Prometheus (Debian's
# `prometheus` package) on 127.0.0.1 with a temporary data directory, scraping the
# given targets every second with Palisade's rules loaded; waits up to 10 s for every
# target to be up; lints each target's /metrics with `promtool check metrics`; lets
# it scrape for --settle seconds; then asserts that every panel query of both
# dashboards returns data through the HTTP API (`render --check`), and with --png
# draws the key panels into dashboards/png/.
#
# usage: dashboards/live-check.sh [--settle SECONDS] [--skip-demo] [--png] HOST:PORT...
#
# --skip-demo leaves out the queries that read the order demo's own series
# (catalog::DEMO_CONTRACT), for targets that are not the demo (the stand-in).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

settle=20
skip_demo=()
png=0
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --settle) settle="$2"; shift 2 ;;
        --skip-demo) skip_demo=(--skip-demo); shift ;;
        --png) png=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        -*) echo "live-check.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
if [ ${#targets[@]} -eq 0 ]; then
    echo "live-check.sh: give the targets to scrape, e.g. 127.0.0.1:9101 127.0.0.1:9102" >&2
    exit 2
fi
for t in "${targets[@]}"; do
    [[ "$t" =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]] || { echo "live-check.sh: \`$t\` is not HOST:PORT" >&2; exit 2; }
done
for tool in prometheus promtool curl; do
    command -v "$tool" >/dev/null || { echo "live-check.sh: $tool not found (apt-get install -y prometheus curl)" >&2; exit 1; }
done

# A free port on 127.0.0.1 for Prometheus.
port=""
for p in $(seq 19090 19190); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
[ -n "$port" ] || { echo "live-check.sh: no free port in 19090-19190" >&2; exit 1; }
url="http://127.0.0.1:$port"

tmp="$(mktemp -d -t palisade-live-check.XXXXXX)"
prom_pid=""
cleanup() {
    if [ -n "$prom_pid" ]; then kill "$prom_pid" 2>/dev/null || true; wait "$prom_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

{
    echo "global:"
    echo "  scrape_interval: 1s"
    echo "  evaluation_interval: 1s"
    echo "rule_files:"
    echo "  - $here/rules/palisade.rules.yml"
    echo "scrape_configs:"
    echo "  - job_name: palisade"
    echo "    static_configs:"
    echo "      - targets:"
    for t in "${targets[@]}"; do echo "          - '$t'"; done
} > "$tmp/prometheus.yml"
promtool check config "$tmp/prometheus.yml" >/dev/null

prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
    --web.listen-address="127.0.0.1:$port" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
prom_pid=$!
echo "==> Prometheus on $url, scraping ${targets[*]} every second"

want=${#targets[@]}
up=0
for _ in $(seq 1 20); do
    sleep 0.5
    answer="$(curl -fsS "$url/api/v1/query" --data-urlencode "query=count(up == 1)" 2>/dev/null || true)"
    if [[ "$answer" == *"\"$want\"]"* ]]; then up=1; break; fi
done
if [ "$up" -ne 1 ]; then
    echo "live-check.sh: not every target was up within 10 s" >&2
    curl -fsS "$url/api/v1/targets" >&2 || cat "$tmp/prometheus.log" >&2
    exit 1
fi
echo "==> all $want targets up"

failed=0
for t in "${targets[@]}"; do
    curl -fsS "http://$t/metrics" >"$tmp/metrics.txt"
    if lint="$(promtool check metrics <"$tmp/metrics.txt" 2>&1)" && [ -z "$lint" ]; then
        echo "==> promtool check metrics $t: clean"
    else
        echo "FAIL promtool check metrics $t:"; echo "$lint"; failed=1
    fi
done

echo "==> scraping for ${settle}s"
sleep "$settle"

render=(cargo run --quiet -p palisade-dashboards --bin render --)
[ -n "${RENDER_BIN:-}" ] && render=("$RENDER_BIN")
"${render[@]}" --check --prometheus "$url" --last "${settle}s" --scrape-interval 1s "${skip_demo[@]}" || failed=1
if [ "$png" -eq 1 ]; then
    "${render[@]}" --prometheus "$url" --last "${settle}s" --scrape-interval 1s || failed=1
fi

if [ "$failed" -ne 0 ]; then
    echo "live-check.sh: FAILED" >&2
    exit 1
fi
echo "live-check.sh: every panel query returned data"
