#!/usr/bin/env python3
"""Converts a legacy (pre-zip) PyTorch checkpoint to safetensors, with numpy only.

The legacy format written by `torch.save` before PyTorch 1.6 is five things
one after another in one file:

  1. a pickle of the magic number 0x1950a86a20f9469cfc6c,
  2. a pickle of the protocol version (1001),
  3. a pickle of a dict describing the writer (endianness, type sizes),
  4. a pickle of the saved object (here a state dict, an OrderedDict of
     tensors); each tensor is `torch._utils._rebuild_tensor_v2(storage,
     offset, size, stride, requires_grad, hooks)`, where `storage` is a
     *persistent id* ("storage", "FloatStorage", KEY, device, numel, view)
     that names a storage instead of holding its bytes,
  5. a pickle of the list of storage KEYs, then for each KEY in that order
     an int64 element count followed by the storage's raw bytes.

Torch is not needed to read it: the unpickler below maps the two globals a
state dict uses onto plain records and refuses any other global, so a
malicious checkpoint cannot run code through pickle. Tensors are then built
with numpy's `as_strided` from storage, offset, size and stride (the
EfficientNet-Lite checkpoint stores its convolution kernels as transposed
views of TensorFlow's HWIO arrays, so strides matter) and copied to
contiguous arrays.

Usage: convert.py CHECKPOINT.pth OUT.safetensors [--drop-suffix .num_batches_tracked]...
"""

from __future__ import annotations

import argparse
import collections
import json
import pickle
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

SAFETENSORS_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


class CheckpointError(Exception):
    """The file is not a legacy checkpoint this reader understands."""


@dataclass(frozen=True)
class StorageRef:
    kind: str  # e.g. "FloatStorage"
    key: str
    numel: int


@dataclass(frozen=True)
class TensorRef:
    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, offset, size, stride, *_rest) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise CheckpointError(f"a tensor's storage is {type(storage).__name__}, not a storage reference")
    return TensorRef(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


class _StateDictUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return name  # the storage's type, as its name
        raise CheckpointError(f"the checkpoint refers to {module}.{name}, which a state dict does not need")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"unknown persistent id {pid!r}")
        _, kind, key, _device, numel = pid[:5]
        if kind not in STORAGE_DTYPES:
            raise CheckpointError(f"unsupported storage type {kind!r}")
        return StorageRef(kind, str(key), int(numel))


def read_legacy_checkpoint(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
            protocol = pickle.load(f)
            sys_info = pickle.load(f)
        except Exception as e:  # anything pickle raises on a non-checkpoint
            raise CheckpointError(f"{path} does not start with a legacy PyTorch header ({e})") from e
        if magic != LEGACY_MAGIC:
            raise CheckpointError(f"{path} is not a legacy PyTorch checkpoint (magic {magic!r})")
        if protocol != LEGACY_PROTOCOL:
            raise CheckpointError(f"unsupported legacy protocol version {protocol}")
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian", False)):
            raise CheckpointError("only little-endian checkpoints are supported")
        state = _StateDictUnpickler(f).load()
        if not isinstance(state, dict):
            raise CheckpointError(f"the checkpoint holds a {type(state).__name__}, not a state dict")
        keys = pickle.load(f)
        storages: dict[str, np.ndarray] = {}
        kinds = {t.storage.key: t.storage.kind for t in state.values() if isinstance(t, TensorRef)}
        for key in keys:
            (numel,) = struct.unpack("<q", f.read(8))
            if key not in kinds:
                raise CheckpointError(f"storage {key} is not used by any tensor")
            dtype = np.dtype(STORAGE_DTYPES[kinds[key]])
            raw = f.read(numel * dtype.itemsize)
            if len(raw) != numel * dtype.itemsize:
                raise CheckpointError(f"storage {key}: file ends after {len(raw)} of {numel * dtype.itemsize} bytes")
            storages[key] = np.frombuffer(raw, dtype=dtype)
        if f.read(1):
            raise CheckpointError("bytes left over after the last storage")

    tensors: dict[str, np.ndarray] = {}
    for name, ref in state.items():
        if not isinstance(ref, TensorRef):
            raise CheckpointError(f"entry {name!r} is a {type(ref).__name__}, not a tensor")
        flat = storages.get(ref.storage.key)
        if flat is None:
            raise CheckpointError(f"tensor {name!r} uses storage {ref.storage.key}, which the file does not hold")
        # The last element reached must lie inside the storage.
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride) if n > 0)
        if any(s < 0 for s in ref.stride) or (0 not in ref.size and last >= flat.size):
            raise CheckpointError(f"tensor {name!r} reaches outside its storage")
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset:],
            shape=ref.size,
            strides=tuple(s * item for s in ref.stride),
            writeable=False,
        )
        tensors[name] = np.ascontiguousarray(view)
    return tensors


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, array in tensors.items():
        nbytes = array.nbytes
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    tmp = path.with_suffix(path.suffix + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for array in tensors.values():
            f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    tmp.replace(path)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--drop-suffix", action="append", default=[], metavar="SUFFIX",
                   help="leave out tensors whose name ends so (repeatable)")
    args = p.parse_args(argv)
    try:
        tensors = read_legacy_checkpoint(args.checkpoint)
    except (CheckpointError, OSError, pickle.UnpicklingError, EOFError, struct.error) as e:
        print(f"convert.py: error: {e}", file=sys.stderr)
        return 1
    kept = {n: t for n, t in tensors.items() if not any(n.endswith(s) for s in args.drop_suffix)}
    write_safetensors(args.output, kept, {"format": "pt", "source": args.checkpoint.name})
    print(f"{args.output}: {len(kept)} tensors ({len(tensors) - len(kept)} dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
