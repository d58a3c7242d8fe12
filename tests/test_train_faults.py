"""train.py under faults: kills and Ctrl-C at the end of an epoch, a loss
that turns NaN, a disk that fills up, bad flags and output folders, failed
starts, and resumes that cannot work.

The kill tests run train.py's `main` in a subprocess (a driver script) that
kills its own process at the moment that hurts: right after an epoch's
checkpoint is written, or half way through the backup write. The stops that
kill nothing (Ctrl-C, NaN, a full disk) run in the test's process. Both
train a ParNet of shallow streams (conftest.SHALLOW_STREAM_DEPTHS) with eager
steps: a few tiny steps run faster than tracing them."""

import contextlib
import csv
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from conftest import (SHALLOW_PRELUDE, TINY_WIDTHS, add_training_callback, assert_one_line_error, main_as_process,
                      write_dark_bright_dataset)

from keras_parnet import callbacks, runs
from keras_parnet.cli.train import main

pytestmark = pytest.mark.usefixtures("shallow_module")  # see conftest.SHALLOW_STREAM_DEPTHS

TINY_ARGS = ["--widths", *map(str, TINY_WIDTHS), "--image-size", "32", "--batch-size", "4", "--seed", "1"]

# argv: FAULT TRAIN_ARGS... where FAULT is "<kind>:<epoch>".
DRIVER = SHALLOW_PRELUDE + textwrap.dedent("""
    import os, signal
    from pathlib import Path
    from conftest import with_eager_steps
    from keras_parnet import callbacks, train
    from keras_parnet.cli import train as train_cli

    fault, *args = sys.argv[1:]
    kind, epoch = fault.split(":")
    epoch = int(epoch)

    train.compiled_model = with_eager_steps(train.compiled_model)

    save_weights = callbacks.save_weights
    def faulty_save_weights(model, path):
        path = Path(path)
        if kind == "sigkill-in-backup" and path.name == callbacks.BACKUP_WEIGHTS.format(epoch=epoch):
            partial = path.with_name(callbacks.PARTIAL_PREFIX + path.name)
            model.save_weights(partial)
            os.truncate(partial, partial.stat().st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        save_weights(model, path)
        if kind == "sigkill-after-checkpoint" and path.name.startswith(f"ep{epoch:03d}-"):
            os.kill(os.getpid(), signal.SIGKILL)
    callbacks.save_weights = faulty_save_weights

    sys.exit(train_cli.main(args))
""")


def fill_disk_as_epoch_begins(epoch, filler):
    """A Keras callback that fills `filler`'s file system as epoch `epoch` (1-based) begins."""

    class FillDisk(keras.callbacks.Callback):
        def on_epoch_begin(self, index, logs=None):
            if index + 1 == epoch:
                with open(filler, "wb", buffering=0) as f:  # unbuffered: closing has nothing left to write
                    try:
                        while True:
                            f.write(bytes(1 << 16))
                    except OSError:
                        pass

    return FillDisk()


@contextlib.contextmanager
def ctrl_c_after_checkpoint(monkeypatch, epoch):
    """Inside, train.py's runs get Ctrl-C (SIGINT, to this process) right
    after epoch `epoch`'s checkpoint is written, before the epoch's other
    writes, with Python's own SIGINT handler as in a terminal (a process
    started in the background, as CI may start pytest, ignores SIGINT)."""
    save_weights = callbacks.save_weights

    def interrupting_save_weights(model, path):
        save_weights(model, path)
        if Path(path).name.startswith(f"ep{epoch:03d}-"):
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(callbacks, "save_weights", interrupting_save_weights)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Dark vs bright images: 4 train and 2 test per class."""
    return write_dark_bright_dataset(tmp_path_factory.mktemp("data"), (4, 4), (2, 2))


def drive(tmp_path, fault, *args):
    """Runs the driver; a new run trains one step of 8 images an epoch (each
    eager step takes seconds: Keras compiles grouped convolutions per call)."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.run([sys.executable, str(driver), fault, *map(str, args)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=900)


def recorded(run_dir):
    """`(history epochs, checkpoint epochs, backup files)`, epochs counted
    from 1, each as often as it is recorded. Every history row must have the
    checkpoint its values name."""
    with open(run_dir / callbacks.HISTORY_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        name = callbacks.EPOCH_WEIGHTS.format(epoch=int(row["epoch"]) + 1, loss=float(row["loss"]),
                                              val_loss=float(row["val_loss"]))
        assert (run_dir / name).is_file(), name
    checkpoints = sorted(int(path.name[2:5]) for path in run_dir.glob("ep*.weights.h5"))
    backup = run_dir / callbacks.BACKUP_DIR
    backups = sorted(path.name for path in backup.iterdir()) if backup.is_dir() else None
    return [int(row["epoch"]) + 1 for row in rows], checkpoints, backups


def weights_are_finite(path):
    values = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: values.append(item[()]) if isinstance(item, h5py.Dataset) else None)
    return bool(values) and all(np.isfinite(value).all() for value in values if value.dtype.kind == "f")


