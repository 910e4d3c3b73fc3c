#!/usr/bin/env bash
# Run by `ray submit <cluster.yaml> deploy/ray/train.sh -- [stride train flags]` on the head:
# joins the running cluster and trains; runs land in ~/runs on the head.
set -euo pipefail
exec stride train --address auto --run-dir "$HOME/runs/$(date +%Y%m%d-%H%M%S)" "$@"
