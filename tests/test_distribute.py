"""Distributed training: strategy choice, a two-worker cluster on localhost,
mirrored replicas against one device, mixed precision."""

import collections
import csv
import json
import math
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import SHALLOW_PRELUDE, TINY_WIDTHS, add_training_callback, interrupt_after, write_dark_bright_dataset

from keras_parnet import callbacks, distribute, runs
from keras_parnet.cli.train import build_parser, main, train_with_flags

pytestmark = pytest.mark.usefixtures("shallow_module")  # see conftest.SHALLOW_STREAM_DEPTHS

TINY_ARGS = ["--widths", *map(str, TINY_WIDTHS), "--image-size", "32", "--seed", "1"]
TIMEOUT = 600

# Runs train.py's `train` in a worker process (shallow streams) and saves the
# final weights, the optimizer step count and the images its input pipeline
# decoded (the scan's checks, at 1x1 px, aside) to argv[1]. Grappler's graph
# rewrites take about half of the time two workers spend tracing on 2 CPU
# cores; they change speed only.
WORKER = SHALLOW_PRELUDE + textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    from keras_parnet import data
    from keras_parnet.cli._common import messages_to_console
    from keras_parnet.cli.train import build_parser, train_with_flags

    decoded = []
    load = data._load

    def recording_load(path, decoder, size, crop_fraction=None):
        image = load(path, decoder, size, crop_fraction)
        if tuple(size) == (1, 1):
            return image
        done = tf.py_function(lambda name: decoded.append(name.numpy().decode()) or 0, [path], tf.int32)
        with tf.control_dependencies([done]):
            return tf.identity(image)

    data._load = recording_load
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    messages_to_console()
    _, model = train_with_flags(build_parser().parse_args(sys.argv[2:]))
    np.savez(sys.argv[1], *model.get_weights(), iterations=int(model.optimizer.iterations.numpy()),
             decoded=json.dumps(decoded))
""")

# Two logical CPU devices (set before TensorFlow starts): one step of mirrored
# training and one step on one device, same start weights and global batch
# (shallow streams).
MIRRORED = SHALLOW_PRELUDE + textwrap.dedent("""
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from keras_parnet import ParNet, distribute

    def one_step(strategy, images, labels, weights=None):
        with strategy.scope():
            model = distribute.prepare_model(
                ParNet(json.loads(sys.argv[1]), input_shape=(32, 32, 3), classes=2), strategy)
            model.compile(keras.optimizers.SGD(0.5), "categorical_crossentropy", run_eagerly=True)
        if weights is not None:
            model.set_weights(weights)
        start = model.get_weights()
        loss = model.fit(images, labels, batch_size=len(images), shuffle=False, verbose=0).history["loss"][0]
        return loss, start, model.get_weights()

    rng = np.random.default_rng(0)
    images = rng.random((8, 32, 32, 3), dtype="float32")
    labels = np.eye(2, dtype="float32")[[0, 1, 1, 0, 1, 1, 0, 0]]
    mirrored = distribute.make_strategy("mirrored")
    mirrored_loss, start, mirrored_end = one_step(mirrored, images, labels)
    single_loss, _, single_end = one_step(distribute.make_strategy("default"), images, labels, start)
    print(json.dumps({
        "replicas": mirrored.num_replicas_in_sync,
        "losses": [mirrored_loss, single_loss],
        "largest_step": max(float(np.abs(b - a).max()) for a, b in zip(start, single_end)),
        "largest_difference": max(float(np.abs(m - s).max()) for m, s in zip(mirrored_end, single_end)),
    }))
