#!/usr/bin/env bash
# Alternating A/B runs of userdata-bench: the same load generator against two
# sets of service binaries (e.g. the previous release and the current one),
# A B A B …, so that drift on a shared machine hits both alike.
#
# Usage: bench/ab.sh A_BIN_DIR B_BIN_DIR [userdata-bench options…]
# Env: REPEAT (runs of each, default 2), OUT (results folder, default
# bench/results/ab-<UTC time>), BENCH (the userdata-bench binary, default
# $CARGO_TARGET_DIR/release/userdata-bench or target/release/userdata-bench),
# B_ARGS (extra options for the B runs only, e.g. --no-propagation).
# Each run writes OUT/<a|b>-<n>.json and .txt.
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,12p "$0" >&2; exit 2; }
A="$1"; B="$2"; shift 2
REPEAT="${REPEAT:-2}"
BENCH="${BENCH:-${CARGO_TARGET_DIR:-target}/release/userdata-bench}"
OUT="${OUT:-bench/results/ab-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
for n in $(seq 1 "$REPEAT"); do
  for side in a b; do
    if [ "$side" = a ]; then dir="$A"; extra=""; else dir="$B"; extra="${B_ARGS:-}"; fi
    echo "=== $side run $n ($dir) $(date -u +%H:%M:%S)" >&2
    # shellcheck disable=SC2086
    "$BENCH" --bin-dir "$dir" --json "$OUT/$side-$n.json" "$@" $extra > "$OUT/$side-$n.txt"
  done
done
echo "results in $OUT" >&2
