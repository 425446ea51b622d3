"""One model shared by many Python threads, and the GIL released while it
compiles and runs."""

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import lamina
from conftest import REPO

MLP = REPO / "models" / "bench" / "mlp.lam"


def batch(seed: int, rows: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 784), dtype=np.float32)


def test_threads_sharing_one_model_get_the_answers_of_one():
    model = lamina.load(MLP, threads=1)
    inputs = [batch(seed, 1 + seed % 5) for seed in range(16)]
    name = model.outputs[0].name
    expected = [model.run({"x": x})[name] for x in inputs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            results = list(pool.map(lambda x: model.run({"x": x})[name], inputs))
            for got, want in zip(results, expected):
                assert np.array_equal(got, want)


def test_run_releases_the_gil():
    # With a switch interval far longer than the test, a thread holding the
    # GIL keeps it until it blocks or releases it itself: the main thread can
    # only look at `finished` while the run is in flight if run released it.
    model = lamina.load(MLP, backend="interp")
    x = batch(0, 64)
    started, finished = threading.Event(), threading.Event()

    def work():
        started.set()
        model.run({"x": x})
        finished.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        worker = threading.Thread(target=work)
        worker.start()
        started.wait()
        seen_running = not finished.is_set()
        worker.join()
    finally:
        sys.setswitchinterval(interval)
    assert seen_running, "the main thread ran only after the run finished: the GIL was held"
