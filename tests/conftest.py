import contextlib
import gc
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

# Python's automatic full collections scan every live object (near a million
# in a worker that has traced TensorFlow graphs) and set in about twenty times
# while test_export.py and test_train.py run: made rare, those two modules ran
# 13-18% faster (196-200 s against 225-243 s). Younger objects are collected
# as usual.
gc.set_threshold(*gc.get_threshold()[:2], 1000)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(items):
    """Tests marked `start_first` first: the kill -9 chain of
    test_train_faults.py (~30 s) was collected near the end and ran last in
    its worker, the other idle for 23-31 s. Started first, full runs took
    168-179 s against 177-202 s (interleaved), the workers ending closer."""
    items.sort(key=lambda item: item.get_closest_marker("start_first") is None)


def pytest_unconfigure(config):
    """pytest's last check for unraisable exceptions runs five full
    collections as a worker ends: over a worker's last garbage (TensorFlow's
    traced graphs, ~2 million objects) they took 2 s to more than 10 s, and
    xdist kills a worker that has not ended in 10 s. The process is about to
    exit: its objects are left to the operating system."""
    gc.freeze()


# Small enough for 2 CPU cores, large enough to keep every block distinct
# (w0 < 64 exercises the stem's min(64, w0) rule).
TINY_WIDTHS = (16, 24, 32, 48)


def randomize_batch_norm(model, seed=0):
    """Gives every BatchNormalization layer non-trivial statistics and affine
    parameters, so that tests see what inference-mode BN really does."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                    rng.normal(0, 0.2, beta.shape).astype("float32"),
                    rng.normal(0, 0.2, mean.shape).astype("float32"),
                    rng.uniform(0.5, 2.0, var.shape).astype("float32"),
                ]
            )
    return model


def infer(model, inputs):
    """The model's inference output for `inputs` (an array or a list of
    arrays, cast to float32) as numpy, by an eager call: `predict` traces a
    graph per model and input shape, which costs more than a few batches."""
    import keras

    inputs = keras.tree.map_structure(lambda array: np.asarray(array, "float32"), inputs)
    return keras.ops.convert_to_numpy(model(inputs, training=False))


def assert_same_outputs(original, fused, sizes):
    """`fused` (a reparameterized model) computes what `original` does, to 1e-4,
    on random images of each `(height, width)` of `sizes`."""
    for height, width in sizes:
        images = np.random.default_rng(0).random((2, height, width, 3), dtype=np.float32)
        expected = infer(original, images)
        np.testing.assert_allclose(infer(fused, images), expected, rtol=0, atol=1e-4)
        assert np.abs(expected).max() > 1e-2  # else the check above would be weak


def set_known_answer(model, dark, light, win):
    """Sets the classifier (`predictions`, two classes) so that uniform images
    of gray level `dark` get class 0 and of level `light` class 1, each with
    probability `win`: the logit difference is `logit(win) * d.(f - m) / |d|^2 * 2`
    for pooled features f, d = f_dark - f_light and m their midpoint, i.e.
    +-logit(win) at the two images. Returns the model and its pooled-features model."""
    import keras

    features = keras.Model(model.input, model.get_layer("avg_pool").output)
    f_dark, f_light = (infer(features, np.full((1, *model.input_shape[1:3], 3), level))[0].astype("float64")
                       for level in (dark, light))
    d = f_dark - f_light
    c = np.log(win / (1 - win)) / (d @ d)
    kernel = np.stack([c * d, -c * d], axis=1)
    bias = np.array([-c * d @ (f_dark + f_light) / 2, c * d @ (f_dark + f_light) / 2])
    model.get_layer("predictions").set_weights([kernel.astype("float32"), bias.astype("float32")])
    return model, features


@pytest.fixture
def tiny_model():
    from keras_parnet import ParNet

    return randomize_batch_norm(ParNet(TINY_WIDTHS, classes=3, name="tiny"))


@pytest.fixture(scope="session")
def named_model():
    """`named_model("s")` ... `named_model("xl")`: the named builder's model
    (any input size, 1000 classes), built once per session: S-XL take seconds each."""
    import functools

    import keras_parnet

    return functools.cache(lambda size: getattr(keras_parnet, f"parnet_{size}")())


# One block per stream instead of (4, 5, 5): the model of the modules that
# mark themselves `pytest.mark.usefixtures("shallow_module")`, those of what
# is done with a model (training's machinery, saving, exporting, predicting,
# fine-tuning) and of folding and preprocessing (they act block by block),
# where depth changes nothing but the time: a tiny ParNet builds, traces and
# exports in about half the time. The architecture's tests (blocks, models,
# convert) keep the real depths.
SHALLOW_STREAM_DEPTHS = (1, 1, 1)


@contextlib.contextmanager
def shallow_streams():
    """Builders use `SHALLOW_STREAM_DEPTHS` inside."""
    from keras_parnet import configs

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(configs, "STREAM_DEPTHS", SHALLOW_STREAM_DEPTHS)
        yield


@pytest.fixture(scope="module")
def shallow_module():
    """Builders make ParNets of `SHALLOW_STREAM_DEPTHS` during the whole
    module (its run folders are built and loaded with them; `run_cli` follows)."""
    with shallow_streams():
        yield


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """A 1000-class checkpoint of the official network at tiny widths and
    shallow streams (for shallow modules), random weights and BatchNorm
    statistics, converted: `(run folder, the converted model)`; the run folder
    also holds the weights as a legacy `.h5`. test_convert checks the
    converter at the real depths."""
    pytest.importorskip("torch")
    import h5py
    import torch
    import torch_parnet

    from keras_parnet import compat, convert

    classes = 1000
    root = tmp_path_factory.mktemp("converted")
    # SimpNet's block counts include each stream's downsampling block.
    blocks = (*(depth + 1 for depth in SHALLOW_STREAM_DEPTHS), 1)
    network = torch_parnet.SimpNet(TINY_WIDTHS, blocks, additional_branches=[["swish"]], num_classes=classes)
    torch.save(torch_parnet.randomized(network, 0).state_dict(), root / "tiny.pth")
    with shallow_streams():
        model = convert.convert_checkpoint(root / "tiny.pth", "s", TINY_WIDTHS, "relu", classes)
    run_dir = convert.write_run(root / "run", model, "s", TINY_WIDTHS, "relu", 32,
                                [f"class_{index}" for index in range(classes)], root / "tiny.pth")
    with h5py.File(run_dir / "legacy.h5", "w") as file:
        compat.save_legacy_h5_weights(model, file)
    return run_dir, model


# The start of a script that builds ParNets of shallow streams in a fresh
# process (it imports neither Keras nor TensorFlow).
SHALLOW_PRELUDE = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import SHALLOW_STREAM_DEPTHS
from keras_parnet import configs
configs.STREAM_DEPTHS = SHALLOW_STREAM_DEPTHS
"""