""")


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def run_cluster(tmp_path, script, worker_args, timeout=600):
    """Runs the Python `script` in one worker process per `worker_args` entry
    (its argv: the .npz file it saves its results to, then the entry) as one
    multi-worker cluster on localhost (TF_CONFIG); returns their exit codes
    and outputs."""
    addresses = [f"localhost:{port}" for port in _free_ports(len(worker_args))]
    processes, logs = [], []
    for index, args in enumerate(worker_args):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir()
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TMPDIR": str(scratch),
               "TF_CPP_MIN_LOG_LEVEL": "2"}
        logs.append(tmp_path / f"worker{index}.log")
        with logs[-1].open("w") as log:  # files, not pipes: a full pipe would stall the cluster
            processes.append(subprocess.Popen(
                [sys.executable, "-c", script, str(tmp_path / f"worker{index}.npz"), *args],
                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [process.wait(timeout=timeout) for process in processes]
    finally:
        for process in processes:
            process.kill()
    return codes, [log.read_text() for log in logs]


@pytest.mark.parametrize(
    "name, gpus, tf_config, expected",
    [
        ("auto", 0, None, "default"),
        ("auto", 1, None, "default"),
        ("auto", 2, None, "mirrored"),
        ("auto", 2, {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, "mirrored"),
        ("auto", 0, {"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}},
         "multi-worker"),
        ("default", 4, None, "default"),
        ("multi-worker", 0, None, "multi-worker"),
    ],
)
def test_strategy_choice(name, gpus, tf_config, expected):
    assert distribute.choose_strategy(name, gpus, tf_config) == expected


@pytest.mark.parametrize(
    "tf_config, message",
    [
        ("{cluster", "TF_CONFIG is not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', 'TF_CONFIG has no "cluster"'),
        ('{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}}',
         "cluster has ps tasks"),
        ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}', "is not in its cluster"),
        ('{"cluster": {"worker": ["a:1", "b:1"]}}', "is not in its cluster"),
    ],
)
def test_bad_tf_config_stops_training_with_one_line(tmp_path, monkeypatch, capsys, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    assert main(["--dataset", str(tmp_path), "--logs-dir", str(tmp_path / "logs")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1


def test_unknown_strategy_is_a_user_error(tmp_path, capsys):
    assert main(["--strategy", "tpu", "--dataset", str(tmp_path)]) == 2
    assert "unknown strategy 'tpu': use one of auto, default, mirrored, multi-worker" in capsys.readouterr().err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Dark vs bright 40 px PNGs: 8 + 7 in train/ (7 + 6 train, one of each validates), 3 + 3 to test."""
    return write_dark_bright_dataset(tmp_path_factory.mktemp("data"), (8, 7), (3, 3), ".png")


