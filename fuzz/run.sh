#!/usr/bin/env bash
# Runs one fuzz target for a time budget: fuzz/run.sh TARGET SECONDS
# (targets: parse_check, lower_passes, jit_vs_interp; see docs/fuzzing.md).
#
# The corpus starts from every .lam file under models/, tests/cases/ and
# tests/filetests/, copied into fuzz/corpus/TARGET (not in git) next to what
# earlier runs found. With cargo-fuzz installed this runs libFuzzer on the
# stable toolchain (RUSTC_BOOTSTRAP=1, no sanitizer); LAMINA_FUZZ_STANDALONE=1
# or no cargo-fuzz runs the plain-binary build instead (no coverage feedback).
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 TARGET SECONDS" >&2
    exit 2
fi
target=$1
seconds=$2
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$here"

corpus=corpus/$target
mkdir -p "$corpus"
# Seeds named after their path so files with the same name do not collide.
while IFS= read -r -d '' file; do
    rel=${file#"$root"/}
    cp "$file" "$corpus/seed-${rel//\//_}"
done < <(find "$root/models" "$root/tests/cases" "$root/tests/filetests" -name '*.lam' -print0)

if [ -z "${LAMINA_FUZZ_STANDALONE:-}" ] && cargo fuzz --version >/dev/null 2>&1; then
    RUSTC_BOOTSTRAP=1 exec cargo fuzz run -s none -O "$target" "$corpus" -- \
        -max_total_time="$seconds" -max_len=8192 -timeout=30
else
    cargo build --release --no-default-features --bin "$target"
    exec target/release/"$target" --seconds "$seconds" "$corpus"
fi
