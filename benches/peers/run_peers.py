#!/usr/bin/env python3
"""lamina against its peers on this machine, in one run.

Builds the benchmark models of models/bench/ as ONNX graphs with the same
shapes, and measures, each in its own processes:

  numpy (OpenBLAS)     sgemm, and the MLP written by hand
  onnxruntime          sgemm, MLP, encoder block, EfficientNet-Lite0 (1 and 2 intra-op threads)
  tract (optional)     MLP, encoder block, EfficientNet-Lite0 (1 thread), when `pip install tract` works
  lamina               `lamina bench --json` (release build) on the same shapes

EfficientNet-Lite0 (`--only efficientnet`, needs bash models/efficientnet_lite0/fetch.sh)
is the real checkpoint: the ONNX graph is built by efficientnet_onnx.py from
the same safetensors lamina's models/efficientnet_lite0/efficientnet_lite0.lam
reads, and checked against lamina and reference.py's float64 logits first.

Every measurement is the median of >= 5 separate processes (`--rounds`), each
reporting the median of its own timed runs after a warm-up; rounds interleave
all configurations so that load from other jobs on the machine spreads over
all of them. Ratios are computed inside this one run only.

Before timing, the script checks that the three implementations compute the
same function: the same weights (written to a safetensors file for
`lamina run --weights`) give the same outputs in lamina, onnxruntime and a
float64 numpy reference.

Usage:
  python3 benches/peers/run_peers.py                 # everything (~15-25 min)
  python3 benches/peers/run_peers.py --only mlp --rounds 5
  python3 benches/peers/run_peers.py --quick         # 1 round, short timing: smoke test

The script creates its own virtual environment in benches/peers/.venv (git
ignored) with numpy, onnxruntime, onnx, threadpoolctl and safetensors, and
re-runs its workers inside it. Results go to stdout (markdown tables) and to
benches/peers/results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENV = HERE / ".venv"
REQUIRED = ["numpy", "onnxruntime", "onnx", "threadpoolctl", "safetensors"]
OPTIONAL = ["tract"]
LAMINA = REPO / "target" / "release" / "lamina"
LAMINA_MODELS = {
    "sgemm": REPO / "models" / "bench" / "sgemm.lam",
    "mlp": REPO / "models" / "bench" / "mlp.lam",
    "encoder": REPO / "models" / "bench" / "encoder.lam",
    # Its weights are found through the model's own `weights "..."` line.
    "efficientnet": REPO / "models" / "efficientnet_lite0" / "efficientnet_lite0.lam",
}
# `--lamina-before`: a second lamina binary measured in the same rounds.
BEFORE = ""
# kind -> the safetensors file of the weights the peers' models hold, which
# `lamina bench --weights` reads (written by the correctness check): lamina's
# compile time then loads weights as onnxruntime's session creation does,
# instead of generating the models' seeded initializers.
BENCH_WEIGHTS: dict = {}

SGEMM_SIZES = [64, 128, 256, 512, 1024]
MLP_BATCHES = [1, 8, 64, 256]
ENCODER_BATCHES = [1, 8]
EFFICIENTNET_BATCHES = [1, 8]
THREADS = [1, 2]
KINDS = ("sgemm", "mlp", "encoder", "efficientnet")

# The shapes of models/bench/*.lam.
MLP_DIMS = [784, 512, 512, 10]
SEQ, D_MODEL, HEADS, HEAD_DIM, D_FFN = 128, 256, 4, 64, 1024

# Variables that pin OpenBLAS to a core type or cache size. They may be set
# on this machine for other tools; numpy is measured without them so that
# OpenBLAS picks its own kernel (which threadpoolctl then reports).
OPENBLAS_PINS = ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"]


# ---------------------------------------------------------------- environment


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv(with_tract: bool) -> dict:
    """Creates the venv and installs the packages once; returns what is installed."""
    python = venv_python()
    if not python.exists():
        print(f"creating {VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    marker = VENV / "installed.json"
    installed = json.loads(marker.read_text()) if marker.exists() else {}
    missing = [p for p in REQUIRED if p not in installed]
    if missing:
        print(f"pip install {' '.join(missing)}", file=sys.stderr)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *missing], check=True
        )
        for p in missing:
            installed[p] = True
    if with_tract and "tract" not in installed:
        print("pip install tract (optional)", file=sys.stderr)
        ok = (
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", "tract"]
            ).returncode
            == 0
        )
        installed["tract"] = ok
    marker.write_text(json.dumps(installed))
    return installed


def machine_line() -> str:
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    flags = fields.get("flags", "").split()
    isa = [f for f in ("avx2", "fma", "avx512f") if f in flags]
    caches = []
    for index in range(4):
        base = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}")
        try:
            level = (base / "level").read_text().strip()
            kind = (base / "type").read_text().strip()
            size = (base / "size").read_text().strip()
        except OSError:
            continue
        if kind != "Instruction":
            caches.append(f"L{level} {size}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')} "
        f"model {fields.get('model', '?')}), {os.cpu_count()} logical CPUs, "
        f"{'+'.join(isa) or 'no AVX2'}, {', '.join(caches)}; {platform.system()} {platform.release()}; "
        f"load average at start {load:.1f}"
    )


def cpu_times() -> tuple:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return (0, 0)
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle, sum(values))


def build_lamina() -> None:
    print("cargo build --release", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "--bin", "lamina"], cwd=REPO, check=True)


# --------------------------------------------------------------------- models
# Everything below `worker` runs inside the venv.


def mlp_weights(np, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    w = {}
    names = ["fc1", "fc2", "head"]
    for name, fan_in, fan_out in zip(names, MLP_DIMS, MLP_DIMS[1:]):
        w[f"{name}.weight"] = (rng.standard_normal((fan_in, fan_out)) * math.sqrt(2 / fan_in)).astype(np.float32)
        w[f"{name}.bias"] = (rng.standard_normal(fan_out) * 0.05).astype(np.float32)
    return w


ENCODER_LINEARS = [
    ("attention.query", D_MODEL, D_MODEL),
    ("attention.key", D_MODEL, D_MODEL),
    ("attention.value", D_MODEL, D_MODEL),
    ("attention.output", D_MODEL, D_MODEL),
    ("ffn.up", D_MODEL, D_FFN),
    ("ffn.down", D_FFN, D_MODEL),
]


def encoder_weights(np, seed: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    w = {}
    for name, fan_in, fan_out in ENCODER_LINEARS:
        limit = math.sqrt(6 / (fan_in + fan_out))
        w[f"{name}.weight"] = rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)
        w[f"{name}.bias"] = rng.uniform(-0.02, 0.02, fan_out).astype(np.float32)
    for norm in ("attention.norm", "ffn.norm"):
        w[f"{norm}.gain"] = (1 + 0.1 * rng.standard_normal(D_MODEL)).astype(np.float32)
        w[f"{norm}.bias"] = (0.1 * rng.standard_normal(D_MODEL)).astype(np.float32)
    return w


def onnx_model(kind: str, size: int, weights: dict):
    """The ONNX graph of models/bench/<kind>.lam (or of EfficientNet-Lite0);
    batch dims are symbolic."""
    if kind == "efficientnet":
        sys.path.insert(0, str(HERE))
        import efficientnet_onnx

        return efficientnet_onnx.build(weights).SerializeToString()
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def linear(x, prefix, out, activation=None):
        nodes.append(helper.make_node("MatMul", [x, const(f"{prefix}.weight", weights[f"{prefix}.weight"])], [f"{out}_mm"]))
        nodes.append(helper.make_node("Add", [f"{out}_mm", const(f"{prefix}.bias", weights[f"{prefix}.bias"])], [out if activation is None else f"{out}_pre"]))
        if activation == "relu":
            nodes.append(helper.make_node("Relu", [f"{out}_pre"], [out]))
        return out

    if kind == "sgemm":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", size])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", size])
        nodes.append(helper.make_node("MatMul", ["x", const("w", weights["w"])], ["y"]))
    elif kind == "mlp":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", MLP_DIMS[0]])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", MLP_DIMS[-1]])
        h1 = linear("x", "fc1", "h1", "relu")
        h2 = linear(h1, "fc2", "h2", "relu")
        logits = linear(h2, "head", "logits")
        nodes.append(helper.make_node("Softmax", [logits], ["y"], axis=-1))
    elif kind == "encoder":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SEQ, D_MODEL])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", SEQ, D_MODEL])
        split = const("split_shape", np.array([-1, SEQ, HEADS, HEAD_DIM], dtype=np.int64))
        merge = const("merge_shape", np.array([-1, SEQ, D_MODEL], dtype=np.int64))
        heads = {}
        for name, perm in (("query", [0, 2, 1, 3]), ("key", [0, 2, 3, 1]), ("value", [0, 2, 1, 3])):
            flat = linear("x", f"attention.{name}", name)
            nodes.append(helper.make_node("Reshape", [flat, split], [f"{name}_split"]))
            nodes.append(helper.make_node("Transpose", [f"{name}_split"], [f"{name}_heads"], perm=perm))
            heads[name] = f"{name}_heads"
        nodes.append(helper.make_node("MatMul", [heads["query"], heads["key"]], ["scores_raw"]))
        nodes.append(helper.make_node("Mul", ["scores_raw", const("scale", np.float32(1 / math.sqrt(HEAD_DIM)))], ["scores"]))
        nodes.append(helper.make_node("Softmax", ["scores"], ["probs"], axis=-1))
        nodes.append(helper.make_node("MatMul", ["probs", heads["value"]], ["context_heads"]))
        nodes.append(helper.make_node("Transpose", ["context_heads"], ["context_split"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", ["context_split", merge], ["context"]))
        attended = linear("context", "attention.output", "attended")
        nodes.append(helper.make_node("Add", [attended, "x"], ["residual1"]))
        nodes.append(helper.make_node(
            "LayerNormalization",
            ["residual1", const("attention.norm.gain", weights["attention.norm.gain"]), const("attention.norm.bias", weights["attention.norm.bias"])],
            ["h"], axis=-1, epsilon=1e-5))
        up = linear("h", "ffn.up", "up")
        # Exact GELU as exporters write it: 0.5 x (1 + erf(x / sqrt 2)); onnxruntime fuses it.
        nodes.append(helper.make_node("Mul", [up, const("inv_sqrt2", np.float32(1 / math.sqrt(2)))], ["up_scaled"]))
        nodes.append(helper.make_node("Erf", ["up_scaled"], ["up_erf"]))
        nodes.append(helper.make_node("Add", ["up_erf", const("one", np.float32(1))], ["up_erf1"]))
        nodes.append(helper.make_node("Mul", [up, "up_erf1"], ["up_gated"]))
        nodes.append(helper.make_node("Mul", ["up_gated", const("half", np.float32(0.5))], ["inner"]))
        down = linear("inner", "ffn.down", "down")
        nodes.append(helper.make_node("Add", [down, "h"], ["residual2"]))
        nodes.append(helper.make_node(
            "LayerNormalization",
            ["residual2", const("ffn.norm.gain", weights["ffn.norm.gain"]), const("ffn.norm.bias", weights["ffn.norm.bias"])],
            ["y"], axis=-1, epsilon=1e-5))
    else:
        raise ValueError(kind)
    graph = helper.make_graph(nodes, kind, [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def weights_for(np, kind: str, size: int) -> dict:
    if kind == "efficientnet":
        sys.path.insert(0, str(HERE))
        import efficientnet_onnx

        return efficientnet_onnx.load_weights()
    if kind == "sgemm":
        rng = np.random.default_rng(3)
        return {"w": rng.uniform(-1, 1, (size, size)).astype(np.float32)}
    if kind == "mlp":
        return mlp_weights(np)
    return encoder_weights(np)


def input_for(np, kind: str, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = {
        "sgemm": (size, size),
        "mlp": (size, MLP_DIMS[0]),
        "encoder": (size, SEQ, D_MODEL),
        "efficientnet": (size, 3, 224, 224),
    }[kind]
    return rng.uniform(-1, 1, shape).astype(np.float32)


def reference(np, kind: str, w: dict, x):
    """float64 numpy: the meaning of each model, independent of every engine."""
    x = x.astype(np.float64)
    w = {k: v.astype(np.float64) for k, v in w.items()}
    if kind == "sgemm":
        return x @ w["w"]
    if kind == "efficientnet":
        sys.path.insert(0, str(HERE))
        import efficientnet_onnx

        return efficientnet_onnx.reference_module().logits(x, w)

    def softmax(z):
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def layer_norm(z, g, b):
        mu = z.mean(axis=-1, keepdims=True)
        var = ((z - mu) ** 2).mean(axis=-1, keepdims=True)
        return (z - mu) / np.sqrt(var + 1e-5) * g + b

    def lin(z, p):
        return z @ w[f"{p}.weight"] + w[f"{p}.bias"]

    if kind == "mlp":
        h = np.maximum(lin(x, "fc1"), 0)
        h = np.maximum(lin(h, "fc2"), 0)
        return softmax(lin(h, "head"))
    b = x.shape[0]

    def split(z):
        return z.reshape(b, SEQ, HEADS, HEAD_DIM).transpose(0, 2, 1, 3)

    q, k, v = (split(lin(x, f"attention.{n}")) for n in ("query", "key", "value"))
    probs = softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(HEAD_DIM))
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, SEQ, D_MODEL)
    h = layer_norm(lin(context, "attention.output") + x, w["attention.norm.gain"], w["attention.norm.bias"])
    up = lin(h, "ffn.up")
    erf = np.vectorize(math.erf)
    inner = 0.5 * up * (1 + erf(up / math.sqrt(2)))
    return layer_norm(lin(inner, "ffn.down") + h, w["ffn.norm.gain"], w["ffn.norm.bias"])


# --------------------------------------------------------------------- worker


def time_runs(run, min_runs: int, min_time: float) -> dict:
    for _ in range(3):
        run()
    start = time.perf_counter()
    while time.perf_counter() - start < min(0.2, min_time / 5):
        run()
    samples = []
    cpu_start = time.process_time_ns()
    start = time.perf_counter()
    while len(samples) < min_runs or time.perf_counter() - start < min_time:
        t = time.perf_counter_ns()
        run()
        samples.append(time.perf_counter_ns() - t)
    # On-CPU time of all threads per run: unlike wall time, it does not grow
    # when other jobs take the CPU away mid-run.
    cpu_us_per_run = (time.process_time_ns() - cpu_start) / len(samples) / 1e3
    samples.sort()
    p90 = samples[min(len(samples), math.ceil(0.9 * len(samples))) - 1]
    return {
        "latency_us_median": statistics.median(samples) / 1e3,
        "latency_us_p90": p90 / 1e3,
        "cpu_us_per_run": cpu_us_per_run,
        "runs": len(samples),
    }


def input_name(kind: str) -> str:
    return "image" if kind == "efficientnet" else "x"


def cached_onnx_model(kind: str, size: int, weights: dict) -> bytes:
    """`onnx_model`, kept for EfficientNet (seconds to build) in the venv
    folder between worker processes; rebuilt when the weights are newer."""
    if kind != "efficientnet":
        return onnx_model(kind, size, weights)
    import efficientnet_onnx

    path = VENV / "efficientnet_lite0.onnx"
    if path.is_file() and path.stat().st_mtime >= efficientnet_onnx.WEIGHTS.stat().st_mtime:
        return path.read_bytes()
    data = onnx_model(kind, size, weights)
    part = path.with_suffix(f".{os.getpid()}.part")
    part.write_bytes(data)
    part.replace(path)
    return data


def worker(spec: dict) -> dict:
    """One measurement in this process; prints one JSON object."""
    import numpy as np

    kind, size, engine, threads = spec["kind"], spec["size"], spec["engine"], spec["threads"]
    w = weights_for(np, kind, size)
    x = input_for(np, kind, size)
    name = input_name(kind)
    result = {}
    if engine == "numpy":
        from threadpoolctl import threadpool_info

        blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        result["blas"] = {
            k: blas[0].get(k) for k in ("internal_api", "version", "architecture", "num_threads")
        } if blas else None
        result["numpy"] = np.__version__
        if kind == "sgemm":
            out = np.empty((size, size), dtype=np.float32)
            b = w["w"]

            def run():
                np.matmul(x, b, out=out)
        elif kind == "mlp":
            def run():
                h = np.maximum(x @ w["fc1.weight"] + w["fc1.bias"], 0)
                h = np.maximum(h @ w["fc2.weight"] + w["fc2.bias"], 0)
                z = h @ w["head.weight"] + w["head.bias"]
                e = np.exp(z - z.max(axis=-1, keepdims=True))
                return e / e.sum(axis=-1, keepdims=True)
        else:
            raise ValueError("numpy measures sgemm and the mlp only")
    elif engine == "onnxruntime":
        import onnxruntime as ort

        model = cached_onnx_model(kind, size, w)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        start = time.perf_counter()
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        session.run(None, {name: x})
        result["prepare_ms"] = (time.perf_counter() - start) * 1e3
        result["onnxruntime"] = ort.__version__
        feed = {name: x}

        def run():
            session.run(None, feed)
    elif engine == "tract":
        import tract

        model_bytes = cached_onnx_model(kind, size, w)
        with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
            f.write(model_bytes)
            f.flush()
            start = time.perf_counter()
            inference = tract.onnx().load(f.name)
            inference.set_input_fact(0, ",".join(str(d) for d in x.shape) + ",f32")
            runnable = tract.runtime_for_name("default").prepare(inference.into_model())
            runnable.run([x])
            result["prepare_ms"] = (time.perf_counter() - start) * 1e3
        result["tract"] = tract.version()

        def run():
            runnable.run([x])
    else:
        raise ValueError(engine)
    result.update(time_runs(run, spec["runs"], spec["min_time"]))
    return result


def check_worker(spec: dict) -> dict:
    """Same weights and input through onnxruntime, lamina and float64 numpy."""
    import numpy as np
    import onnxruntime as ort
    from safetensors.numpy import save_file

    kind, size = spec["kind"], spec["size"]
    w = weights_for(np, kind, size)
    x = input_for(np, kind, size, seed=5)
    name = input_name(kind)
    expected = reference(np, kind, w, x)
    scale = np.abs(expected).max()
    model = cached_onnx_model(kind, size, w)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    # EfficientNet's outputs are (probs, logits): compare the logits.
    which = 1 if kind == "efficientnet" else 0
    ort_out = session.run(None, {name: x})[which]
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/x.npy", x)
        if kind == "efficientnet":
            command = [spec["lamina"], "run", str(LAMINA_MODELS["efficientnet"]),
                       "--input", f"image={tmp}/x.npy", "--output-dir", f"{tmp}/out", "--threads", "2"]
            result = f"{tmp}/out/logits.npy"
        else:
            weights = spec.get("weights_out") or f"{tmp}/w.safetensors"
            save_file(w, weights)
            command = [spec["lamina"], "run", str(LAMINA_MODELS[kind]),
                       "--weights", weights, "--input", f"x={tmp}/x.npy",
                       "--output", f"{tmp}/y.npy", "--threads", "2"]
            result = f"{tmp}/y.npy"
        if kind == "sgemm":
            command += ["--bind", f"k={size}", "--bind", f"n={size}"]
        subprocess.run(command, check=True, capture_output=True)
        lamina_out = np.load(result)
        errors = {
            "onnxruntime_max_err": float(np.abs(ort_out - expected).max() / scale),
            "lamina_max_err": float(np.abs(lamina_out - expected).max() / scale),
        }
        if spec.get("tract"):
            import tract

            onnx_path = f"{tmp}/model.onnx"
            Path(onnx_path).write_bytes(model)
            inference = tract.onnx().load(onnx_path)
            inference.set_input_fact(0, ",".join(str(d) for d in x.shape) + ",f32")
            runnable = tract.runtime_for_name("default").prepare(inference.into_model())
            tract_out = runnable.run([x])[which].to_numpy()
            errors["tract_max_err"] = float(np.abs(tract_out - expected).max() / scale)
    return errors


# --------------------------------------------------------------------- driver


def configurations(only: set, with_tract: bool, isas: list, before: str = "") -> list:
    configs = []
    # One lamina configuration per kernel tier asked for (`None`: its default).
    laminas = [f"lamina@{isa}" for isa in isas] if isas else ["lamina"]
    if before:
        # The same configurations of another build, measured in the same rounds.
        laminas += [f"lamina-before@{isa}" for isa in isas] if isas else ["lamina-before"]
    if "sgemm" in only:
        for n in SGEMM_SIZES:
            for t in THREADS:
                for engine in ["numpy", "onnxruntime"] + laminas:
                    configs.append({"kind": "sgemm", "size": n, "threads": t, "engine": engine})
    if "mlp" in only:
        for b in MLP_BATCHES:
            for t in THREADS:
                engines = ["numpy", "onnxruntime"] + laminas + (["tract"] if with_tract and t == 1 else [])
                for engine in engines:
                    configs.append({"kind": "mlp", "size": b, "threads": t, "engine": engine})
    if "encoder" in only:
        for b in ENCODER_BATCHES:
            for t in THREADS:
                engines = ["onnxruntime"] + laminas + (["tract"] if with_tract and t == 1 else [])
                for engine in engines:
                    configs.append({"kind": "encoder", "size": b, "threads": t, "engine": engine})
    if "efficientnet" in only:
        for b in EFFICIENTNET_BATCHES:
            for t in THREADS:
                engines = ["onnxruntime"] + laminas + (["tract"] if with_tract and t == 1 else [])
                for engine in engines:
                    configs.append({"kind": "efficientnet", "size": b, "threads": t, "engine": engine})
    return configs


def lamina_command(config: dict, runs: int, min_time: float) -> list:
    kind, size = config["kind"], config["size"]
    binary = BEFORE if config["engine"].startswith("lamina-before") else str(LAMINA)
    command = [binary, "bench", str(LAMINA_MODELS[kind]), "--json",
               "--threads", str(config["threads"]), "--runs", str(runs), "--min-time", str(min_time)]
    if kind == "sgemm":
        command += ["--bind", f"m={size}", "--bind", f"k={size}", "--bind", f"n={size}"]
    else:
        command += ["--batch", str(size)]
    if kind in BENCH_WEIGHTS:
        command += ["--weights", str(BENCH_WEIGHTS[kind])]
    if "@" in config["engine"]:
        command += ["--isa", config["engine"].split("@", 1)[1]]
    return command


def measure_once(config: dict, runs: int, min_time: float) -> dict:
    threads = str(config["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=threads)
    if config["engine"].startswith("lamina"):
        command = lamina_command(config, runs, min_time)
    else:
        if config["engine"] == "numpy":
            for pin in OPENBLAS_PINS:
                env.pop(pin, None)
            env["OPENBLAS_NUM_THREADS"] = threads
        else:
            # Peers' own BLAS must not add threads of their own.
            env["OPENBLAS_NUM_THREADS"] = "1"
        spec = dict(config, runs=runs, min_time=min_time)
        command = [str(venv_python()), __file__, "--worker", json.dumps(spec)]
    busy0, total0 = cpu_times()
    ours0 = os.times()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    busy1, total1 = cpu_times()
    ours1 = os.times()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # CPUs kept busy by other jobs while this process ran: the machine's
    # busy time minus this measurement's own.
    cpus = os.cpu_count() or 1
    if total1 > total0:
        wall = (total1 - total0) / cpus
        busy_cpus = (busy1 - busy0) / wall
        own = ((ours1.children_user - ours0.children_user) + (ours1.children_system - ours0.children_system))
        own_cpus = own / max(ours1.elapsed - ours0.elapsed, 1e-9)
        result["other_busy_cpus"] = max(0.0, busy_cpus - own_cpus)
    return result


def key(c: dict) -> tuple:
    return (c["kind"], c["size"], c["threads"], c["engine"])


def flops(kind: str, size: int) -> float:
    if kind == "efficientnet":
        sys.path.insert(0, str(HERE))
        import efficientnet_onnx

        return float(size * efficientnet_onnx.flops_per_image())
    if kind == "sgemm":
        return 2.0 * size ** 3
    if kind == "mlp":
        return 2.0 * size * sum(a * b for a, b in zip(MLP_DIMS, MLP_DIMS[1:]))
    per_seq = 2 * SEQ * (4 * D_MODEL * D_MODEL + 2 * D_MODEL * D_FFN) + 2 * 2 * HEADS * SEQ * SEQ * HEAD_DIM
    return float(size * per_seq)


def summarize(samples: dict) -> dict:
    """Median over processes of each per-process median."""
    out = {}
    for k, results in samples.items():
        row = {"processes": len(results)}
        for field in ("latency_us_median", "latency_us_p90", "compile_ms", "prepare_ms", "gflops", "other_busy_cpus", "cpu_us_per_run"):
            values = [r[field] for r in results if r.get(field) is not None]
            if values:
                row[field] = statistics.median(values)
        row["latency_us_spread"] = [min(r["latency_us_median"] for r in results),
                                    max(r["latency_us_median"] for r in results)]
        for extra in ("blas", "onnxruntime", "numpy", "tract", "arena_bytes", "compile_breakdown_ms"):
            if extra in results[0]:
                row[extra] = results[0][extra]
        out[k] = row
    return out


def fmt(v, digits=1):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def report(summary: dict, only: set, with_tract: bool) -> str:
    lines = []

    def get(kind, size, threads, engine):
        return summary.get((kind, size, threads, engine))

    def gflops(kind, size, threads, engine):
        row = get(kind, size, threads, engine)
        return flops(kind, size) / row["latency_us_median"] / 1e3 if row else None

    def ratio(a, b):
        return None if a is None or b is None else a / b

    if "sgemm" in only:
        lines += ["### sgemm (square n x n x n), GFLOP/s (median of per-process medians)", "",
                  "| n | threads | numpy | onnxruntime | lamina | lamina / numpy | lamina / onnxruntime |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for n in SGEMM_SIZES:
            for t in THREADS:
                g = {e: gflops("sgemm", n, t, e) for e in ("numpy", "onnxruntime", "lamina")}
                lines.append(f"| {n} | {t} | {fmt(g['numpy'])} | {fmt(g['onnxruntime'])} | {fmt(g['lamina'])} | "
                             f"{fmt(ratio(g['lamina'], g['numpy']), 2)} | {fmt(ratio(g['lamina'], g['onnxruntime']), 2)} |")
        lines.append("")
    for kind, sizes, name in (("mlp", MLP_BATCHES, "MLP 784-512-512-10"), ("encoder", ENCODER_BATCHES, "Encoder block (seq 128, d 256, 4 heads, FFN 1024)"),
                              ("efficientnet", EFFICIENTNET_BATCHES, "EfficientNet-Lite0, 224 x 224 (real ImageNet checkpoint)")):
        if kind not in only:
            continue
        peers = ["onnxruntime"] + (["numpy"] if kind == "mlp" else []) + (["tract"] if with_tract else [])
        header = " | ".join(f"{p} us" for p in peers)
        speed = " | ".join(f"{p} / lamina" for p in peers)
        lines += [f"### {name}, median latency in microseconds", "",
                  f"| batch | threads | lamina us | {header} | lamina GFLOP/s | {speed} |",
                  "|---:|---:|---:|" + "---:|" * (2 * len(peers) + 1)]
        for b in sizes:
            for t in THREADS:
                lam = get(kind, b, t, "lamina")
                lam_us = lam["latency_us_median"] if lam else None
                peer_us = [get(kind, b, t, p)["latency_us_median"] if get(kind, b, t, p) else None for p in peers]
                cells = " | ".join(fmt(u) for u in peer_us)
                ratios = " | ".join(fmt(ratio(u, lam_us), 2) for u in peer_us)
                lines.append(f"| {b} | {t} | {fmt(lam_us)} | {cells} | {fmt(gflops(kind, b, t, 'lamina'))} | {ratios} |")
        lines += ["", "(`peer / lamina` is lamina's speed relative to the peer: above 1, lamina is faster.)", ""]
    for kind, sizes in (("sgemm", SGEMM_SIZES), ("mlp", MLP_BATCHES), ("encoder", ENCODER_BATCHES),
                        ("efficientnet", EFFICIENTNET_BATCHES)):
        if kind not in only:
            continue
        peers = ["onnxruntime"] + (["numpy"] if kind in ("sgemm", "mlp") else []) + (["tract"] if with_tract and kind != "sgemm" else [])
        lines += [f"### {kind}, 1 thread: on-CPU time per run, microseconds (mean; robust to other jobs taking the CPU)", "",
                  f"| size | lamina us | lamina GFLOP/s | {' | '.join(f'{p} us' for p in peers)} | {' | '.join(f'{p} / lamina' for p in peers)} |",
                  "|---:|---:|---:|" + "---:|" * (2 * len(peers))]
        for size in sizes:
            lam = (get(kind, size, 1, "lamina") or {}).get("cpu_us_per_run")
            cpu = [(get(kind, size, 1, p) or {}).get("cpu_us_per_run") for p in peers]
            rate = flops(kind, size) / lam / 1e3 if lam else None
            lines.append(f"| {size} | {fmt(lam)} | {fmt(rate)} | {' | '.join(fmt(c) for c in cpu)} | "
                         f"{' | '.join(fmt(ratio(c, lam), 2) for c in cpu)} |")
        lines.append("")
    compile_rows = []
    for kind, size in (("mlp", 1), ("encoder", 1), ("efficientnet", 1)):
        lam = get(kind, size, 1, "lamina")
        ort = get(kind, size, 1, "onnxruntime")
        trc = get(kind, size, 1, "tract")
        if lam:
            parts = lam.get("compile_breakdown_ms") or {}
            detail = ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
            compile_rows.append(f"| {kind} | {fmt(lam.get('compile_ms'), 2)} ({detail}) | "
                                f"{fmt(ort.get('prepare_ms') if ort else None, 2)} | {fmt(trc.get('prepare_ms') if trc else None, 2)} |")
    if compile_rows:
        lines += ["### Compile time, ms (lamina: parse to first plan, weights read from the safetensors file of the "
                  "peers' weights (EfficientNet: its checkpoint), `lamina bench`'s breakdown; onnxruntime and tract: "
                  "model load + session creation + first run)", "",
                  "| model | lamina | onnxruntime | tract |", "|---|---:|---:|---:|", *compile_rows, ""]
    return "\n".join(lines)


def tier_reports(summary: dict, only: set, with_tract: bool, isas: list) -> list:
    """The tables and targets once per lamina tier (and per build, with
    --lamina-before), each against the same peer rows."""
    out = []
    for build in ("lamina", "lamina-before"):
        for isa in isas or [None]:
            engine = f"{build}@{isa}" if isa else build
            if not any(k[3] == engine for k in summary):
                continue
            view = {k: v for k, v in summary.items() if not k[3].startswith("lamina")}
            view.update({(k[0], k[1], k[2], "lamina"): v for k, v in summary.items() if k[3] == engine})
            title = f"## lamina{f' `--isa {isa}`' if isa else ''}{f' (before: {BEFORE})' if build != 'lamina' else ''}"
            out += [title, "", report(view, only, with_tract), targets(view)]
    return out


def targets(summary: dict) -> str:
    def us(kind, size, threads, engine):
        row = summary.get((kind, size, threads, engine))
        return row["latency_us_median"] if row else None

    def gf(kind, size, threads, engine):
        u = us(kind, size, threads, engine)
        return flops(kind, size) / u / 1e3 if u else None

    checks = []

    def check(name, value, goal, ok):
        if value is None:
            checks.append(f"| {name} | not measured | {goal} | - |")
        else:
            checks.append(f"| {name} | {value} | {goal} | {'met' if ok else 'NOT met'} |")

    # The goals of issue 9 (full-width kernels) and issue 10 (vision), as the issues state them.
    for size in (512, 1024):
        for t in THREADS:
            lam, npy = gf("sgemm", size, t, "lamina"), gf("sgemm", size, t, "numpy")
            check(f"sgemm {size}, {t} thread(s)", lam and npy and f"{lam / npy:.2f}x numpy ({lam:.1f} vs {npy:.1f} GFLOP/s)",
                  ">= 0.9x numpy", lam and npy and lam / npy >= 0.9)
    lam, npy = gf("sgemm", 64, 1, "lamina"), gf("sgemm", 64, 1, "numpy")
    check("sgemm 64, 1 thread", lam and npy and f"{lam / npy:.2f}x numpy ({lam:.1f} vs {npy:.1f} GFLOP/s)",
          ">= 1.0x numpy", lam and npy and lam / npy >= 1.0)
    # tract runs on one thread: each lamina thread count is held to its latency.
    trc = us("mlp", 1, 1, "tract")
    for t in THREADS:
        lam, ort = us("mlp", 1, t, "lamina"), us("mlp", 1, t, "onnxruntime")
        check(f"MLP batch 1, {t} thread(s): latency vs onnxruntime", lam and ort and f"{lam:.1f} vs {ort:.1f} us ({lam / ort:.2f}x)",
              "<= 1.0x", lam and ort and lam <= ort)
        check(f"MLP batch 1, {t} thread(s): latency vs tract (1 thread)", lam and trc and f"{lam:.1f} vs {trc:.1f} us ({lam / trc:.2f}x)",
              "<= 1.0x", lam and trc and lam <= trc)
    lam, ort = us("mlp", 64, 2, "lamina"), us("mlp", 64, 2, "onnxruntime")
    check("MLP batch 64, 2 threads", lam and ort and f"{ort / lam:.2f}x onnxruntime throughput", ">= 0.9x", lam and ort and ort / lam >= 0.9)
    for b in ENCODER_BATCHES:
        for t in THREADS:
            lam, ort = us("encoder", b, t, "lamina"), us("encoder", b, t, "onnxruntime")
            check(f"encoder batch {b}, {t} thread(s)", lam and ort and f"{ort / lam:.2f}x onnxruntime throughput",
                  ">= 0.9x", lam and ort and ort / lam >= 0.9)
    for b in EFFICIENTNET_BATCHES:
        for t in THREADS:
            lam, ort = us("efficientnet", b, t, "lamina"), us("efficientnet", b, t, "onnxruntime")
            check(f"EfficientNet-Lite0 batch {b}, {t} thread(s), vs onnxruntime",
                  lam and ort and f"{ort / lam:.2f}x onnxruntime throughput ({lam / 1e3:.1f} vs {ort / 1e3:.1f} ms)",
                  ">= 0.9x", lam and ort and ort / lam >= 0.9)
            trc = us("efficientnet", b, 1, "tract")
            check(f"EfficientNet-Lite0 batch {b}, {t} thread(s), vs tract (1 thread)",
                  lam and trc and f"{trc / lam:.2f}x tract throughput ({lam / 1e3:.1f} vs {trc / 1e3:.1f} ms)",
                  "> 1x", lam and trc and trc / lam > 1)
    for kind, goal in (("mlp", 5), ("encoder", 10), ("efficientnet", 50)):
        row = summary.get((kind, 1, 1, "lamina"))
        c = row.get("compile_ms") if row else None
        check(f"compile time, {kind}", c and f"{c:.2f} ms", f"<= {goal} ms", c and c <= goal)
    return "\n".join(["### Targets", "", "| target | measured | goal | |", "|---|---|---|---|", *checks, ""])


def main() -> None:
    global BEFORE, LAMINA
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--check-worker", help=argparse.SUPPRESS)
    parser.add_argument("--only", default="sgemm,mlp,encoder", help="comma-separated: sgemm, mlp, encoder, "
                        "efficientnet (needs bash models/efficientnet_lite0/fetch.sh; not in the default set)")
    parser.add_argument("--rounds", type=int, default=5, help="separate processes per measurement (>= 5 for a report)")
    parser.add_argument("--runs", type=int, default=20, help="minimum timed runs per process")
    parser.add_argument("--min-time", type=float, default=1.0, help="minimum timed seconds per process")
    parser.add_argument("--no-build", action="store_true", help="use target/release/lamina as it is")
    parser.add_argument("--no-tract", action="store_true", help="do not try to install and measure tract")
    parser.add_argument("--quick", action="store_true", help="1 round, 0.2 s per process: a smoke test")
    parser.add_argument("--out", default=str(HERE / "results.json"), help="where to write all results")
    parser.add_argument("--isa", default="", help="comma-separated lamina kernel tiers to measure in the same run "
                        "(avx512, avx2, baseline), one table set each [default: lamina's default tier only]")
    parser.add_argument("--lamina", default="", help="the lamina binary to measure [default: target/release/lamina, "
                        "built first unless --no-build]")
    parser.add_argument("--lamina-before", default="", help="another lamina binary (e.g. a copy of the build before a "
                        "change) measured in the same rounds, reported in its own tables")
    parser.add_argument("--sizes", default="", help="override the sizes, e.g. sgemm=64:512:1024,mlp=1:64,encoder=1")
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.check_worker:
        print(json.dumps(check_worker(json.loads(args.check_worker))))
        return

    if args.quick:
        args.rounds, args.min_time, args.runs = 1, 0.2, 5
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(KINDS)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    isas = [s.strip() for s in args.isa.split(",") if s.strip()]
    global SGEMM_SIZES, MLP_BATCHES, ENCODER_BATCHES, EFFICIENTNET_BATCHES
    for part in filter(None, (p.strip() for p in args.sizes.split(","))):
        kind, _, values = part.partition("=")
        sizes = [int(v) for v in values.split(":") if v]
        if kind == "sgemm":
            SGEMM_SIZES = sizes
        elif kind == "mlp":
            MLP_BATCHES = sizes
        elif kind == "encoder":
            ENCODER_BATCHES = sizes
        elif kind == "efficientnet":
            EFFICIENTNET_BATCHES = sizes
        else:
            parser.error(f"--sizes: unknown kind {kind}")
    BEFORE = args.lamina_before
    if args.lamina:
        LAMINA = Path(args.lamina).resolve()
        if not LAMINA.is_file():
            parser.error(f"--lamina: no file {LAMINA}")
    if BEFORE and not Path(BEFORE).is_file():
        parser.error(f"--lamina-before: no file {BEFORE}")
    installed = ensure_venv(with_tract=not args.no_tract)
    with_tract = bool(installed.get("tract")) and not args.no_tract
    if not args.no_build and not args.lamina:
        build_lamina()
    machine = machine_line()
    print(f"machine: {machine}", file=sys.stderr)

    # The same function in every engine, before anything is timed.
    checks = {}
    weights_dir = tempfile.TemporaryDirectory(prefix="lamina-peers-")
    for kind, size in (("sgemm", 64), ("mlp", 4), ("encoder", 2), ("efficientnet", 2)):
        if kind in only:
            spec = {"kind": kind, "size": size, "lamina": str(LAMINA), "tract": with_tract and kind != "sgemm"}
            if kind in ("mlp", "encoder"):
                # Their weights do not depend on the batch size.
                spec["weights_out"] = BENCH_WEIGHTS[kind] = f"{weights_dir.name}/{kind}.safetensors"
            done = subprocess.run([str(venv_python()), __file__, "--check-worker", json.dumps(spec)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"correctness check for {kind} failed:\n{done.stderr}")
            checks[kind] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"check {kind}: {checks[kind]}", file=sys.stderr)
            worst = max(checks[kind].values())
            if worst > 1e-4:
                sys.exit(f"{kind}: engines disagree with the float64 reference ({checks[kind]})")

    configs = configurations(only, with_tract, isas, BEFORE)
    samples: dict = {}
    started = time.time()
    for r in range(args.rounds):
        for i, config in enumerate(configs):
            print(f"\rround {r + 1}/{args.rounds}, {i + 1}/{len(configs)}: "
                  f"{config['engine']} {config['kind']} {config['size']} x{config['threads']}      ",
                  end="", file=sys.stderr, flush=True)
            samples.setdefault(key(config), []).append(measure_once(config, args.runs, args.min_time))
    print(f"\ndone in {time.time() - started:.0f} s", file=sys.stderr)

    summary = summarize(samples)
    background = [r["other_busy_cpus"] for results in samples.values() for r in results if "other_busy_cpus" in r]
    versions = {}
    for row in summary.values():
        for extra in ("blas", "onnxruntime", "numpy", "tract"):
            if extra in row:
                versions[extra] = row[extra]
    text = "\n".join([f"machine: {machine}", f"versions: {json.dumps(versions)}",
                      f"checks (max error / max |value| vs float64 numpy): {json.dumps(checks)}",
                      f"rounds: {args.rounds} processes per measurement, each >= {args.runs} runs and >= {args.min_time} s",
                      f"other jobs on the machine while measuring: median {statistics.median(background) if background else float('nan'):.2f} "
                      f"CPUs busy (max {max(background) if background else float('nan'):.2f})", "",
                      *tier_reports(summary, only, with_tract, isas)])
    print(text)
    Path(args.out).write_text(json.dumps({
        "machine": machine, "versions": versions, "checks": checks, "rounds": args.rounds,
        "other_busy_cpus_median": statistics.median(background) if background else None,
        "results": [{"kind": k[0], "size": k[1], "threads": k[2], "engine": k[3], **v} for k, v in summary.items()],
        "raw": [{"kind": k[0], "size": k[1], "threads": k[2], "engine": k[3], "processes": v} for k, v in samples.items()],
    }, indent=1))


if __name__ == "__main__":
    main()
