"""train.py end to end on a tiny dataset (tiny widths, 32 px)."""

import csv
import json

import numpy as np
import pytest
from conftest import TINY_WIDTHS, infer, interrupt_after, write_dark_bright_dataset
from PIL import Image

from keras_parnet import callbacks, runs
from keras_parnet.cli._common import messages_to_console
from keras_parnet.cli.train import build_parser, main, train_with_flags

TINY_ARGS = ["--widths", *map(str, TINY_WIDTHS), "--image-size", "32", "--batch-size", "4", "--seed", "1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Dark vs bright images: 6 train and 3 test per class."""
    return write_dark_bright_dataset(tmp_path_factory.mktemp("data"), (6, 6), (3, 3))


def history_rows(run_dir):
    with open(run_dir / callbacks.HISTORY_FILE, newline="") as f:
        return list(csv.DictReader(f))


def run_train(dataset, logs, *extra):
    args = build_parser().parse_args(["--dataset", str(dataset), "--logs-dir", str(logs), *TINY_ARGS, *extra])
    messages_to_console()  # as the command line does: the library's progress on stdout
    return train_with_flags(args)


@pytest.mark.slow
def test_interrupted_run_resumes_and_writes_the_run_folder(dataset, tmp_path, monkeypatch, capsys):
    """One run of 4 epochs, checked by --analyze first, stopped by Ctrl-C
    after epoch 2 and resumed (the two sessions share one tracing budget, so
    every check is on this run)."""
    original = callbacks.training_callbacks
    monkeypatch.setattr(callbacks, "training_callbacks", lambda *a, **k: original(*a, **k) + [interrupt_after(2)])
    with pytest.raises(SystemExit) as stop:
        run_train(dataset, tmp_path, "--epochs", "4", "--run-name", "r", "--analyze")
    assert stop.value.code == 130
    out, err = capsys.readouterr()
    assert "parnet-train --resume" in err  # in-process: the installed command
    counts = [line.split() for line in out.splitlines() if line.split()[:1] in (["bright"], ["dark"])]
    assert counts == [["bright", "5", "1", "3"], ["dark", "5", "1", "3"]]  # train, the 0.1 validation split, test
    assert out.index("bright") < out.index("Epoch 1/4")  # the dataset is checked before training
    run_dir = tmp_path / "r"
    analysis = json.loads((run_dir / "analysis" / "analysis.json").read_text())
    assert analysis["counts"]["train"] == {"bright": 5, "dark": 5}
    assert analysis["counts"]["val"] == {"bright": 1, "dark": 1}
    assert (run_dir / "analysis" / "class_counts.png").stat().st_size > 0
    assert [int(row["epoch"]) for row in history_rows(run_dir)] == [0, 1]
    assert (run_dir / "backup").is_dir()
    first_session = set(run_dir.glob("ep*.weights.h5"))
    assert len(first_session) == 2

    monkeypatch.setattr(callbacks, "training_callbacks", original)
    resumed_dir, model = train_with_flags(build_parser().parse_args(["--resume", str(run_dir)]))
    assert resumed_dir == run_dir
    assert "Epoch 3/4" in capsys.readouterr().out
    assert not (run_dir / "backup").exists()  # removed when a run finishes

    config = runs.read_run(run_dir)
    assert config["class_names"] == ["bright", "dark"]
    assert config["image_size"] == [32, 32]
    rows = history_rows(run_dir)
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2, 3]
    for k, row in enumerate(rows):
        assert float(row["learning_rate"]) == pytest.approx(1e-3 * 0.95**k, rel=1e-6)
        name = f"ep{k + 1:03d}-loss{float(row['loss']):.3f}-val_loss{float(row['val_loss']):.3f}.weights.h5"
        assert (run_dir / name).is_file(), name
    assert len(set(run_dir.glob("ep*.weights.h5")) - first_session) == 2
    assert (run_dir / runs.BEST_WEIGHTS).is_file()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard" / "validation"))
    events.Reload()
    tags = events.Tags()
    assert {"epoch_loss", "epoch_accuracy"} <= set(tags["scalars"]) | set(tags["tensors"])

    last = sorted(run_dir.glob("ep004-*.weights.h5"))[0]
    reloaded, _ = runs.load_run(run_dir, weights=last)
    images = np.random.default_rng(2).random((3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(infer(reloaded, images), infer(model, images), atol=1e-6)


def test_finished_run_cannot_be_resumed_over(tmp_path, capsys):
    runs.write_run(tmp_path / "done", "ParNet", {"widths": list(TINY_WIDTHS)}, 32, ["a", "b"],
                   training={"dataset": str(tmp_path)})
    assert main(["--resume", str(tmp_path / "done")]) == 2
    assert "has no backup/ to resume from" in capsys.readouterr().err


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "does not exist"),
        ("no_classes", "no class folders"),
        ("empty_class", "has no readable images"),
        ("mismatch", "only in train: c"),
    ],
)
def test_bad_datasets_stop_before_training(tmp_path, capsys, layout, message):
    root = tmp_path / "bad"
    image = Image.new("RGB", (40, 40))
    if layout != "missing":
        (root / "train").mkdir(parents=True)
        (root / "test").mkdir()
    if layout == "empty_class":
        for split in ("train", "test"):
            for name in ("a", "b"):
                (root / split / name).mkdir()
            image.save(root / split / "a" / "x.jpg")
        image.save(root / "test" / "b" / "x.jpg")
    if layout == "mismatch":
        for split, name in (("train", "a"), ("train", "c"), ("test", "a"), ("test", "b")):
            (root / split / name).mkdir()
            image.save(root / split / name / "x.jpg")
    status = main(["--dataset", str(root), "--logs-dir", str(tmp_path / "logs"), *TINY_ARGS])
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("error: ") and message in error and error.count("\n") == 1
    assert not (tmp_path / "logs").exists()
