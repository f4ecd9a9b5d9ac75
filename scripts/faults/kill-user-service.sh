#!/usr/bin/env bash
# A storm of ~14k events while user-service is SIGKILLed every 2 s and
# restarted 0.5 s later on the same port. The gateway keeps answering (503
# while user-service is down); Svix-style retries bring every event in;
# the final state must match exactly. See RELIABILITY.md.
source "$(dirname "$0")/lib.sh"
storm --fault kill-user-service --fault-every 2s --down-for 500ms --duplicates 0.02 "$@"
