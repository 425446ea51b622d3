"""Sentence embeddings at scale: lamina inside Ray Data.

Each Ray actor loads and compiles all-MiniLM-L6-v2 once (`Embedder.__init__`),
then embeds one batch of sentences per call; Ray Data streams the batches to
the actors. On one machine the actors share its cores (`--actors` times
`--threads` should not exceed them); on a Ray cluster the same code spreads
over every node (see docs/python.md).

    bash models/minilm/fetch.sh && bash python/build.sh
    .venv/bin/python examples/ray_embed.py --count 400 --output emb.npy
"""

import argparse
import pathlib
import time

import numpy as np
import ray

import lamina

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "minilm" / "minilm.lam"


class Embedder:
    """A compiled model per actor, called once per batch of rows."""

    def __init__(self, model_path: str, threads: int, checkpoint: str | None = None):
        files = {}
        if checkpoint:  # else the model's own `weights "..."` and tokenizer.json beside it
            files = {"weights": f"{checkpoint}/model.safetensors", "tokenizer": f"{checkpoint}/tokenizer.json"}
        self.model = lamina.load(model_path, threads=threads, **files)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        embedding = self.model.run(text=batch["text"].tolist())["embedding"]
        return {"id": batch["id"], "embedding": embedding}


def embed(
    texts: list[str],
    *,
    model_path: pathlib.Path = MODEL,
    checkpoint: pathlib.Path | None = None,
    actors: int = 2,
    threads: int = 1,
    batch_size: int = 32,
) -> np.ndarray:
    """Embeds `texts` on the running Ray instance; rows in the order given.
    `checkpoint`: a folder with model.safetensors and tokenizer.json (default:
    the files the model names, in models/minilm/cache)."""
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    embedded = ds.map_batches(
        Embedder,
        fn_constructor_kwargs={
            "model_path": str(model_path),
            "threads": threads,
            "checkpoint": checkpoint and str(checkpoint),
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=threads,
    )
    rows = embedded.take_all()
    out = np.empty((len(texts), 384), np.float32)
    for row in rows:
        out[row["id"]] = row["embedding"]
    if len(rows) != len(texts):
        raise RuntimeError(f"Ray returned {len(rows)} rows for {len(texts)} texts")
    return out


def sample_texts(count: int) -> list[str]:
    """`count` distinct sentences built from the MiniLM test sentences."""
    base = (REPO / "models" / "minilm" / "testdata" / "sentences.txt").read_text("utf-8").splitlines()
    return [f"{base[i % len(base)]} (item {i})" for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=400, help="sentences to embed")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors, one model each")
    parser.add_argument("--threads", type=int, default=1, help="lamina threads per actor")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--address", help="a Ray cluster to join (default: start one here)")
    parser.add_argument("--output", type=pathlib.Path, help="save the embeddings (.npy)")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also embed in a plain loop in this process (actors x threads threads) and compare",
    )
    args = parser.parse_args()

    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=args.actors * args.threads, include_dashboard=False)
    texts = sample_texts(args.count)
    start = time.perf_counter()
    embeddings = embed(texts, actors=args.actors, threads=args.threads, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    print(f"{len(texts)} sentences in {seconds:.1f} s ({len(texts) / seconds:.0f}/s) on {args.actors} actors")
    if args.output:
        np.save(args.output, embeddings)
    ray.shutdown()
    if args.compare:
        model = lamina.load(MODEL, threads=args.actors * args.threads)
        start = time.perf_counter()
        plain = np.concatenate(
            [
                model.run(text=texts[i : i + args.batch_size])["embedding"]
                for i in range(0, len(texts), args.batch_size)
            ]
        )
        loop_seconds = time.perf_counter() - start
        print(
            f"plain loop: {loop_seconds:.1f} s ({len(texts) / loop_seconds:.0f}/s, compile excluded); "
            f"Ray/loop time ratio {seconds / loop_seconds:.2f}; "
            f"max |difference| {np.abs(plain - embeddings).max():.2e}"
        )


if __name__ == "__main__":
    main()
