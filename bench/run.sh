#!/usr/bin/env bash
# mediaproxy against its peers, in one shared-bench session.
#
#   bench/run.sh                      all scenarios, thumbor then mediaproxy (+ nginx ceiling
#                                     and bare-Twisted floor in the hot scenario)
#   bench/run.sh --scenarios hot      any option of the shared bench.py (see its --help)
#   MEDIAPROXY_BENCH_ENV='MEDIAPROXY_CACHE__REDIS__URL=redis://127.0.0.1:16379/0' bench/run.sh
#                                     extra settings for the proxy under test
#   BENCH_TARGETS=mediaproxy bench/run.sh   only the proxy
#
# The shared harness lives in ../shared/bench (read-only for developers): it is copied to
# $BENCH_WORK (default /tmp/mediaproxy-bench) and set up there. mediaproxy runs under twistd on
# 127.0.0.1:8080 in front of the harness's nginx origin (127.0.0.1:18080), with its pid file
# handed to the harness so CPU and RSS are sampled for exactly that process.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SHARED="${SHARED_BENCH:-$ROOT/../shared/bench}"
WORK="${BENCH_WORK:-/tmp/mediaproxy-bench}"
TARGETS="${BENCH_TARGETS:-thumbor mediaproxy}"
RUN="$WORK/run/mediaproxy"

[ -d "$SHARED" ] || { echo "no shared bench at $SHARED (set SHARED_BENCH)" >&2; exit 1; }
if [ ! -x "$WORK/run.sh" ]; then
  mkdir -p "$WORK"
  cp -r "$SHARED/." "$WORK/"
  chmod -R u+w "$WORK"
fi
(cd "$WORK" && ./setup.sh >/dev/null && ./peers.sh start >/dev/null)
"$ROOT/dev" setup >/dev/null

stop_proxy() {
  if [ -f "$RUN/twistd.pid" ]; then
    kill "$(cat "$RUN/twistd.pid")" 2>/dev/null || true
    for _ in $(seq 50); do [ -f "$RUN/twistd.pid" ] || break; sleep 0.1; done
  fi
}
trap stop_proxy EXIT
mkdir -p "$RUN"
stop_proxy
rm -f "$RUN"/twistd.log*   # twistd rotates every 1 MB and renames every old file at each rotation
# shellcheck disable=SC2086
env MEDIAPROXY_BACKEND__URL=http://127.0.0.1:18080 MEDIAPROXY_MONITORING__LOG_LEVEL=warn \
    ${MEDIAPROXY_BENCH_ENV:-} \
    "$ROOT/.venv/bin/twistd" --pidfile "$RUN/twistd.pid" --logfile "$RUN/twistd.log" \
    mediaproxy --listen tcp:8080:interface=127.0.0.1
probe="http://127.0.0.1:8080/media/uploads/photo_1920.jpg?w=300&h=200&fit=inside&fmt=jpeg"
for _ in $(seq 100); do
  curl -fs -o /dev/null "$probe" && break
  sleep 0.1
done
curl -fs -o /dev/null "$probe" || { echo "mediaproxy did not start:" >&2; cat "$RUN/twistd.log" >&2; exit 1; }

cd "$WORK"
for target in $TARGETS; do
  echo "=== $target"
  if [ "$target" = mediaproxy ]; then
    MEDIAPROXY_PIDFILE="$RUN/twistd.pid" ./run.sh mediaproxy "$@"
  else
    ./run.sh "$target" "$@"
  fi
done
