"""Shared fixtures for the lamina Python module's tests.

Run from the repository root: README's test command (all tests), or after
`bash python/build.sh`: `.venv/bin/python -m pytest python/tests`.

A test that needs the fetched MiniLM checkpoint (`bash models/minilm/fetch.sh`)
or an optional package (ray) is skipped with the reason when it is missing,
except under CI (CI set to anything but "", "false", "0"), where it fails.
"""

import os
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
MINILM = REPO / "models" / "minilm"
MINILM_CACHE = pathlib.Path(os.environ.get("LAMINA_CACHE", MINILM / "cache"))
DIGITS = REPO / "models" / "digits"


def under_ci() -> bool:
    return os.environ.get("CI", "") not in ("", "false", "0")


def missing(reason: str) -> None:
    """Skips the calling test locally; fails it under CI."""
    if under_ci():
        pytest.fail(f"{reason} (CI runs every test: .ci/run installs what they need)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def minilm_checkpoint() -> pathlib.Path:
    """The folder holding the fetched all-MiniLM-L6-v2 checkpoint and tokenizer."""
    for name in ("model.safetensors", "tokenizer.json"):
        if not (MINILM_CACHE / name).is_file():
            missing(f"{MINILM_CACHE / name} is missing: run `bash models/minilm/fetch.sh`")
    return MINILM_CACHE


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return (MINILM / "testdata" / "sentences.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits the shipped MLP was evaluated on, and their labels."""
    return np.load(DIGITS / "x.npy"), np.load(DIGITS / "labels.npy")


def lamina_cli() -> pathlib.Path:
    """The lamina binary of the release build (`cargo build --release`)."""
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    binary = target / "release" / "lamina"
    if not binary.is_file():
        missing(f"{binary} is missing: run `cargo build --release`")
    return binary
