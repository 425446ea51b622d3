#!/usr/bin/env bash
# The project's tests: cargo's (the library, the CLI), then the Python
# module's, built into .venv first (python/build.sh). Stops at the first
# failure; pytest finding no test at all (exit 5) is a failure too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

cargo test --release
bash python/build.sh
"${LAMINA_VENV:-.venv}/bin/python" -m pytest python/tests
