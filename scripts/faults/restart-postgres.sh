#!/usr/bin/env bash
# A storm while the local PostgreSQL cluster is restarted, twice over:
#  1. `pg_ctlcluster --skip-systemctl-redirect <version> main restart`,
#     twice during the storm;
#  2. `stop`, 3 s down, `start`, so the outage outlasts user-service's health
#     check (it must report NOT_SERVING, then SERVING again by itself).
# user-service recovers its pool by itself and the final state matches.
#
# This restarts the machine's PostgreSQL: every other client (other test
# runs!) loses its connections. It refuses to run while other clients are
# connected unless FORCE=1.
source "$(dirname "$0")/lib.sh"
export BACKEND=postgres
admin=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
others=$(psql "$admin" -Atc "select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()")
if [ "$others" != 0 ] && [ "${FORCE:-}" != 1 ]; then
  echo "restart-postgres: $others other PostgreSQL client(s) connected; run when nothing else uses the server (or FORCE=1)" >&2
  exit 2
fi
status=0
echo "pg_ctlcluster restart, twice:" >&2
storm --fault restart-postgres --down-for 0s --fault-after 1s --fault-every 1s --fault-count 2 "$@" || status=$?
echo "pg_ctlcluster stop, 3 s, start:" >&2
storm --fault restart-postgres --down-for 3s --fault-after 2s --fault-count 1 "$@" || status=$?
exit $status
