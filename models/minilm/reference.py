#!/usr/bin/env python3
"""Float64 numpy reference for all-MiniLM-L6-v2 sentence embeddings.

Written from the BERT architecture, not from lamina's model file, so that it can
judge lamina's output: embeddings (word + position + token type, LayerNorm),
6 post-LayerNorm encoder layers (12 heads of 32, exact erf GELU FFN of 1536),
mean pooling over the attention mask, L2 normalisation.

Usage:
  reference.py --weights W --tokenizer T --text "a" --text "b" --output ref.npy
  reference.py --weights W --ids ids.npy --mask mask.npy [--type-ids t.npy] --output ref.npy

Texts are tokenized with the `tokenizers` package from tokenizer.json, with the
file's fixed padding (to 128) replaced by padding to the longest sentence of the
batch, and truncation at --max-len (128).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HIDDEN = 384
HEADS = 12
HEAD_DIM = 32
LAYERS = 6
LAYER_NORM_EPS = 1e-12
# sentence-transformers' Normalize divides by max(norm, eps) with this eps.
NORMALIZE_EPS = 1e-12
DEFAULT_MAX_LEN = 128

try:
    from scipy.special import erf as _erf
except ImportError:  # scipy is optional; math.erf is exact but slower per element
    _erf = np.vectorize(math.erf, otypes=[np.float64])


class ReferenceError(Exception):
    """A user-facing problem with the inputs (files, shapes, options)."""


@dataclass
class Batch:
    input_ids: np.ndarray  # int64 [n, seq]
    attention_mask: np.ndarray  # int64 [n, seq]
    token_type_ids: np.ndarray  # int64 [n, seq]


def load_weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not path.is_file():
        raise ReferenceError(f"weights file not found: {path} (run models/minilm/fetch.sh)")
    raw = load_file(str(path))
    # Integer buffers (embeddings.position_ids) stay as they are.
    return {
        name: t.astype(np.float64) if np.issubdtype(t.dtype, np.floating) else t
        for name, t in raw.items()
    }


def tokenize(tokenizer_path: Path, texts: list[str], max_len: int) -> Batch:
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ReferenceError("the `tokenizers` package is needed for --text: pip install tokenizers") from e
    if not tokenizer_path.is_file():
        raise ReferenceError(f"tokenizer file not found: {tokenizer_path} (run models/minilm/fetch.sh)")
    if not texts:
        raise ReferenceError("no texts given")
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_len)
    tokenizer.enable_padding(pad_id=0, pad_type_id=0, pad_token="[PAD]")  # to the longest
    encodings = tokenizer.encode_batch(texts)
    return Batch(
        input_ids=np.array([e.ids for e in encodings], dtype=np.int64),
        attention_mask=np.array([e.attention_mask for e in encodings], dtype=np.int64),
        token_type_ids=np.array([e.type_ids for e in encodings], dtype=np.int64),
    )


def layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased, as torch
    return (x - mean) / np.sqrt(var + LAYER_NORM_EPS) * gain + bias


def linear(x: np.ndarray, w: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    # torch.nn.Linear stores weight as [out, in].
    return x @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"]


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def split_heads(x: np.ndarray) -> np.ndarray:
    n, seq, _ = x.shape
    return x.reshape(n, seq, HEADS, HEAD_DIM).transpose(0, 2, 1, 3)


def self_attention(x: np.ndarray, keep: np.ndarray, w: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    q = split_heads(linear(x, w, f"{prefix}.query"))
    k = split_heads(linear(x, w, f"{prefix}.key"))
    v = split_heads(linear(x, w, f"{prefix}.value"))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(HEAD_DIM)  # [n, heads, seq, seq]
    # Padding keys get exactly zero weight (BERT's additive -10000 mask gives the
    # same result in float64: exp(-10000) underflows to 0).
    scores = np.where(keep[:, None, None, :], scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    context = probs @ v  # [n, heads, seq, head_dim]
    n, _, seq, _ = context.shape
    return context.transpose(0, 2, 1, 3).reshape(n, seq, HIDDEN)


def encoder_layer(h: np.ndarray, keep: np.ndarray, w: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    attended = self_attention(h, keep, w, f"{prefix}.attention.self")
    h = layer_norm(
        linear(attended, w, f"{prefix}.attention.output.dense") + h,
        w[f"{prefix}.attention.output.LayerNorm.weight"],
        w[f"{prefix}.attention.output.LayerNorm.bias"],
    )
    inner = gelu(linear(h, w, f"{prefix}.intermediate.dense"))
    return layer_norm(
        linear(inner, w, f"{prefix}.output.dense") + h,
        w[f"{prefix}.output.LayerNorm.weight"],
        w[f"{prefix}.output.LayerNorm.bias"],
    )


def check_batch(batch: Batch, w: dict[str, np.ndarray]) -> None:
    ids, mask, types = batch.input_ids, batch.attention_mask, batch.token_type_ids
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ReferenceError(f"input ids must be a non-empty [batch, seq] array, got shape {ids.shape}")
    for name, arr in (("attention mask", mask), ("token type ids", types)):
        if arr.shape != ids.shape:
            raise ReferenceError(f"{name} shape {arr.shape} differs from input ids shape {ids.shape}")
    max_positions = w["embeddings.position_embeddings.weight"].shape[0]
    if ids.shape[1] > max_positions:
        raise ReferenceError(f"sequence length {ids.shape[1]} exceeds the {max_positions} position embeddings")
    vocab = w["embeddings.word_embeddings.weight"].shape[0]
    if ids.min() < 0 or ids.max() >= vocab:
        raise ReferenceError(f"token ids must lie in [0, {vocab}), got [{ids.min()}, {ids.max()}]")
    n_types = w["embeddings.token_type_embeddings.weight"].shape[0]
    if types.min() < 0 or types.max() >= n_types:
        raise ReferenceError(f"token type ids must lie in [0, {n_types})")
    if not np.isin(mask, (0, 1)).all():
        raise ReferenceError("the attention mask must hold only 0 and 1")
    if (mask.sum(axis=1) == 0).any():
        raise ReferenceError("every row of the attention mask needs at least one 1")


def embed(batch: Batch, w: dict[str, np.ndarray]) -> np.ndarray:
    """Sentence embeddings, float64 [n, 384], unit L2 norm."""
    check_batch(batch, w)
    seq = batch.input_ids.shape[1]
    h = (
        w["embeddings.word_embeddings.weight"][batch.input_ids]
        + w["embeddings.position_embeddings.weight"][np.arange(seq)][None, :, :]
        + w["embeddings.token_type_embeddings.weight"][batch.token_type_ids]
    )
    h = layer_norm(h, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    keep = batch.attention_mask.astype(bool)
    for i in range(LAYERS):
        h = encoder_layer(h, keep, w, f"encoder.layer.{i}")
    m = batch.attention_mask.astype(np.float64)[:, :, None]
    pooled = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    norms = np.sqrt((pooled * pooled).sum(axis=-1, keepdims=True))
    return pooled / np.maximum(norms, NORMALIZE_EPS)


def load_int_array(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise ReferenceError(f"{what} file not found: {path}")
    arr = np.load(path)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ReferenceError(f"{what} in {path} must be integers, got {arr.dtype}")
    return arr.astype(np.int64)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, required=True, help="model.safetensors")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (needed with --text/--texts-file)")
    p.add_argument("--text", action="append", default=[], help="a sentence; repeat for a batch")
    p.add_argument("--texts-file", type=Path, help="UTF-8 file, one sentence per line")
    p.add_argument("--ids", type=Path, help="int64 [batch, seq] input ids (.npy), instead of texts")
    p.add_argument("--mask", type=Path, help="attention mask (.npy) for --ids")
    p.add_argument("--type-ids", type=Path, help="token type ids (.npy) for --ids; default all 0")
    p.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN, help="truncation length (default 128)")
    p.add_argument("--output", type=Path, required=True, help="embeddings .npy, [batch, 384]")
    p.add_argument("--output-dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--save-inputs", type=Path, metavar="PREFIX",
                   help="also write PREFIX_input_ids.npy, PREFIX_attention_mask.npy, PREFIX_token_type_ids.npy")
    p.add_argument("--time", action="store_true", help="print the model's run time (excluding loading) to stderr")
    p.add_argument("--repeat", type=int, default=1, help="with --time: run the model this many times, report min and median")
    return p.parse_args(argv)


def build_batch(args: argparse.Namespace) -> Batch:
    texts = list(args.text)
    if args.texts_file is not None:
        if not args.texts_file.is_file():
            raise ReferenceError(f"texts file not found: {args.texts_file}")
        texts += [line for line in args.texts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if texts and args.ids is not None:
        raise ReferenceError("give either texts (--text/--texts-file) or --ids, not both")
    if args.ids is not None:
        if args.mask is None:
            raise ReferenceError("--ids needs --mask")
        ids = load_int_array(args.ids, "input ids")
        mask = load_int_array(args.mask, "attention mask")
        types = load_int_array(args.type_ids, "token type ids") if args.type_ids else np.zeros_like(ids)
        return Batch(ids, mask, types)
    if not texts:
        raise ReferenceError("no input: give --text, --texts-file or --ids")
    if args.tokenizer is None:
        raise ReferenceError("texts need --tokenizer")
    if args.max_len < 2:
        raise ReferenceError("--max-len must leave room for [CLS] and [SEP]")
    return tokenize(args.tokenizer, texts, args.max_len)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        batch = build_batch(args)
        weights = load_weights(args.weights)
        if args.repeat < 1:
            raise ReferenceError("--repeat must be at least 1")
        timings = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            embeddings = embed(batch, weights)
            timings.append(time.perf_counter() - start)
    except ReferenceError as e:
        print(f"reference.py: error: {e}", file=sys.stderr)
        return 2
    if args.save_inputs is not None:
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            np.save(f"{args.save_inputs}_{name}.npy", getattr(batch, name))
    np.save(args.output, embeddings.astype(args.output_dtype))
    if args.time:
        n, seq = batch.input_ids.shape
        print(
            f"embedded {n} sentence(s), padded length {seq}: min {min(timings) * 1000:.1f} ms, "
            f"median {np.median(timings) * 1000:.1f} ms over {len(timings)} run(s)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
