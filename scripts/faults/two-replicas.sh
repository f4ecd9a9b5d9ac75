#!/usr/bin/env bash
# Two user-service replicas on one PostgreSQL database, run twice:
#  1. one gateway balancing over both (--user-service-url a,b);
#  2. one gateway per replica, the storm round-robining over the gateways.
# Replica 1 is SIGKILLed 3 s in and left down. 20% of the events are first
# sent twice at once (landing on both replicas), 5% are redelivered after
# they were acknowledged: nothing may be lost or applied twice.
source "$(dirname "$0")/lib.sh"
export BACKEND=postgres
status=0
echo "one gateway over both replicas:" >&2
storm --replicas 2 --fault kill-replica --fault-after 3s --race 0.2 --duplicates 0.05 "$@" || status=$?
echo "one gateway per replica:" >&2
storm --replicas 2 --gateway-per-replica --fault kill-replica --fault-after 3s --race 0.2 --duplicates 0.05 "$@" || status=$?
exit $status
