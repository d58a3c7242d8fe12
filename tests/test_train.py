"""train.py end to end on a tiny dataset (tiny widths, 32 px)."""

import csv
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import TINY_WIDTHS, add_training_callback, infer, interrupt_after, write_dark_bright_dataset
from PIL import Image

from keras_parnet import callbacks, runs
from keras_parnet.cli._common import messages_to_console
from keras_parnet.cli.train import build_parser, main, parse_flags, resolve_settings, resolved_flags, train_with_flags
from keras_parnet.models import HEAD_LAYER

pytestmark = pytest.mark.usefixtures("shallow_module")  # see conftest.SHALLOW_STREAM_DEPTHS

TINY_ARGS = ["--widths", *map(str, TINY_WIDTHS), "--image-size", "32", "--batch-size", "4", "--seed", "1"]


def history_rows(run_dir):
    with open(run_dir / callbacks.HISTORY_FILE, newline="") as f:
        return list(csv.DictReader(f))


def run_train(dataset, logs, *extra):
    args = build_parser().parse_args(["--dataset", str(dataset), "--logs-dir", str(logs), *TINY_ARGS, *extra])
    messages_to_console()  # as the command line does: the library's progress on stdout
    return train_with_flags(args)


def image_files(split_dir):
    """Every image below `split_dir`, found independently of `data.list_images`."""
    return sorted(str(path) for path in Path(split_dir).rglob("*.jpg"))


def backbone_and_head(path):
    """`(backbone arrays by layer, head arrays)` of a 2-class tiny run's weights file."""
    from keras_parnet import ParNet

    model = ParNet(TINY_WIDTHS, classes=2, activation="relu")
    model.load_weights(path)
    return ({layer.name: layer.get_weights() for layer in model.layers if layer.weights and layer.name != HEAD_LAYER},
            model.get_layer(HEAD_LAYER).get_weights())


def same_arrays(first, second):
    return all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.slow
