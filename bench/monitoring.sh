#!/usr/bin/env bash
# What monitoring costs on the hot path: the shared bench's hot scenario (64 connections, cache
# hits) with monitoring off (the defaults: no monitoring listener, no access line, warn level)
# and on (the monitoring listener scraped every second, the access line at info level), twice
# each, alternating, in one session (ROUNDS=N for more). docs/performance.md quotes the ratio
# on/off.
#
#   bench/monitoring.sh                 (any option of the shared bench.py may follow)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRAPE="http://127.0.0.1:9108/metrics"
scraper() {   # bounded: at most 600 scrapes, one a second
  for _ in $(seq 600); do curl -fs -o /dev/null "$SCRAPE" || true; sleep 1; done
}
run() { echo "##### $1"; shift; "$@"; }
for round in $(seq "${ROUNDS:-2}"); do
  run "monitoring off (round $round)" \
    env BENCH_TARGETS=mediaproxy "$HERE/run.sh" --scenarios hot --no-ceiling --no-floor "$@"
  scraper & pid=$!
  run "monitoring on: /metrics scraped every second, access line at info (round $round)" \
    env BENCH_TARGETS=mediaproxy MEDIAPROXY_BENCH_ENV="MEDIAPROXY_MONITORING__LISTEN=tcp:9108:interface=127.0.0.1 MEDIAPROXY_MONITORING__ACCESS_LOG=true MEDIAPROXY_MONITORING__LOG_LEVEL=info" \
    "$HERE/run.sh" --scenarios hot --no-ceiling --no-floor "$@"
  kill "$pid" 2>/dev/null || true
done