@pytest.mark.slow
def test_two_workers_resume_a_run_together(dataset, tmp_path, monkeypatch):
    """A run interrupted after epoch 1 of 2 on one device is resumed by a
    2-worker cluster, which trains epoch 2: each worker decodes its own half
    of the training images, only the chief writes, and both workers end with
    the same weights and optimizer state."""
    add_training_callback(monkeypatch, interrupt_after(1))
    common = ["--dataset", str(dataset), *TINY_ARGS, "--batch-size", "2"]
    with pytest.raises(SystemExit):
        train_with_flags(build_parser().parse_args([*common, "--epochs", "2", "--logs-dir", str(tmp_path / "logs"),
                                         "--run-name", "r", "--strategy", "default"]))
    run_dir = tmp_path / "logs" / "r"
    assert (run_dir / "backup").is_dir()

    resumes = [["--logs-dir", str(tmp_path / f"logs{index}"), "--resume", str(run_dir)] for index in (0, 1)]
    codes, outputs = run_cluster(tmp_path, WORKER, resumes)
    assert codes == [0, 0], outputs
    # 13 images in global batches of 2 x 2: 3 full steps per epoch, after the
    # single device's 7 steps of 2 images.
    for output in outputs:
        assert "2 replicas on 2 workers" in output
        assert "batch size 2 per replica, 4 global, 3 steps per epoch" in output
        assert "Epoch 2/2" in output and "Epoch 1/2" not in output
    workers = [np.load(tmp_path / f"worker{index}.npz") for index in (0, 1)]
    assert [int(worker["iterations"]) for worker in workers] == [7 + 3] * 2

    # Input sharded before decoding: the epoch decodes 12 of the 13 training
    # images (3 global batches of 4) in disjoint halves of 6, and both held-out
    # images on each worker. Keras 3.15 reads a first batch before training, so
    # the data of another shuffled epoch may be decoded in part or in whole,
    # halved alike: no image more often than there are passes.
    validation = {str(dataset / name) for name in runs.read_run(run_dir)["validation"]["files"]}
    decoded = [json.loads(str(worker["decoded"])) for worker in workers]
    trained = [[path for path in paths if path not in validation] for paths in decoded]
    passes = math.ceil(max(len(paths) for paths in trained) / 6)
    assert all(len(paths) >= 6 for paths in trained) and passes <= 2
    assert max(collections.Counter(trained[0] + trained[1]).values()) <= passes
    assert set(trained[0] + trained[1]) <= {str(path) for path in (dataset / "train").rglob("*.png")} - validation
    assert [set(paths) & validation for paths in decoded] == [validation] * 2

    chief_weights = [workers[0][f"arr_{k}"] for k in range(sum(name.startswith("arr_") for name in workers[0].files))]
    for k, weights in enumerate(chief_weights):
        np.testing.assert_array_equal(weights, workers[1][f"arr_{k}"])

    # Only the chief wrote: its run folder is complete, the worker's temporary folder is gone.
    assert not (tmp_path / "logs0").exists() and not (tmp_path / "logs1").exists()
    scratch = re.search(r"this worker writes to (\S+) \(removed at the end\)", outputs[1]).group(1)
    assert Path(scratch).parent == tmp_path / "tmp1" and not Path(scratch).exists()
    assert "Run folder" not in outputs[1]
    with open(run_dir / callbacks.HISTORY_FILE, newline="") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1]
    names = {path.name for path in run_dir.iterdir()}
    assert "backup" not in names
    assert sorted(name[:5] for name in names if name.startswith("ep")) == ["ep001", "ep002"]

    # The last checkpoint, read by the ordinary single-device model, is the final state.
    model, _ = runs.load_run(run_dir, weights=next(run_dir.glob("ep002-*.weights.h5")))
    for saved, final in zip(model.get_weights(), chief_weights):
        np.testing.assert_array_equal(saved, final)


@pytest.mark.slow
def test_mirrored_step_equals_one_device_step_on_the_global_batch():
    result = subprocess.run([sys.executable, "-c", MIRRORED, json.dumps(TINY_WIDTHS)], capture_output=True,
                            text=True, timeout=TIMEOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["replicas"] == 2
    mirrored_loss, single_loss = measured["losses"]
    assert np.isfinite(single_loss) and mirrored_loss == pytest.approx(single_loss, rel=1e-5)
    # The weights moved, and both runs moved them alike (batch statistics included).
    assert measured["largest_step"] > 0.1
    assert measured["largest_difference"] < 1e-4 * measured["largest_step"]


@pytest.mark.slow
def test_mixed_precision_trains_with_float32_outputs(dataset, tmp_path, eager_training):
    run_dir, model = train_with_flags(build_parser().parse_args(
        ["--dataset", str(dataset), *TINY_ARGS, "--batch-size", "16", "--epochs", "1", "--mixed-precision",
         "--logs-dir", str(tmp_path)]))
    assert runs.read_run(run_dir)["training"]["mixed_precision"] is True  # a resumed run keeps it
    assert keras.config.dtype_policy().name == "float32"  # restored after building
    compute_dtypes = {layer.compute_dtype for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
    assert compute_dtypes == {"bfloat16"}  # this machine has no GPU
    assert all(weight.dtype == "float32" for weight in model.weights)
    with open(run_dir / callbacks.HISTORY_FILE, newline="") as f:
        (row,) = csv.DictReader(f)
    assert np.isfinite(float(row["loss"])) and np.isfinite(float(row["val_loss"]))
    assert model.optimizer.iterations.numpy() == 1  # 13 images in one batch (eager steps take seconds)
    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype="float32")
    predictions = model(images, training=False)
    assert predictions.dtype == "float32" and model.outputs[0].dtype == "float32"
    np.testing.assert_allclose(np.sum(predictions, axis=1), 1.0, rtol=1e-6)
