"""One SGD training step, forward + hand-written backward + update, of the
networks benches/train_peer times lamina and candle on: the 784-512-512-10
MLP (cross-entropy on its logits) and the encoder block of
benches/train_peer/encoder_train.lam (cross-entropy on the mean over the
sequence). numpy with its OpenBLAS; threads from OPENBLAS_NUM_THREADS, set
by the caller before numpy loads.

    python3 numpy_step.py NET BATCH STEPS   ->  one JSON line: per-step CPU ms

`--check` instead compares the hand-written gradients with central
differences in float64 on small random cases, and exits 1 on a mismatch.
"""

import json
import sys
import time

import numpy as np
from scipy.special import erf

LR = 0.01


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    p = e / e.sum(axis=1, keepdims=True)
    n = logits.shape[0]
    loss = -np.log(p[np.arange(n), labels]).mean()
    d = p
    d[np.arange(n), labels] -= 1.0
    d /= n
    return loss, d


def mlp_params(rng, dtype):
    sizes = [(784, 512), (512, 512), (512, 10)]
    params = []
    for fan_in, fan_out in sizes:
        params.append((rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(dtype))
        params.append(np.zeros(fan_out, dtype))
    return params


def mlp_grads(params, x, labels):
    w1, b1, w2, b2, w3, b3 = params
    z1 = x @ w1 + b1
    h1 = np.maximum(z1, 0)
    z2 = h1 @ w2 + b2
    h2 = np.maximum(z2, 0)
    loss, d = softmax_cross_entropy(h2 @ w3 + b3, labels)
    gw3, gb3 = h2.T @ d, d.sum(0)
    dz2 = (d @ w3.T) * (z2 > 0)
    gw2, gb2 = h1.T @ dz2, dz2.sum(0)
    dz1 = (dz2 @ w2.T) * (z1 > 0)
    gw1, gb1 = x.T @ dz1, dz1.sum(0)
    return loss, [gw1, gb1, gw2, gb2, gw3, gb3]


S, D, H, DH, F = 128, 256, 4, 64, 1024


def encoder_params(rng, dtype):
    def linear(fan_in, fan_out):
        bound = np.sqrt(6.0 / (fan_in + fan_out))
        return [rng.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype),
                rng.uniform(-0.02, 0.02, fan_out).astype(dtype)]

    params = linear(D, D) + linear(D, D) + linear(D, D) + linear(D, D)
    params += [np.ones(D, dtype), np.zeros(D, dtype)]
    params += linear(D, F) + linear(F, D)
    params += [np.ones(D, dtype), np.zeros(D, dtype)]
    return params


def layer_norm(r, gain, bias, eps=1e-5):
    mu = r.mean(-1, keepdims=True)
    centred = r - mu
    rstd = 1.0 / np.sqrt((centred * centred).mean(-1, keepdims=True) + eps)
    xhat = centred * rstd
    return xhat * gain + bias, (xhat, rstd)


