#!/usr/bin/env bash
# Hot-hit throughput of the Redis and file layers (the memory layer off), with srcset, right
# after bench/run.sh measured thumbor's result-storage hit, the memory layer, the nginx ceiling
# and the bare-Twisted floor: run both in one session (bench/run.sh && bench/layers.sh).
#
#   bench/layers.sh                 (any option of the shared bench.py may follow)
#
# memory: the defaults. redis: the memory layer off, the harness's Redis (127.0.0.1:16379).
# file: the memory layer off, a fresh cache directory.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_DIR="$(mktemp -d /tmp/mediaproxy-bench-file.XXXXXX)"
trap 'rm -rf "$CACHE_DIR"' EXIT
run() { echo "##### $1"; shift; "$@"; }
run "mediaproxy (redis layer)" \
  env BENCH_TARGETS=mediaproxy MEDIAPROXY_BENCH_ENV="MEDIAPROXY_CACHE__MEMORY__ENABLED=false MEDIAPROXY_CACHE__REDIS__URL=redis://127.0.0.1:16379/0" \
  "$HERE/run.sh" --scenarios hot,srcset --no-ceiling --no-floor "$@"
run "mediaproxy (file layer)" \
  env BENCH_TARGETS=mediaproxy MEDIAPROXY_BENCH_ENV="MEDIAPROXY_CACHE__MEMORY__ENABLED=false MEDIAPROXY_CACHE__FILE__DIR=$CACHE_DIR" \
  "$HERE/run.sh" --scenarios hot,srcset --no-ceiling --no-floor "$@"
