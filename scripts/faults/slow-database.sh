#!/usr/bin/env bash
# Creates a user through the gateway, then holds `select ... for update` on
# its row in another connection for 20 s (longer than the gateway's 5 s
# deadline and Svix's 15 s) while its user.updated is delivered. Required:
# the first attempt is answered 503 within the deadline, the first retry
# after the release applies the update, and it is applied exactly once.
source "$(dirname "$0")/lib.sh"
export BACKEND=postgres
storm --fault slow-database --hold 20s "$@"
