# Shared by the fault scripts: builds the release binaries once and runs
# svix-storm, which starts user-service and the gateway itself (--spawn) on a
# fresh database, injects the fault, checks the final state over gRPC and
# prints one line:
#   events N, attempts A, delivered D, gave up G, lost L, doubled X, wrong W
# (details on stderr; exit status non-zero if anything was lost, doubled or
# wrong). Settings: BACKEND (postgres|sqlite), DATABASE_URL (a PostgreSQL
# superuser URL; a fresh database is created and dropped), USERS, SEED.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if [ "${SKIP_BUILD:-}" != 1 ]; then
  cargo build --release --quiet -p user-service -p gateway -p userdata-bench
fi
target=${CARGO_TARGET_DIR:-target}

storm() {
  "$target/release/svix-storm" --spawn \
    --backend "${BACKEND:-postgres}" \
    --users "${USERS:-2000}" \
    --seed "${SEED:-1}" \
    "$@"
}
