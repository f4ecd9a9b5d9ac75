#!/usr/bin/env bash
# A/B of our own builds on the yardstick's load (../shared/yardstick): the
# same wrk generator, scenario and check as side-by-side.sh, without the Node
# design, builds alternating run by run (A B A B …) so that drift on a shared
# machine hits both alike. For "what did this lever buy"; the ratios to the
# Node design come from side-by-side.sh.
#
# Usage, from the project root:
#   bench/yardstick-ab.sh NAME=BIN_DIR[:US_ARGS] NAME=BIN_DIR[:US_ARGS] …
# Env: SCENARIO [created] CONNS [64] REPEAT [2] DURATION [20] WARMUP [5]
#   MAX_RATE [9000] WORK [/tmp/yardstick] YARDSTICK [../shared/yardstick]
#   US_ARGS are extra user-service flags; a build that needs its own
#   environment gets a BIN_DIR of wrapper scripts.
# Prints one line per run and a median per build; raw runs land in
# WORK/bench/out/webhook-load/ (results.tsv, labelled NAME), both services'
# metrics at the end of each run in WORK/bench/out/metrics-NAME-REP-{us,gw}.txt.
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,17p "$0" >&2; exit 2; }
YARDSTICK="$(cd "${YARDSTICK:-../shared/yardstick}" && pwd)"
SCENARIO="${SCENARIO:-created}"; CONNS="${CONNS:-64}"; REPEAT="${REPEAT:-2}"
DURATION="${DURATION:-20}"; WARMUP="${WARMUP:-5}"; MAX_RATE="${MAX_RATE:-9000}"
WORK="${WORK:-/tmp/yardstick}"
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
DB=postgres://postgres@127.0.0.1:5432/yardstick_userdata

mkdir -p "$WORK"
(cd "$YARDSTICK" && tar --exclude=node_modules --exclude=.venv --exclude=out -cf - .) | (cd "$WORK" && tar -xf -)
chmod -R u+w "$WORK"
SINCE="$(date -u +%Y%m%dT%H%M%SZ)"

PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; PIDS=(); }
trap stop_all EXIT
wait_http() { for _ in $(seq 1 240); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.5; done; echo "yardstick-ab: $1 never answered" >&2; exit 1; }

for rep in $(seq 1 "$REPEAT"); do
  for build in "$@"; do
    name="${build%%=*}"; rest="${build#*=}"; dir="${rest%%:*}"; us_args=""
    [ "$rest" != "$dir" ] && us_args="${rest#*:}"
    psql -X -q -h 127.0.0.1 -U postgres -c 'DROP DATABASE IF EXISTS yardstick_userdata WITH (FORCE)' \
      -c 'CREATE DATABASE yardstick_userdata' 2>/dev/null
    mkdir -p "$WORK/bench/out"
    # shellcheck disable=SC2086
    ( cd "$WORK/bench/out" && exec env DATABASE_URL=$DB "$dir/user-service" --listen 127.0.0.1:50071 \
        --metrics-listen 127.0.0.1:9471 $us_args ) > "$WORK/bench/out/user-service-$name.log" 2>&1 &
    US=$!; PIDS+=("$US"); sleep 1
    CLERK_WEBHOOK_SIGNING_SECRET=$SECRET "$dir/gateway" serve --listen 127.0.0.1:8091 \
      --user-service-url http://127.0.0.1:50071 --rate-limit 0 --metrics-listen 127.0.0.1:9472 \
      > "$WORK/bench/out/gateway-$name.log" 2>&1 &
    GW=$!; PIDS+=("$GW"); wait_http http://127.0.0.1:8091/readyz
    echo "=== $name $SCENARIO c=$CONNS rep $rep $(date -u +%H:%M:%S)" >&2
    (cd "$WORK" && RESET_SQL="TRUNCATE users, user_data, deleted_users, processed_events CASCADE" \
      bench/webhook-load/run.sh --url http://127.0.0.1:8091/webhooks/clerk --scenario "$SCENARIO" \
        --conns "$CONNS" --duration "$DURATION" --warmup "$WARMUP" --max-rate "$MAX_RATE" \
        --server-pid "$GW" --group "svc=$US" --label "$name" --secret $SECRET --db $DB) \
      || echo "yardstick-ab: run of $name failed" >&2
    # Both services' metrics at the end of the run (batch and group sizes, latencies by stage).
    for m in us:9471 gw:9472; do
      curl -fsS "http://127.0.0.1:${m#*:}/metrics" > "$WORK/bench/out/metrics-$name-$rep-${m%%:*}.txt" 2>/dev/null || true
    done
    stop_all
  done
done

python3 - "$WORK/bench/out/webhook-load/results.tsv" "$SINCE" <<'EOF'
import csv, statistics, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t") if r["stamp"] >= sys.argv[2]]
def svc(r):
    return next((float(w.split("=")[1]) for w in r["note"].split() if w.startswith("cpu_svc=")), 0.0)
by = {}
for r in rows:
    app = float(r["cpu_server"]) + svc(r)
    us = app / float(r["events_per_s"]) * 1e6 if float(r["events_per_s"]) else 0
    print(f'{r["label"]:>12} {r["scenario"]} c={r["conns"]} {float(r["events_per_s"]):8.0f} ev/s  '
          f'p99 {float(r["p99_ms"]):6.1f} ms  gw {float(r["cpu_server"]):.2f} svc {svc(r):.2f} '
          f'pg {float(r["cpu_postgres"]):.2f} busy {float(r["cpu_busy"]):.2f}  app {us:5.0f} us/ev  '
          f'{r["check"]} non2xx={r["non2xx"]} {r["note"]}')
    by.setdefault(r["label"], []).append((float(r["events_per_s"]), float(r["p99_ms"]), us))
for label, runs in by.items():
    med = lambda i: statistics.median(x[i] for x in runs)
    print(f'median {label:>12}: {med(0):8.0f} ev/s  p99 {med(1):6.1f} ms  app {med(2):5.0f} us/ev  ({len(runs)} runs)')
EOF