def layer_norm_back(dy, gain, saved):
    xhat, rstd = saved
    axes = tuple(range(dy.ndim - 1))
    dgain, dbias = (dy * xhat).sum(axes), dy.sum(axes)
    dxhat = dy * gain
    dr = rstd * (dxhat - dxhat.mean(-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dr, dgain, dbias


def heads(t, b):
    return t.reshape(b, S, H, DH).transpose(0, 2, 1, 3)


def unheads(t, b):
    return t.transpose(0, 2, 1, 3).reshape(b, S, D)


def encoder_grads(params, x, labels):
    (wq, bq, wk, bk, wv, bv, wo, bo, g1, be1, wu, bu, wd, bd, g2, be2) = params
    b = x.shape[0]
    x2 = x.reshape(b * S, D)
    q, k, v = (heads((x2 @ w + bias).reshape(b, S, D), b)
               for w, bias in ((wq, bq), (wk, bk), (wv, bv)))
    scores = (q @ k.transpose(0, 1, 3, 2)) * 0.125
    e = np.exp(scores - scores.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    context = unheads(p @ v, b).reshape(b * S, D)
    attended = context @ wo + bo
    h, ln1 = layer_norm(attended + x2, g1, be1)
    u = h @ wu + bu
    cdf = 0.5 * (1.0 + erf(u / np.sqrt(2.0)))
    inner = u * cdf
    f = inner @ wd + bd
    y, ln2 = layer_norm(f + h, g2, be2)
    loss, dlogits = softmax_cross_entropy(y.reshape(b, S, D).mean(1), labels)

    dy = np.broadcast_to(dlogits[:, None, :] / S, (b, S, D)).reshape(b * S, D)
    dr2, dg2, dbe2 = layer_norm_back(dy, g2, ln2)
    gwd, gbd = inner.T @ dr2, dr2.sum(0)
    dinner = dr2 @ wd.T
    du = dinner * (cdf + u * np.exp(-0.5 * u * u) / np.sqrt(2.0 * np.pi))
    gwu, gbu = h.T @ du, du.sum(0)
    dh = du @ wu.T + dr2
    dr1, dg1, dbe1 = layer_norm_back(dh, g1, ln1)
    gwo, gbo = context.T @ dr1, dr1.sum(0)
    dcontext = heads((dr1 @ wo.T).reshape(b, S, D), b)
    dp = dcontext @ v.transpose(0, 1, 3, 2)
    dv = p.transpose(0, 1, 3, 2) @ dcontext
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * 0.125
    dq = ds @ k
    dk = ds.transpose(0, 1, 3, 2) @ q
    grads = []
    for dt in (dq, dk, dv):
        d2 = unheads(dt, b).reshape(b * S, D)
        grads += [x2.T @ d2, d2.sum(0)]
    return loss, grads + [gwo, gbo, dg1, dbe1, gwu, gbu, gwd, gbd, dg2, dbe2]


NETS = {
    "mlp": (mlp_params, mlp_grads, lambda b: (b, 784), 10),
    "encoder": (encoder_params, encoder_grads, lambda b: (b, S, D), D),
}


def step(grads_of, params, x, labels):
    loss, grads = grads_of(params, x, labels)
    for p, g in zip(params, grads):
        p -= LR * g
    return loss


def measure(net, batch, steps):
    make, grads_of, shape, classes = NETS[net]
    rng = np.random.default_rng(0)
    params = make(rng, np.float32)
    xs = [rng.standard_normal(shape(batch)).astype(np.float32) for _ in range(4)]
    ys = [rng.integers(0, classes, batch) for _ in range(4)]
    for i in range(3):
        step(grads_of, params, xs[i % 4], ys[i % 4])
    times = []
    for i in range(steps):
        start = time.process_time()
        step(grads_of, params, xs[i % 4], ys[i % 4])
        times.append(time.process_time() - start)
    times.sort()
    return {"engine": "numpy", "net": net, "batch": batch, "steps": steps,
            "median_ms": 1e3 * times[len(times) // 2], "min_ms": 1e3 * times[0]}


def check():
    """Hand-written gradients against float64 central differences."""
    ok = True
    for net, batch in (("mlp", 3), ("encoder", 1)):
        make, grads_of, shape, classes = NETS[net]
        rng = np.random.default_rng(1)
        params = make(rng, np.float64)
        x = rng.standard_normal(shape(batch))
        labels = rng.integers(0, classes, batch)
        _, grads = grads_of(params, x, labels)
        worst = 0.0
        for p, g in zip(params, grads):
            for _ in range(3):
                i = tuple(rng.integers(0, n) for n in p.shape)
                keep = p[i]
                p[i] = keep + 1e-6
                up, _ = grads_of(params, x, labels)
                p[i] = keep - 1e-6
                down, _ = grads_of(params, x, labels)
                p[i] = keep
                numeric = (up - down) / 2e-6
                worst = max(worst, abs(numeric - g[i]) / (abs(numeric) + 1e-6))
        print(f"{net}: worst relative gradient error {worst:.2e}")
        ok &= worst < 1e-4
    return ok


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if check() else 1)
    net, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(measure(net, batch, steps)))
