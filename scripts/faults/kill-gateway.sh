#!/usr/bin/env bash
# A storm while the gateway is SIGKILLed every 3 s (mid-request) and restarted
# 1 s later: unacknowledged events are retried and applied once (a retry of
# an event the dead gateway had already applied answers `duplicate`).
source "$(dirname "$0")/lib.sh"
storm --fault kill-gateway --fault-every 3s --down-for 1s "$@"
