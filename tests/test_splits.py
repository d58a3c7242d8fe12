"""The three roles of a dataset folder: train/ trains, val/ or a recorded
--val-split of train/ selects the checkpoint, test/ is read only by evaluate.
Training on the recorded split, and keeping it on --resume, is checked on
test_train's end-to-end run."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_WIDTHS, write_dark_bright_dataset

from keras_parnet import data, runs
from keras_parnet.cli import analyze as analyze_cli
from keras_parnet.cli import train as train_cli

pytestmark = pytest.mark.usefixtures("shallow_module")  # see conftest.SHALLOW_STREAM_DEPTHS

CLASS_NAMES = ["bright", "dark"]


def image_files(split_dir):
    """Every image below `split_dir`, found independently of `data.list_images`."""
    return sorted(str(path) for path in Path(split_dir).rglob("*.jpg"))


def class_of(path):
    return Path(path).parent.name


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Imbalanced on purpose: 10 dark and 20 bright training images."""
    return write_dark_bright_dataset(tmp_path_factory.mktemp("data"), (10, 20), (3, 3))


def test_val_split_is_stratified_seeded_and_disjoint(dataset):
    train_files, val_files, record = data.dataset_splits(dataset, CLASS_NAMES, 0.2, seed=7)
    assert sorted(train_files + val_files) == image_files(dataset / "train")
    assert not set(train_files) & set(val_files)
    assert not set(train_files + val_files) & set(image_files(dataset / "test"))
    per_class = {name: sum(class_of(path) == name for path in val_files) for name in CLASS_NAMES}
    assert per_class == {"bright": 4, "dark": 2}  # 0.2 of 20 and of 10
    assert record == {"folder": "train", "fraction": 0.2, "seed": 7,
                      "files": [str(Path(path).relative_to(dataset).as_posix()) for path in val_files]}

    assert data.dataset_splits(dataset, CLASS_NAMES, 0.2, seed=7) == (train_files, val_files, record)
    other_seed = data.dataset_splits(dataset, CLASS_NAMES, 0.2, seed=8)[1]
    assert sorted(other_seed) != sorted(val_files)
    assert {name: sum(class_of(path) == name for path in other_seed) for name in CLASS_NAMES} == per_class


def test_make_dataset_reads_only_the_files_given(dataset):
    _, val_files, _ = data.dataset_splits(dataset, CLASS_NAMES, 0.2, seed=0)
    batches, names, count = data.make_dataset(dataset / "train", 32, 100, CLASS_NAMES, files=val_files)
    images, labels = next(iter(batches))
    assert count == len(val_files) == len(images)
    assert [names[label] for label in labels.numpy().argmax(1)] == list(map(class_of, val_files))
    np.testing.assert_array_equal(images.numpy(), np.stack([data.load_image(path, 32) for path in val_files]))


def test_every_class_keeps_an_image_on_each_side(dataset):
    _, tiny_fraction, _ = data.dataset_splits(dataset, CLASS_NAMES, 0.01, seed=0)
    assert sorted(map(class_of, tiny_fraction)) == ["bright", "dark"]
    train_files, large_fraction, _ = data.dataset_splits(dataset, CLASS_NAMES, 0.99, seed=0)
    assert sorted(map(class_of, train_files)) == ["bright", "dark"]
    assert len(large_fraction) == 28


def test_val_folder_wins_over_val_split(tmp_path):
    dataset = write_dark_bright_dataset(tmp_path / "data", (4, 4), (2, 2))
    shutil.copytree(dataset / "test", dataset / "val")
    train_files, val_files, record = data.dataset_splits(dataset, CLASS_NAMES, 0.5, seed=0)
    assert record == {"folder": "val"}
    assert train_files == image_files(dataset / "train")
    assert val_files == image_files(dataset / "val")


def test_val_split_zero_validates_on_test(dataset):
    train_files, val_files, record = data.dataset_splits(dataset, CLASS_NAMES, 0, seed=0)
    assert record == {"folder": "test"}
    assert (train_files, val_files) == (image_files(dataset / "train"), image_files(dataset / "test"))


def test_recorded_split_is_kept_and_new_images_train(tmp_path):
    dataset = write_dark_bright_dataset(tmp_path / "data", (5, 5), (2, 2))
    _, val_files, record = data.dataset_splits(dataset, CLASS_NAMES, 0.4, seed=0)
    added = dataset / "train" / "dark" / "added.jpg"
    shutil.copy(val_files[0], added)
    train_files, kept, kept_record = data.dataset_splits(dataset, CLASS_NAMES, 0.4, seed=1, recorded=record)
    assert (kept, kept_record) == (val_files, record)
    assert str(added) in train_files
    assert sorted(train_files) == sorted(set(image_files(dataset / "train")) - set(val_files))


