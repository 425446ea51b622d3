"""Makes the small weight and input files the CLI run-time error tests use.

Run by hand from this folder: python3 make.py
"""
import numpy as np
from safetensors.numpy import save_file

rng = np.random.default_rng(0)
w = rng.standard_normal((4, 3)).astype(np.float32)
b = rng.standard_normal(3).astype(np.float32)
save_file({"fc.weight": w, "fc.bias": b}, "good.safetensors")
save_file({"fc.weigth": w, "head.weight": w}, "missing.safetensors")
save_file({"fc.weight": w[:, :2].copy(), "fc.bias": b.astype(np.float16)}, "misshaped.safetensors")
x = rng.standard_normal((2, 4)).astype(np.float32)
np.save("x.npy", x)
np.save("x_int.npy", np.arange(8, dtype=np.int64).reshape(2, 4))
np.save("x_wide.npy", rng.standard_normal((2, 5)).astype(np.float32))
np.save("x_f64.npy", x.astype(np.float64))
np.save("expected_y.npy", np.maximum(x.astype(np.float64) @ w + b, 0).astype(np.float32))
with open("not_weights.safetensors", "wb") as f:
    f.write(b"this is not a safetensors file")
