#!/usr/bin/env bash
# The main job (README quick start, command 1): the scenario catalogue proven against
# its bugs on the simulated fleet (sim) and on real CP and agent processes (local), with
# one table of scenario x backend in reports/catalogue/catalogue.{md,html}; then a
# 1,000-host fleet-sim run with plots.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/ci/bootstrap.sh"
cd "$root"
export PATH="$root/.venv/bin:$PATH"
status=0
rm -rf reports/catalogue  # no stale results in this run's table
fleet-harness prove --all --backend sim --backend local --report reports/catalogue \
    || status=$?
fleet-sim run --hosts 1000 --waves 3 --seed 1 --no-progress \
    --fault CpWipe:at=480,duration=20 --report reports/sim-1000 || status=$?
exit "$status"