def test_class_with_one_image_is_a_one_line_error(tmp_path, capsys):
    dataset = write_dark_bright_dataset(tmp_path / "data", (1, 3), (1, 1))
    with pytest.raises(data.DatasetError, match="class dark has 1 training image"):
        data.dataset_splits(dataset, CLASS_NAMES, 0.1, seed=0)
    assert train_cli.main(["--dataset", str(dataset), "--logs-dir", str(tmp_path / "logs")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: class dark has 1 training image")
    assert "--val-split 0" in error[0] and "val/" in error[0]
    assert not (tmp_path / "logs").exists()


def test_val_split_flag_is_a_fraction_below_one(capsys):
    parser = train_cli.build_parser()
    assert parser.parse_args(["--val-split", "0"]).val_split == 0
    assert parser.parse_args(["--val-split", "0.25"]).val_split == 0.25
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--val-split", "1"])
    assert stop.value.code == 2
    assert "argument --val-split: 1 is not a fraction of 0 or more and below 1" in capsys.readouterr().err


def test_resume_refuses_another_val_split(tmp_path):
    runs.write_run(tmp_path, "ParNet", {"widths": list(TINY_WIDTHS)}, 32, CLASS_NAMES,
                   training={"val_split": 0.2})
    args = train_cli.build_parser().parse_args(["--resume", str(tmp_path), "--val-split", "0.3"])
    with pytest.raises(ValueError, match="trained with --val-split 0.2, not 0.3"):
        train_cli.resolve_settings(args)


def test_analyze_checks_leaks_across_train_val_and_test(tmp_path, capsys):
    dataset = write_dark_bright_dataset(tmp_path / "data", (4, 4), (2, 2))
    _, val_files, record = data.dataset_splits(dataset, CLASS_NAMES, 0.25, seed=0)
    shutil.copy(val_files[0], dataset / "test" / class_of(val_files[0]) / "copy.jpg")
    run_dir = tmp_path / "run"
    runs.write_run(run_dir, "ParNet", {"widths": list(TINY_WIDTHS)}, 32, CLASS_NAMES,
                   training={"dataset": str(dataset)}, validation=record)
    assert analyze_cli.main(["--run", str(run_dir), "--out", str(tmp_path / "analysis")]) == 0
    report = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    assert report["counts"] == {"train": {"bright": 3, "dark": 3}, "val": {"bright": 1, "dark": 1},
                                "test": {"bright": 3, "dark": 2} if class_of(val_files[0]) == "bright"
                                else {"bright": 2, "dark": 3}}
    assert [group["splits"] for group in report["duplicates"]] == [["test", "val"]]
    assert any(message.startswith("1 file(s) in both val and test") for message in report["warnings"])
    assert "in both val and test" in capsys.readouterr().out


def test_analyze_takes_a_val_folder(tmp_path):
    from keras_parnet.analyze import analyze_dataset

    dataset = write_dark_bright_dataset(tmp_path / "data", (4, 4), (2, 2))
    shutil.copytree(dataset / "test", dataset / "val")
    report = analyze_dataset(dataset)
    assert list(report["counts"]) == ["train", "val", "test"]
    assert report["counts"]["val"] == {"bright": 2, "dark": 2}
    assert len([group for group in report["duplicates"] if group["splits"] == ["test", "val"]]) == 4
    assert any("in both val and test" in message for message in report["warnings"])


# Evaluate reads test/ and nothing else ---------------------------------------------------


def write_untrained_run(run_dir, dataset, validation):
    """A run folder with a tiny model's initial weights: evaluate needs no training."""
    from keras_parnet import ParNet

    runs.write_run(run_dir, "ParNet", {"widths": list(TINY_WIDTHS)}, 32, CLASS_NAMES,
                   training={"dataset": str(dataset)}, validation=validation)
    ParNet(TINY_WIDTHS, input_shape=(32, 32, 3), classes=2).save_weights(run_dir / runs.BEST_WEIGHTS)
    return run_dir


@pytest.fixture
def evaluated_paths(monkeypatch):
    """The image paths each `evaluate_run` predicts, in calls."""
    from keras_parnet import evaluate

    calls = []
    original = evaluate.predict_files

    def recording(model, paths, *args, **kwargs):
        calls.append([str(path) for path in paths])
        return original(model, paths, *args, **kwargs)

    monkeypatch.setattr(evaluate, "predict_files", recording)
    return calls


@pytest.mark.slow  # evaluates two run folders end to end (17 s of the fast loop)
def test_evaluate_reads_exactly_test_and_says_when_test_selected_the_checkpoint(dataset, tmp_path,
                                                                                evaluated_paths):
    from keras_parnet.evaluate import evaluate_run

    train_files, val_files, record = data.dataset_splits(dataset, CLASS_NAMES, 0.2, seed=0)
    held_out = write_untrained_run(tmp_path / "held_out", dataset, record)
    report = evaluate_run(held_out, worst=0)
    assert evaluated_paths == [image_files(dataset / "test")]
    assert not set(evaluated_paths[0]) & set(train_files + val_files)
    assert report["checkpoint_selected_on_test"] is False
    assert "selected the checkpoint" not in (held_out / "report.txt").read_text()

    on_test = write_untrained_run(tmp_path / "on_test", dataset,
                                  data.dataset_splits(dataset, CLASS_NAMES, 0, seed=0)[2])
    report = evaluate_run(on_test, worst=0)
    assert evaluated_paths[1] == image_files(dataset / "test")
    saved = json.loads((on_test / "report.json").read_text())
    assert saved["checkpoint_selected_on_test"] is True
    assert any("test split also selected the checkpoint" in message for message in saved["warnings"])
    assert "warning: the test split also selected the checkpoint" in (on_test / "report.txt").read_text()
