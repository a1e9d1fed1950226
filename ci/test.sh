#!/usr/bin/env bash
# The whole test suite: lint, types, then every test. README quick start, command 2.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/ci/bootstrap.sh"
cd "$root"
export PATH="$root/.venv/bin:$PATH"

echo "== ruff"
ruff check nixfleet fleet_sim harness scenarios hw tests benchmarks
echo "== mypy --strict nixfleet/core"
mypy --strict nixfleet/core
echo "== mypy (daemons, simulator, harness)"
mypy nixfleet fleet_sim harness scenarios hw
echo "== pytest"
pytest -q -n "${PYTEST_WORKERS:-2}" "$@"