def test_fine_tune_with_a_val_split_interrupted_and_resumed(converted, tmp_path, monkeypatch, capsys):
    """The one end-to-end training scenario (each fresh training step costs a
    graph trace of 10-15 s here, so every check is on this run): train --weights
    <converted run> --freeze-epochs 2 --epochs 3 --val-split 0.34 --analyze,
    stopped by Ctrl-C after epoch 1, a training image added, resumed. It
    checks the run folder, the recorded split (fit on train minus val,
    validate on val, kept on --resume), the frozen epochs across the resume
    (no backbone weight or BatchNorm statistic changes, the third epoch's
    does), the phased learning rate, and that the new run decodes, predicts
    and evaluates with the official preprocessing."""
    from keras_parnet import convert, data
    from keras_parnet.evaluate import predict_files

    start_dir, start_model = converted
    dataset = write_dark_bright_dataset(tmp_path / "data", (6, 6), (3, 3))
    calls = []
    make_dataset = data.make_dataset

    def recording(split_dir, *args, files=None, **kwargs):
        calls.append((Path(split_dir).name, kwargs.get("training", False), sorted(files), kwargs.get("crop_fraction")))
        return make_dataset(split_dir, *args, files=files, **kwargs)

    monkeypatch.setattr(data, "make_dataset", recording)
    original = add_training_callback(monkeypatch, interrupt_after(1))
    with pytest.raises(SystemExit) as stop:
        run_train(dataset, tmp_path, "--weights", str(start_dir), "--freeze-epochs", "2", "--epochs", "3",
                  "--val-split", "0.34", "--seed", "3", "--run-name", "r", "--analyze")
    assert stop.value.code == 130
    first_out, err = capsys.readouterr()
    assert "parnet-train --resume" in err  # in-process: the installed command
    counts = [line.split() for line in first_out.splitlines() if line.split()[:1] in (["bright"], ["dark"])]
    assert counts == [["bright", "4", "2", "3"], ["dark", "4", "2", "3"]]  # train, the 0.34 validation split, test
    assert first_out.index("bright") < first_out.index("Epoch 1/3")  # the dataset is checked before training
    run_dir = tmp_path / "r"
    analysis = json.loads((run_dir / "analysis" / "analysis.json").read_text())
    assert analysis["counts"]["train"] == {"bright": 4, "dark": 4}
    assert analysis["counts"]["val"] == {"bright": 2, "dark": 2}
    assert (run_dir / "analysis" / "class_counts.png").stat().st_size > 0
    assert [int(row["epoch"]) for row in history_rows(run_dir)] == [0]
    assert (run_dir / "backup").is_dir()
    first_session = set(run_dir.glob("ep*.weights.h5"))
    assert len(first_session) == 1
    # config.json: the flags as resolved, which --config resolves back to; not the run folder's name.
    config = json.loads((run_dir / runs.CONFIG_FILE).read_text())
    again = parse_flags(["--config", str(run_dir / runs.CONFIG_FILE)])
    assert resolved_flags(again, resolve_settings(again)[0]) == config
    assert (config["weights"], config["freeze_epochs"], config["val_split"], config["widths"]) == (
        str(start_dir), 2, 0.34, list(TINY_WIDTHS)) and "run_name" not in config

    record = json.loads((run_dir / runs.RUN_FILE).read_text())["validation"]
    val_files = sorted(str(dataset / relative) for relative in record["files"])
    assert record["fraction"] == 0.34 and record["seed"] == 3
    assert sorted(Path(path).parent.name for path in val_files) == ["bright", "bright", "dark", "dark"]
    train_files = sorted(set(image_files(dataset / "train")) - set(val_files))
    # The converted run's center crop on the training and the validation data.
    assert calls == [("train", True, train_files, 0.875), ("train", False, val_files, 0.875)]

    calls.clear()
    monkeypatch.setattr(callbacks, "training_callbacks", original)
    added = dataset / "train" / "bright" / "added.jpg"
    shutil.copy(train_files[0], added)
    resumed_dir, model = train_with_flags(build_parser().parse_args(["--resume", str(run_dir)]))
    assert resumed_dir == run_dir
    assert json.loads((run_dir / runs.CONFIG_FILE).read_text()) == config  # a resumed run keeps its config
    out = capsys.readouterr().out
    assert "Epoch 2/3" in out and "Epoch 1/3" not in out
    assert (first_out + out).count("re-initialised predictions") == 1  # loaded once; the resume restores its backup
    assert calls == [("train", True, sorted(train_files + [str(added)]), 0.875), ("train", False, val_files, 0.875)]
    assert not (run_dir / "backup").exists()  # removed when a run finishes

    config = runs.read_run(run_dir)
    assert config["validation"] == record
    assert config["class_names"] == ["bright", "dark"]
    assert config["image_size"] == [32, 32]
    assert config["preprocessing"] == convert.OFFICIAL_PREPROCESSING
    assert config["model_kwargs"]["activation"] == "relu"
    assert (config["training"]["freeze_epochs"], config["training"]["fine_tune_lr"]) == (2, 1e-4)
    rows = history_rows(run_dir)
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    for k, row in enumerate(rows):
        # --lr decayed by --lr-decay while frozen, then --fine-tune-lr decayed from the unfreezing epoch on.
        expected = 1e-3 * 0.95**k if k < 2 else 1e-4 * 0.95 ** (k - 2)
        assert float(row["learning_rate"]) == pytest.approx(expected, rel=1e-6)
        name = f"ep{k + 1:03d}-loss{float(row['loss']):.3f}-val_loss{float(row['val_loss']):.3f}.weights.h5"
        assert (run_dir / name).is_file(), name
    assert len(set(run_dir.glob("ep*.weights.h5")) - first_session) == 2
    assert (run_dir / runs.BEST_WEIGHTS).is_file()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard" / "validation"))
    events.Reload()
    tags = events.Tags()
    assert {"epoch_loss", "epoch_accuracy"} <= set(tags["scalars"]) | set(tags["tensors"])

    start_backbone = {layer.name: layer.get_weights() for layer in start_model.layers
                      if layer.weights and layer.name != HEAD_LAYER}
    epochs = callbacks.epoch_checkpoints(run_dir)
    (first, first_head), (second, second_head), (third, _) = (backbone_and_head(epochs[epoch]) for epoch in (1, 2, 3))
    for frozen in (first, second):
        assert all(same_arrays(frozen[name], start_backbone[name]) for name in frozen)
    assert not same_arrays(first_head, second_head)  # the head trains while the backbone is frozen
    changed = [name for name in third if not same_arrays(third[name], second[name])]
    assert "stream1_block1_dense_conv" in changed and "stream1_block1_dense_bn" in changed
    batch_norms = [name for name in third if name.endswith("_bn")]
    assert any(not np.array_equal(third[name][2], second[name][2]) for name in batch_norms)  # moving means

    reloaded, config = runs.load_run(run_dir, weights=epochs[3])
    images = np.random.default_rng(2).random((3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(infer(reloaded, images), infer(model, images), atol=1e-6)
    normalization = reloaded.get_layer("normalization")
    np.testing.assert_allclose(np.ravel(keras.ops.convert_to_numpy(normalization.mean)),
                               convert.OFFICIAL_PREPROCESSING["mean"], rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.ravel(keras.ops.convert_to_numpy(normalization.variance))),
                               convert.OFFICIAL_PREPROCESSING["std"], rtol=1e-6)
    image = next((dataset / "test" / "dark").iterdir())
    cropped = infer(reloaded, data.load_image(image, 32, 0.875)[None])
    whole = infer(reloaded, data.load_image(image, 32)[None])
    assert not np.allclose(cropped, whole)
    np.testing.assert_allclose(predict_files(reloaded, [str(image)], config), cropped, rtol=1e-5, atol=1e-6)


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
