#!/usr/bin/env bash
# Builds the lamina Python module (release) into a virtualenv, creating the
# venv and installing python/requirements-dev.txt into it as needed.
#
#   bash python/build.sh            # into .venv at the repository root
#   LAMINA_VENV=DIR bash python/build.sh
#
# The crate builds into the root's target/ (CARGO_TARGET_DIR), beside the
# `lamina` binary, so that dependencies built once serve both.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LAMINA_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating the virtualenv $venv"
    "$python" -m venv "$venv"
fi
# Quick when everything is installed already (pip only checks the pins).
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$root/python/requirements-dev.txt"

export VIRTUAL_ENV="$venv"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
"$venv/bin/maturin" develop --release --quiet --manifest-path "$root/python/Cargo.toml"
