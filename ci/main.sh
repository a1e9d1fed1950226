#!/usr/bin/env bash
# The main job (README quick start, command 1): the sample fleet on the production
# cores, with a readable report in reports/sample-fleet.md.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/ci/bootstrap.sh"
cd "$root"
mkdir -p reports
.venv/bin/python -m harness.sample | tee reports/sample-fleet.md
echo "report: reports/sample-fleet.md"
