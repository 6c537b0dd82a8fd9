#!/usr/bin/env bash
# Seconds and dollars of three LoRAs trained as one queue on one machine against the same three jobs rented one
# by one (the fake Vast renting a fresh stock-image box behind the real sshd; each rental installs the locked
# stack and downloads the base model, as a real fresh rental does). Needs root (box users), like the e2e tests.
# Writes bench/results/queue.json and prints it. PYTHON names the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
GPURUN_BENCH=1 exec "${PYTHON:-python}" -m pytest -q -s tests/e2e/test_queue_e2e.py -k bench "$@"