def assert_no_traceback(result):
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.start_first
def test_kills_and_a_full_disk_at_epoch_end_keep_every_finished_epoch_once(dataset, tmp_path, small_disk,
                                                                          eager_training, monkeypatch, capsys):
    """One 3-epoch run on a small file system of its own, stopped five times
    at the moments that hurt, then resumed to the end (one run: each driver
    process pays TensorFlow's start-up; the stops that kill nothing run here)."""
    run_dir = small_disk / "r"
    start = ["--dataset", dataset, *TINY_ARGS, "--batch-size", "8", "--epochs", "3", "--logs-dir", small_disk,
             "--run-name", "r"]

    # Ctrl-C right after epoch 1's checkpoint: the epoch's other writes finish first.
    with monkeypatch.context() as patch, ctrl_c_after_checkpoint(patch, 1), pytest.raises(SystemExit) as stop:
        main([str(arg) for arg in start])
    assert stop.value.code == 130
    assert f"--resume {run_dir}" in capsys.readouterr().err
    assert recorded(run_dir) == ([1], [1], ["epoch001.weights.h5"])

    # kill -9 right after epoch 2's checkpoint: its history row and backup are missing.
    result = drive(tmp_path, "sigkill-after-checkpoint:2", "--resume", run_dir)
    assert result.returncode == -9, result.stderr[-3000:]
    assert "Epoch 2/3" in result.stdout and "Epoch 1/3" not in result.stdout
    assert recorded(run_dir) == ([1], [1, 2], ["epoch001.weights.h5"])

    # kill -9 half way through epoch 2's backup: the resume rolled the first
    # epoch 2 back, so epoch 2 is recorded once, and the old backup is intact.
    result = drive(tmp_path, "sigkill-in-backup:2", "--resume", run_dir)
    assert result.returncode == -9, result.stderr[-3000:]
    assert recorded(run_dir) == ([1, 2], [1, 2], [".partial-epoch002.weights.h5", "epoch001.weights.h5"])

    # A loss that turns NaN stops the run without recording the epoch.
    result = main_as_process(main, capsys, "--resume", run_dir, "--lr", "1e30")
    assert_one_line_error(result, "not finite in epoch 2", f"--resume {run_dir}", "--lr")
    assert recorded(run_dir) == ([1], [1], ["epoch001.weights.h5"])
    assert weights_are_finite(run_dir / runs.BEST_WEIGHTS)

    # The disk fills up as epoch 2 begins (TensorBoard writes elsewhere): the
    # checkpoint's write fails in one line, and nothing half-written stays.
    filler = small_disk / "filler"
    with monkeypatch.context() as filling:
        add_training_callback(filling, fill_disk_as_epoch_begins(2, filler))
        result = main_as_process(main, capsys, "--resume", run_dir, "--tensorboard-dir", tmp_path / "tensorboard")
    assert_one_line_error(result, "no space left", "ep002-", f"--resume {run_dir}")
    assert recorded(run_dir) == ([1], [1], ["epoch001.weights.h5"])
    assert not list(run_dir.rglob(f"{callbacks.PARTIAL_PREFIX}*"))
    filler.unlink()

    with warnings.catch_warnings():
        warnings.simplefilter("always")  # shown on stderr however often this process warned before
        result = main_as_process(main, capsys, "--resume", run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_no_traceback(result)
    assert "shuffle" not in result.stderr  # fit is not asked to shuffle a tf.data dataset
    assert "Epoch 2/3" in result.stdout and "Epoch 1/3" not in result.stdout
    assert recorded(run_dir) == ([1, 2, 3], [1, 2, 3], None)
    assert not list(run_dir.rglob(f"{callbacks.PARTIAL_PREFIX}*"))
    with open(run_dir / callbacks.HISTORY_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    for k, row in enumerate(rows):
        assert float(row["learning_rate"]) == pytest.approx(1e-3 * 0.95**k, rel=1e-6)
    best = min(rows, key=lambda row: float(row["val_loss"]))
    best_checkpoint = next(run_dir.glob(f"ep{int(best['epoch']) + 1:03d}-*.weights.h5"))
    assert (run_dir / runs.BEST_WEIGHTS).read_bytes() == best_checkpoint.read_bytes()


@pytest.mark.parametrize("flag, value, words", [
    ("--lr", "nan", ["--lr: nan", "positive"]),
    ("--lr", "inf", ["--lr: inf"]),
    ("--lr", "0", ["--lr: 0"]),
    ("--lr-decay", "0", ["--lr-decay: 0", "positive"]),
    ("--lr-decay", "1.5", ["--lr-decay: 1.5", "above 1"]),
    ("--epochs", "0", ["--epochs: 0", "at least 1"]),
    ("--image-size", "100000", ["--image-size: 100000", "2048"]),
    ("--image-size", "16", ["--image-size: 16", "32"]),
    ("--batch-size", "0", ["--batch-size: 0"]),
    ("--patience", "-1", ["--patience: -1"]),
])
def test_bad_flags_are_refused_before_training(dataset, tmp_path, capsys, flag, value, words):
    with pytest.raises(SystemExit) as stop:  # argparse's exit, before TensorFlow starts
        main(["--dataset", str(dataset), "--logs-dir", str(tmp_path / "logs"), *TINY_ARGS, flag, value])
    error = capsys.readouterr().err
    assert stop.value.code == 2
    assert error.startswith("error: ") and error.count("\n") == 1, error
    for word in words:
        assert word in error, (word, error)
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("place", ["file", "read_only", "full"])
def test_logs_dir_that_cannot_be_written_is_refused(dataset, tmp_path, capsys, request, place):
    if place == "file":
        logs = tmp_path / "logs"
        logs.write_text("not a folder")
    else:
        logs = request.getfixturevalue(f"{place}_dir") / "logs"
    status = main(["--dataset", str(dataset), "--logs-dir", str(logs), *TINY_ARGS])
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("error: --logs-dir ") and error.count("\n") == 1, error


@pytest.mark.slow
def test_start_weights_of_another_architecture_leave_no_run_folder(dataset, tmp_path, capsys):
    from keras_parnet import ParNet

    other = tmp_path / "wider.weights.h5"
    ParNet((16, 24, 40, 48), input_shape=(32, 32, 3), classes=3).save_weights(other)
    status = main(["--dataset", str(dataset), "--logs-dir", str(tmp_path / "logs"), *TINY_ARGS,
                   "--weights", str(other)])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(error) == 1 and error[0].startswith(f"error: weights file {other} holds a ParNet of widths "
                                                   "(16, 24, 40, 48), not the model's (widths (16, 24, 32, 48))")
    assert "--widths 16 24 40 48" in error[0]
    assert list((tmp_path / "logs").iterdir()) == []


@pytest.fixture
def interrupted_run(tmp_path, dataset):
    """A run folder as train.py leaves it after 3 of 5 epochs: run.json,
    per-epoch checkpoints, history and backup (small stand-in HDF5 files)."""
    run_dir = tmp_path / "logs" / "r"
    training = {"model": "s", "widths": list(TINY_WIDTHS), "small_input": False, "image_size": 32,
                "batch_size": 4, "epochs": 5, "lr": 1e-3, "lr_decay": 0.95, "patience": 15, "dropout": None,
                "mixed_precision": False, "dataset": str(dataset)}
    runs.write_run(run_dir, "ParNet", {"widths": list(TINY_WIDTHS)}, 32, ["bright", "dark"], training=training)
    (run_dir / callbacks.BACKUP_DIR).mkdir()
    rows = []
    for epoch in (1, 2, 3):
        logs = {"loss": 0.5 / epoch, "val_loss": 0.6 / epoch}
        for path in (run_dir / callbacks.EPOCH_WEIGHTS.format(epoch=epoch, **logs),
                     run_dir / callbacks.BACKUP_DIR / callbacks.BACKUP_WEIGHTS.format(epoch=epoch)):
            with h5py.File(path, "w") as f:
                f["vars/0"] = np.full(4, float(epoch))
        rows.append({"epoch": epoch - 1, **logs})
    for old in (1, 2):
        (run_dir / callbacks.BACKUP_DIR / callbacks.BACKUP_WEIGHTS.format(epoch=old)).unlink()
    callbacks.write_history(run_dir, ["epoch", "loss", "val_loss"], rows)
    return run_dir


@pytest.mark.parametrize("flags, words", [
    (["--widths", "16", "24", "32", "64"], ["--widths 16 24 32 48", "not --widths 16 24 32 64"]),
    (["--image-size", "64"], ["--image-size 32", "not --image-size 64"]),
    (["--model", "m"], ["--model s", "not --model m"]),
    (["--small-input"], ["no --small-input", "not --small-input"]),
    (["--epochs", "3"], ["nothing to do", "3 epochs done", "larger --epochs"]),
])
def test_resume_that_cannot_continue_is_refused_and_keeps_the_backup(interrupted_run, capsys, flags, words):
    backup = sorted((interrupted_run / callbacks.BACKUP_DIR).iterdir())
    status = main(["--resume", str(interrupted_run), *flags])
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("error: ") and error.count("\n") == 1, error
    for word in words:
        assert word in error, (word, error)
    assert sorted((interrupted_run / callbacks.BACKUP_DIR).iterdir()) == backup


def test_damaged_backup_names_the_newest_good_checkpoint(interrupted_run, capsys):
    backup = interrupted_run / callbacks.BACKUP_DIR / callbacks.BACKUP_WEIGHTS.format(epoch=3)
    backup.write_bytes(backup.read_bytes()[:100])
    newest = next(interrupted_run.glob("ep003-*.weights.h5"))
    newest.write_bytes(b"")  # the newest checkpoint is damaged too: name the one before
    status = main(["--resume", str(interrupted_run)])
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("error: ") and error.count("\n") == 1, error
    good = next(interrupted_run.glob("ep002-*.weights.h5"))
    assert "is damaged" in error and f"--weights {good}" in error and "delete" in error, error
