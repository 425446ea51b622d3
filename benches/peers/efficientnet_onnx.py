"""EfficientNet-Lite0 as an ONNX graph, built with onnx.helper from the same
safetensors checkpoint lamina runs (models/efficientnet_lite0/, fetched by
its fetch.sh), for the peers (onnxruntime, tract) and for tests.

The network is the one models/efficientnet_lite0/reference.py describes
(its STAGES table, read from its source; TensorFlow "SAME" padding, batch
norm eps 1e-3, ReLU6), written the way exporters write it: Conv (explicit pads, computed for the
fixed 224 x 224 input), BatchNormalization, Clip(0, 6), Add for the
residuals, GlobalAveragePool, Flatten, Gemm, Softmax. The batch norms stay
separate nodes, as a PyTorch export in eval mode leaves them: folding them
is each engine's own optimisation.

    from efficientnet_onnx import build, load_weights
    model = build(load_weights(path))          # onnx.ModelProto
    # inputs: image f32[batch, 3, 224, 224]; outputs: probs, logits [batch, 1000]

`build` needs numpy and onnx, `load_weights` safetensors; `layers` and
`flops_per_image` need nothing but the standard library.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
MODEL_DIR = REPO / "models" / "efficientnet_lite0"
WEIGHTS = MODEL_DIR / "cache" / "efficientnet_lite0.safetensors"
LAMINA_MODEL = MODEL_DIR / "efficientnet_lite0.lam"
IMAGE_SIZE = 224
HEAD_CHANNELS = 1280
CLASSES = 1000
OPSET = 17


def architecture() -> dict:
    """reference.py's constants (STAGES, STEM_CHANNELS, BN_EPS), read from its
    source so that callers without numpy (the benchmark driver) can use them."""
    tree = ast.parse((MODEL_DIR / "reference.py").read_text())
    wanted = {"STAGES", "STEM_CHANNELS", "BN_EPS"}
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            name = getattr(node.targets[0], "id", None)
            if name in wanted:
                found[name] = ast.literal_eval(node.value)
    missing = wanted - set(found)
    if missing:
        raise ValueError(f"reference.py no longer defines {sorted(missing)}")
    return found


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME": output ceil(size / stride), the odd pixel at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def layers():
    """Every convolution in order: (weight name, in channels, out channels,
    kernel, stride, groups, input size), then the classifier; the same walk
    `build` and `flops_per_image` make."""
    arch = architecture()
    size, channels = IMAGE_SIZE, arch["STEM_CHANNELS"]
    convs = [("_conv_stem.weight", 3, channels, 3, 2, 1, size)]
    size = -(-size // 2)
    index = 0
    blocks = []
    for repeats, kernel, stride, expand, out_channels in arch["STAGES"]:
        for r in range(repeats):
            prefix = f"_blocks.{index}"
            block_stride = stride if r == 0 else 1
            hidden = channels * expand
            if expand != 1:
                convs.append((f"{prefix}._expand_conv.weight", channels, hidden, 1, 1, 1, size))
            convs.append((f"{prefix}._depthwise_conv.weight", hidden, hidden, kernel, block_stride, hidden, size))
            size = -(-size // block_stride)
            convs.append((f"{prefix}._project_conv.weight", hidden, out_channels, 1, 1, 1, size))
            blocks.append((prefix, expand, block_stride == 1 and channels == out_channels))
            channels = out_channels
            index += 1
    convs.append(("_conv_head.weight", channels, HEAD_CHANNELS, 1, 1, 1, size))
    return convs, blocks


def flops_per_image() -> int:
    """2 per multiply-add of the convolutions and the classifier (lamina
    bench's convention: products only)."""
    convs, _ = layers()
    total = 2 * HEAD_CHANNELS * CLASSES
    for _, cin, cout, kernel, stride, groups, size in convs:
        out = -(-size // stride)
        total += 2 * cout * (cin // groups) * kernel * kernel * out * out
    return total


def reference_module():
    """models/efficientnet_lite0/reference.py, the float64 numpy reference (needs numpy)."""
    spec = importlib.util.spec_from_file_location("efficientnet_reference", MODEL_DIR / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_weights(path: Path = WEIGHTS) -> dict:
    """The checkpoint's tensors by name, as float32 numpy arrays."""
    from safetensors.numpy import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: run bash models/efficientnet_lite0/fetch.sh")
    return load_file(str(path))


def build(weights: dict, batch: str | int = "batch"):
    """The ONNX model of EfficientNet-Lite0 with `weights` as initializers;
    every weight's shape is checked against the architecture."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    bn_eps = architecture()["BN_EPS"]
    convs, blocks = layers()
    by_name = {c[0]: c for c in convs}
    nodes, inits, used = [], [], set()
    counter = [0]

    def fresh(stem: str) -> str:
        counter[0] += 1
        return f"{stem}_{counter[0]}"

    def init(name: str, value=None) -> str:
        if name not in used:
            array = weights[name] if value is None else value
            inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
            used.add(name)
        return name

    def conv(x: str, weight: str) -> str:
        _, cin, cout, kernel, stride, groups, size = by_name[weight]
        if tuple(weights[weight].shape) != (cout, cin // groups, kernel, kernel):
            raise ValueError(f"{weight}: {weights[weight].shape}, the architecture says "
                             f"{(cout, cin // groups, kernel, kernel)}")
        before, after = same_padding(size, kernel, stride)
        out = fresh("conv")
        nodes.append(helper.make_node(
            "Conv", [x, init(weight)], [out], strides=[stride, stride], group=groups,
            kernel_shape=[kernel, kernel], pads=[before, before, after, after]))
        return out

    def bn(x: str, prefix: str) -> str:
        out = fresh("bn")
        names = [init(f"{prefix}.{p}") for p in ("weight", "bias", "running_mean", "running_var")]
        nodes.append(helper.make_node("BatchNormalization", [x, *names], [out], epsilon=bn_eps))
        return out

    def relu6(x: str) -> str:
        out = fresh("relu6")
        nodes.append(helper.make_node("Clip", [x, init("zero", np.float32(0)), init("six", np.float32(6))], [out]))
        return out

    h = relu6(bn(conv("image", "_conv_stem.weight"), "_bn0"))
    for prefix, expand, residual in blocks:
        x = h
        if expand != 1:
            h = relu6(bn(conv(h, f"{prefix}._expand_conv.weight"), f"{prefix}._bn0"))
        h = relu6(bn(conv(h, f"{prefix}._depthwise_conv.weight"), f"{prefix}._bn1"))
        h = bn(conv(h, f"{prefix}._project_conv.weight"), f"{prefix}._bn2")
        if residual:
            summed = fresh("residual")
            nodes.append(helper.make_node("Add", [h, x], [summed]))
            h = summed
    h = relu6(bn(conv(h, "_conv_head.weight"), "_bn1"))
    nodes.append(helper.make_node("GlobalAveragePool", [h], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1))
    nodes.append(helper.make_node("Gemm", ["features", init("_fc.weight"), init("_fc.bias")], ["logits"], transB=1))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
    unused = sorted(set(weights) - used - {"zero", "six"})
    if unused:
        raise ValueError(f"weights the graph does not use: {unused[:5]}")
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, IMAGE_SIZE, IMAGE_SIZE])
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, CLASSES]) for n in ("probs", "logits")]
    graph = helper.make_graph(nodes, "efficientnet_lite0", [image], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
