"""Train the digits classifier that lamina's end-to-end tests run.

Run once by hand from anywhere:  python3 models/digits/train.py
It is deterministic (fixed split seed and MLP random_state), needs only
numpy, scikit-learn and safetensors, and downloads nothing: the 8x8 digits
ship with scikit-learn. It writes, next to this script:

  digits.safetensors  f32 fc1.weight [64, 32], fc1.bias [32],
                          fc2.weight [32, 10], fc2.bias [10]
                      in the `x @ W` layout that digits.lam declares
  x.npy               the held-out images, float32 [n, 64], pixels in [0, 1]
  labels.npy          their classes, int64 [n]
  train_x.npy         the training split, float32 [1347, 64], for `lamina train`
  train_labels.npy    its classes, int64 [1347]

`python3 models/digits/train.py --split-only` writes only the last two
(the split is the same; the shipped weights are left as they are).

and then re-reads those files and runs a plain numpy forward pass, so the
accuracy it prints last is the one lamina must reproduce from the files.
"""

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = Path(__file__).resolve().parent
SPLIT_SEED = 0
INIT_SEED = 0


def split():
    digits = load_digits()
    # Pixels are counts 0..16; /16 puts them in [0, 1], exactly representable in f32.
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, stratify=y, random_state=SPLIT_SEED)


def write_training_split():
    """The rows the shipped weights were trained on, for `lamina train`."""
    x_train, _, y_train, _ = split()
    np.save(HERE / "train_x.npy", np.ascontiguousarray(x_train, dtype=np.float32))
    np.save(HERE / "train_labels.npy", y_train.astype(np.int64))


def train():
    x_train, x_test, y_train, y_test = split()
    mlp = MLPClassifier(
        hidden_layer_sizes=(32,),
        activation="relu",
        solver="adam",
        alpha=1e-4,
        max_iter=1000,
        random_state=INIT_SEED,
    )
    mlp.fit(x_train, y_train)
    print(f"train accuracy {mlp.score(x_train, y_train):.4f} ({len(y_train)} images)")
    print(f"test accuracy  {mlp.score(x_test, y_test):.4f} ({len(y_test)} images, sklearn)")

    # sklearn stores coefs_[i] as [fan_in, fan_out]: already the x @ W layout.
    tensors = {
        "fc1.weight": mlp.coefs_[0],
        "fc1.bias": mlp.intercepts_[0],
        "fc2.weight": mlp.coefs_[1],
        "fc2.bias": mlp.intercepts_[1],
    }
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    save_file(tensors, HERE / "digits.safetensors")
    np.save(HERE / "x.npy", np.ascontiguousarray(x_test, dtype=np.float32))
    np.save(HERE / "labels.npy", y_test.astype(np.int64))


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def check_saved_files():
    """The forward pass digits.lam describes, from the files just written."""
    w = load_file(HERE / "digits.safetensors")
    x = np.load(HERE / "x.npy")
    labels = np.load(HERE / "labels.npy")
    assert x.dtype == np.float32 and labels.dtype == np.int64
    hidden = np.maximum(x @ w["fc1.weight"] + w["fc1.bias"], 0.0)
    probs = softmax(hidden @ w["fc2.weight"] + w["fc2.bias"])
    predicted = probs.argmax(axis=-1)
    correct = int((predicted == labels).sum())
    print(f"expected accuracy from the saved files: {correct}/{len(labels)} = {correct / len(labels):.4f}")


if __name__ == "__main__":
    import sys

    write_training_split()
    if "--split-only" not in sys.argv[1:]:
        train()
        check_saved_files()