# `python -c SHALLOW_MAIN MODULE ARGS...` runs `python -m MODULE ARGS...` with shallow streams.
SHALLOW_MAIN = SHALLOW_PRELUDE + """
import runpy
runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
"""


def with_eager_steps(compiled_model):
    """`train.compiled_model` whose models run their steps eagerly: a tiny
    ParNet's few steps run faster than tracing them (each trace of a training
    or validation step costs several seconds)."""

    def eager_model(*args, **kwargs):
        model = compiled_model(*args, **kwargs)
        model.run_eagerly = True
        return model

    return eager_model


@pytest.fixture
def eager_training(monkeypatch):
    """train.py with eager steps (`with_eager_steps`)."""
    from keras_parnet import train

    monkeypatch.setattr(train, "compiled_model", with_eager_steps(train.compiled_model))


def add_training_callback(monkeypatch, callback):
    """Makes train.py's runs use the Keras `callback` after their own
    (`callbacks.training_callbacks`); returns the unpatched function."""
    from keras_parnet import callbacks

    original = callbacks.training_callbacks
    monkeypatch.setattr(callbacks, "training_callbacks", lambda *a, **k: original(*a, **k) + [callback])
    return original


def interrupt_after(epochs):
    """A Keras callback that stops training as Ctrl-C would (KeyboardInterrupt)
    at the end of epoch `epochs` (1-based)."""
    import keras

    class InterruptAfter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == epochs:
                raise KeyboardInterrupt

    return InterruptAfter()


def write_dark_bright_dataset(root, train_counts, test_counts, suffix=".jpg"):
    """A two-class image folder a model learns in a few steps: noisy 40 px
    images around gray level 40 (`dark`) and 210 (`bright`).

    `train_counts` / `test_counts` are `(dark, bright)` image counts."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, counts in (("train", train_counts), ("test", test_counts)):
        for (name, level), count in zip((("dark", 40), ("bright", 210)), counts):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = np.clip(rng.normal(level, 20, (40, 40, 3)), 0, 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{index}{suffix}")
    return root


@contextlib.contextmanager
def _mounted_tmpfs(path, options):
    """Gives `path` with a tmpfs mounted on it, unmounted afterwards (root
    only: CI and the dev machines run as root); skips the test where mounting
    is not allowed."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder on a read-only file system (chmod does not stop root)."""
    with _mounted_tmpfs(tmp_path / "read_only", "size=1m,ro") as path:
        yield path


@pytest.fixture
def full_dir(tmp_path):
    """A folder on a file system with no space left."""
    with _mounted_tmpfs(tmp_path / "full", "size=256k") as path:
        try:
            with open(path / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass
        yield path


def run_cli(module, *args, cwd=None, env=None, timeout=600):
    """Runs `python -m <module> args` in a fresh process, as a user would,
    with no standard input, building ParNets of this process's stream depths
    (see `shallow_module`); returns the `CompletedProcess` (text output)."""
    import subprocess
    import sys

    from keras_parnet import configs

    shallow = configs.STREAM_DEPTHS == SHALLOW_STREAM_DEPTHS
    environment = {**os.environ, "MPLBACKEND": "Agg", **(env or {})}
    command = ["-c", SHALLOW_MAIN] if shallow else ["-m"]
    return subprocess.run([sys.executable, *command, module, *map(str, args)], cwd=cwd, env=environment,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def main_as_process(main, capsys, *argv):
    """A tool's `main(argv)` called in this process, as `run_cli` returns a
    process (`CompletedProcess`): TensorFlow starts once per worker instead of
    once per call."""
    import subprocess

    argv = [str(arg) for arg in argv]
    status = main(argv)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, status, out, err)


def assert_one_line_error(result, *words, status=2):
    """The process exited with `status`, printed no traceback, and its last
    stderr line is `error: ...` naming every one of `words`."""
    assert result.returncode == status, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-2000:]
    for word in words:
        assert word in last, (word, last)
    return last


@pytest.fixture
def small_disk(tmp_path):
    """A folder on its own 32 MB file system, for tests that fill it part way."""
    with _mounted_tmpfs(tmp_path / "small_disk", "size=32m") as path:
        yield path

