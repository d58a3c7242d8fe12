import json
import warnings

import numpy as np
import pytest
from PIL import Image

from keras_parnet import evaluate, metrics, plots
from keras_parnet.cli import evaluate as evaluate_cli

CLASS_NAMES = ["cat", "dog", "fox"]
# Nine images; class "fox" is never predicted. Rows are distinct so top-2 is defined.
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
PROBABILITIES = np.array([
    [0.70, 0.20, 0.10],  # cat -> cat
    [0.30, 0.60, 0.10],  # cat -> dog, cat 2nd
    [0.50, 0.10, 0.40],  # cat -> cat
    [0.20, 0.70, 0.10],  # dog -> dog
    [0.15, 0.80, 0.05],  # dog -> dog
    [0.30, 0.60, 0.10],  # fox -> dog, fox 3rd
    [0.50, 0.20, 0.30],  # fox -> cat, fox 2nd
    [0.25, 0.45, 0.30],  # fox -> dog, fox 2nd
    [0.60, 0.30, 0.10],  # fox -> cat, fox 3rd
])
# Worked out by hand from the table above.
EXPECTED_MATRIX = [[2, 1, 0], [0, 2, 0], [2, 2, 0]]
EXPECTED_PRECISION = [2 / 4, 2 / 5, 0.0]
EXPECTED_RECALL = [2 / 3, 2 / 2, 0 / 4]
EXPECTED_F1 = [4 / 7, 4 / 7, 0.0]  # 2pr / (p + r)
EXPECTED_SUPPORT = [3, 2, 4]

pytestmark = pytest.mark.usefixtures("shallow_module")  # predicting and reporting need no depth


def test_confusion_matrix_counts_pairs():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    matrix = metrics.confusion_matrix(labels, predictions, 4)
    counted = [[int(np.sum((labels == t) & (predictions == p))) for p in range(4)] for t in range(4)]
    np.testing.assert_array_equal(matrix, counted)
    np.testing.assert_array_equal(
        metrics.confusion_matrix(LABELS, PROBABILITIES.argmax(1), 3), EXPECTED_MATRIX)


def test_report_matches_hand_computation_and_warns_for_class_never_predicted():
    with pytest.warns(metrics.MetricWarning, match="never predicted: fox"):
        report = metrics.classification_report(LABELS, PROBABILITIES, CLASS_NAMES, top_k=2)
    classes = report["classes"]
    assert [entry["name"] for entry in classes] == CLASS_NAMES
    np.testing.assert_allclose([entry["precision"] for entry in classes], EXPECTED_PRECISION)
    np.testing.assert_allclose([entry["recall"] for entry in classes], EXPECTED_RECALL)
    np.testing.assert_allclose([entry["f1"] for entry in classes], EXPECTED_F1)
    assert [entry["support"] for entry in classes] == EXPECTED_SUPPORT
    assert report["confusion_matrix"] == EXPECTED_MATRIX
    assert report["accuracy"] == pytest.approx(4 / 9)
    assert report["top_k_accuracy"] == pytest.approx(7 / 9)  # rows 5 and 8 miss
    assert report["macro_avg"]["precision"] == pytest.approx(0.9 / 3)
    assert report["macro_avg"]["recall"] == pytest.approx(5 / 9)
    assert report["macro_avg"]["f1"] == pytest.approx(8 / 21)
    assert report["weighted_avg"]["precision"] == pytest.approx((3 * 0.5 + 2 * 0.4) / 9)
    assert report["weighted_avg"]["recall"] == pytest.approx(4 / 9)
    assert report["weighted_avg"]["f1"] == pytest.approx((3 + 2) * 4 / 7 / 9)
    true_probabilities = [0.7, 0.3, 0.5, 0.7, 0.8, 0.1, 0.3, 0.3, 0.1]
    assert report["loss"] == pytest.approx(-np.mean(np.log(true_probabilities)))
    assert report["warnings"] == ["precision set to 0 for classes never predicted: fox"]
    json.dumps(report)  # serialisable as is


def test_class_without_samples_gets_recall_zero_with_warning():
    probabilities = np.eye(3)[[0, 1, 1, 1]]
    with pytest.warns(metrics.MetricWarning) as record:
        report = metrics.classification_report([0, 0, 1, 1], probabilities, CLASS_NAMES)
    messages = [str(warning.message) for warning in record]
    assert any("never predicted: fox" in message for message in messages)
    assert any("without test images: fox" in message for message in messages)
    fox = report["classes"][2]
    assert (fox["precision"], fox["recall"], fox["f1"], fox["support"]) == (0.0, 0.0, 0.0, 0)
    assert report["classes"][0]["recall"] == 0.5
    assert report["top_k_accuracy"] is None  # top-5 of 3 classes is 1 by construction


def test_no_warning_when_every_metric_is_defined():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = metrics.classification_report([0, 1, 2], np.eye(3), CLASS_NAMES, top_k=1)
    assert report["accuracy"] == report["top_k_accuracy"] == 1.0
    assert report["warnings"] == []


def test_report_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not fit 3 labels and 3 classes"):
        metrics.classification_report([0, 1, 2], np.ones((3, 2)) / 2, CLASS_NAMES)


def test_format_report_lists_classes_averages_and_warnings():
    with pytest.warns(metrics.MetricWarning):
        report = metrics.classification_report(LABELS, PROBABILITIES, CLASS_NAMES, top_k=2)
    text = metrics.format_report(report)
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1", "support"]
    assert lines[1].split() == ["cat", "0.5000", "0.6667", "0.5714", "3"]
    assert lines[5].split() == ["macro", "avg", "0.3000", "0.5556", "0.3810", "9"]
    assert "0.4444  (9 images)" in text and "top-2 accuracy" in text
    assert "warning: precision set to 0 for classes never predicted: fox" in text


def test_worst_predictions_are_the_lowest_true_probabilities_among_errors():
    # Misclassified rows: 1 (0.3), 5 (0.1), 6 (0.3), 7 (0.3), 8 (0.1).
    np.testing.assert_array_equal(metrics.worst_predictions(LABELS, PROBABILITIES, 3), [5, 8, 1])
    assert len(metrics.worst_predictions(LABELS, PROBABILITIES, 16)) == 5
    assert len(metrics.worst_predictions([0, 1, 2], np.eye(3), 16)) == 0


def _tick_texts(labels):
    return [label.get_text() for label in labels]


def _assert_png(path):
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix_plot(tmp_path, normalize):
    figure = plots.plot_confusion_matrix(EXPECTED_MATRIX, CLASS_NAMES, normalize=normalize)
    axes = figure.axes[0]
    assert axes.get_title() == ("Confusion matrix (row-normalised)" if normalize
                                else "Confusion matrix (counts)")
    assert axes.get_xlabel() == "Predicted label" and axes.get_ylabel() == "True label"
    assert _tick_texts(axes.get_xticklabels()) == CLASS_NAMES
    assert _tick_texts(axes.get_yticklabels()) == CLASS_NAMES
    matrix = np.array(EXPECTED_MATRIX, dtype=float)
    if normalize:
        matrix /= matrix.sum(axis=1, keepdims=True)
        expected_cells = [f"{value:.2f}" for value in matrix.ravel()]
        assert figure.axes[1].get_ylabel() == "fraction of the true class"
    else:
        expected_cells = [str(int(value)) for value in matrix.ravel()]
    assert [text.get_text() for text in axes.texts] == expected_cells
    np.testing.assert_allclose(axes.images[0].get_array(), matrix)
    figure.savefig(tmp_path / "matrix.png")
    _assert_png(tmp_path / "matrix.png")


@pytest.mark.slow
def test_training_curves_from_the_callbacks_history(tmp_path):
    import keras

    from keras_parnet.callbacks import HISTORY_FILE, training_callbacks

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = np.eye(2)[rng.integers(0, 2, 16)].astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"], run_eagerly=True)
    callbacks = training_callbacks(tmp_path, learning_rate=0.01, lr_decay=0.5)
    fitted = model.fit(x, y, validation_data=(x, y), epochs=3, batch_size=8, verbose=0,
                       callbacks=callbacks).history

    history = evaluate.read_history(tmp_path / HISTORY_FILE)
    np.testing.assert_array_equal(history["epoch"], [1, 2, 3])
    figure = plots.plot_history(history)
    loss_axes, accuracy_axes, *rate_axes = figure.axes
    assert (loss_axes.get_title(), accuracy_axes.get_title()) == ("Loss", "Accuracy")
    assert loss_axes.get_xlabel() == accuracy_axes.get_xlabel() == "epoch"
    assert (loss_axes.get_ylabel(), accuracy_axes.get_ylabel()) == ("loss", "accuracy")
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        train_line, val_line = axes.lines
        np.testing.assert_allclose(train_line.get_ydata(), fitted[metric], rtol=1e-6)
        np.testing.assert_allclose(val_line.get_ydata(), fitted[f"val_{metric}"], rtol=1e-6)
        np.testing.assert_array_equal(train_line.get_xdata(), [1, 2, 3])
        legend = [text.get_text() for text in axes.get_legend().get_texts()]
        assert legend == ["training", "validation", "learning rate"]
    assert len(rate_axes) == 2
    for axes in rate_axes:
        assert axes.get_ylabel() == "learning rate"
        np.testing.assert_allclose(axes.lines[0].get_ydata(), [0.01, 0.005, 0.0025], rtol=1e-6)
    figure.savefig(tmp_path / "curves.png")
    _assert_png(tmp_path / "curves.png")


def test_read_history_keeps_the_last_row_of_a_repeated_epoch(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,accuracy,loss,learning_rate,val_accuracy,val_loss\n"
                    "0,0.5,1.0,0.001,0.4,1.1\n1,0.6,0.9,0.001,0.5,1.0\n1,0.7,0.8,0.001,0.6,0.9\n")
    history = evaluate.read_history(path)
    np.testing.assert_array_equal(history["epoch"], [1, 2])
    np.testing.assert_allclose(history["loss"], [1.0, 0.8])
    np.testing.assert_allclose(history["val_accuracy"], [0.4, 0.6])


def test_worst_predictions_grid(tmp_path):
    rng = np.random.default_rng(0)
    indices = metrics.worst_predictions(LABELS, PROBABILITIES, 16)
    images = rng.uniform(0, 1, (len(indices), 32, 40, 3))
    figure = plots.plot_worst_predictions(images, LABELS[indices], PROBABILITIES[indices], CLASS_NAMES)
    assert figure.get_suptitle() == "Worst misclassified test images"
    assert len(figure.axes) == 5
    titles = [axes.get_title() for axes in figure.axes]
    assert titles[0] == "true: fox (0.10)\npredicted: dog (0.60)"  # row 5
    assert titles[1] == "true: fox (0.10)\npredicted: cat (0.60)"  # row 8
    assert titles[2] == "true: cat (0.30)\npredicted: dog (0.60)"  # row 1
    np.testing.assert_allclose(figure.axes[0].images[0].get_array(), images[0])
    figure.savefig(tmp_path / "worst.png")
    _assert_png(tmp_path / "worst.png")


# A run folder evaluated end to end -----------------------------------------------


def _write_split(split_dir, images_per_class, rng, size=(36, 40)):
    """Random PNGs in split_dir/<class>/; returns (paths, labels) in scan order."""
    paths, labels = [], []
    for label, name in enumerate(CLASS_NAMES):
        (split_dir / name).mkdir(parents=True)
        for index in range(images_per_class):
            path = split_dir / name / f"{index:02d}.png"
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
            paths.append(path)
            labels.append(label)
    return paths, np.array(labels)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run folder of a tiny ParNet at 32 px with its history, the test
    split's paths and labels, and what the model gives for them (an eager
    call: `predict` would trace a function for this one batch)."""
    from conftest import TINY_WIDTHS, infer, randomize_batch_norm

    from keras_parnet import ParNet
    from keras_parnet.data import load_image
    from keras_parnet.runs import BEST_WEIGHTS, write_run

    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    test_paths, test_labels = _write_split(root / "data" / "test", 3, rng)
    run_dir = root / "logs" / "tiny"
    write_run(run_dir, "ParNet", {"widths": list(TINY_WIDTHS)}, 32, CLASS_NAMES,
              training={"dataset": str(root / "data")})
    model = randomize_batch_norm(ParNet(TINY_WIDTHS, input_shape=(32, 32, 3), classes=3), seed=1)
    model.save_weights(run_dir / BEST_WEIGHTS)
    (run_dir / "history.csv").write_text(
        "epoch,accuracy,loss,learning_rate,val_accuracy,val_loss\n"
        "0,0.4,1.2,0.001,0.3,1.3\n1,0.5,1.0,0.00095,0.4,1.1\n")
    # The bare network on numpy-scaled pixels: the run's model scales them in its first layer.
    images = np.stack([load_image(path, 32) for path in test_paths]) / 255
    probabilities = infer(model, images)
    return run_dir, test_paths, test_labels, probabilities


@pytest.mark.slow
def test_evaluate_run_end_to_end(trained_run, capsys):
    run_dir, test_paths, test_labels, probabilities = trained_run
    assert evaluate_cli.main(["--run", str(run_dir), "--no-fuse", "--top-k", "2", "--batch-size", "3"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((run_dir / "report.json").read_text())

    predictions = probabilities.argmax(axis=1)
    assert report["samples"] == 9 and report["fused"] is False
    assert report["accuracy"] == pytest.approx(np.mean(predictions == test_labels))
    top_2 = np.argsort(-probabilities, axis=1)[:, :2]
    assert report["top_k_accuracy"] == pytest.approx(np.mean((top_2 == test_labels[:, None]).any(1)))
    assert report["confusion_matrix"] == [
        [int(np.sum((test_labels == t) & (predictions == p))) for p in range(3)] for t in range(3)]
    assert [entry["support"] for entry in report["classes"]] == [3, 3, 3]
    assert report["dataset"] == str(run_dir.parents[1] / "data")

    wrong = np.flatnonzero(predictions != test_labels)
    assert len(report["worst"]) == len(wrong) > 0
    first = wrong[np.argmin(probabilities[wrong, test_labels[wrong]])]
    assert report["worst"][0]["path"] == str(test_paths[first])
    assert report["worst"][0]["probability_true"] == pytest.approx(
        probabilities[first, test_labels[first]], abs=1e-5)

    assert set(report["plots"]) == {"confusion_matrix", "confusion_matrix_normalized", "curves",
                                    "worst_predictions"}
    for name in report["plots"].values():
        _assert_png(run_dir / name)
    assert (run_dir / "report.txt").read_text() in printed


@pytest.mark.slow
def test_evaluate_fused_model_agrees(trained_run):
    run_dir, _, test_labels, probabilities = trained_run
    report = evaluate.evaluate_run(run_dir, worst=0)
    assert report["fused"] is True and "worst_predictions" not in report["plots"]
    expected_loss = -np.mean(np.log(probabilities[np.arange(9), test_labels]))
    assert report["loss"] == pytest.approx(expected_loss, abs=1e-4)
    assert report["accuracy"] == pytest.approx(np.mean(probabilities.argmax(1) == test_labels))


@pytest.mark.slow
def test_image_that_fails_to_decode_is_named_and_left_out(trained_run, tmp_path, capsys):
    import io

    run_dir, *_ = trained_run
    rng = np.random.default_rng(1)
    _write_split(tmp_path / "test", 2, rng)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buffer, "JPEG")
    contents = buffer.getvalue()
    # Intact start and end marker, garbage inside: only decoding finds it.
    garbage = rng.integers(0, 256, len(contents) - 400, dtype=np.uint8).tobytes()
    damaged = tmp_path / "test" / "cat" / "damaged.jpg"
    damaged.write_bytes(contents[:200] + garbage + contents[-200:])
    out = tmp_path / "out"
    assert evaluate_cli.main(["--run", str(run_dir), "--dataset", str(tmp_path), "--no-fuse", "--out", str(out)]) == 0
    error = capsys.readouterr().err
    assert error.startswith("warning: Skipped 1 unreadable image file(s)") and f"{damaged} is " in error
    report = json.loads((out / evaluate.REPORT_JSON).read_text())
    assert report["samples"] == 6 and str(damaged) not in json.dumps(report)


def test_image_that_stops_decoding_after_the_scan_is_named(tmp_path):
    gone = tmp_path / "gone.png"
    with pytest.raises(evaluate.EvaluateError, match=f"{gone} does not exist. It changed during the evaluation"):
        evaluate.predict_files(None, [gone], {"image_size": [32, 32], "preprocessing": {}})


def test_dataset_path_relative_to_the_logs_parent(tmp_path, monkeypatch):
    (tmp_path / "project" / "data" / "test").mkdir(parents=True)
    run_dir = tmp_path / "project" / "logs" / "run"
    config = {"training": {"dataset": "data"}}
    monkeypatch.chdir(tmp_path)
    assert evaluate.resolve_dataset(config, run_dir) == tmp_path / "project" / "data"
    with pytest.raises(evaluate.EvaluateError, match="run.json records no dataset: pass --dataset"):
        evaluate.resolve_dataset({}, run_dir)
    with pytest.raises(evaluate.EvaluateError, match="the run's dataset elsewhere is not found"):
        evaluate.resolve_dataset({"training": {"dataset": "elsewhere"}}, run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("arguments, message", [
    (["--run", "{run}", "--dataset", "{missing}"], "is not a folder: pass --dataset DIR"),
    (["--run", "{missing}"], "does not exist: pass a run folder"),
    (["--run", "{run}", "--dataset", "{empty}"], "does not exist: expected a folder with one subfolder"),
])
def test_cli_errors_are_one_line(trained_run, tmp_path, capsys, arguments, message):
    run_dir, *_ = trained_run
    (tmp_path / "empty").mkdir()
    names = {"run": run_dir, "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    assert evaluate_cli.main([argument.format(**names) for argument in arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1


def test_cli_rejects_bad_numbers(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main(["--top-k", "0"])
    assert exit_info.value.code == 2
    assert "argument --top-k: 0 is not a whole number of at least 1" in capsys.readouterr().err


# Failure paths (the output folder's: tests/test_tool_faults.py) -----------------

HISTORY_HEADER = "epoch,accuracy,loss,learning_rate,val_accuracy,val_loss\n"


def test_read_history_skips_torn_and_non_numeric_rows(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text(HISTORY_HEADER
                    + "0,0.5,1.0,0.001,0.4,1.1\n"
                    + "1,0.6,abc,0.001,0.5,1.0\n"   # line 3: not a number
                    + "2,0.7,0.8,0.001,0.6,0.9\n"
                    + "3,0.7\n"                     # line 5: too few cells
                    + "4,0.8,0.7,0.001,0.6,0.8\n"
                    + "5,0.9,0.6,0.0\0\0\0")        # line 7: cut short by a kill
    with pytest.warns(UserWarning, match=r"history.csv: skipped lines 3, 5, 7, cut short or not numbers"):
        history = evaluate.read_history(path)
    np.testing.assert_array_equal(history["epoch"], [1, 3, 5])
    np.testing.assert_allclose(history["loss"], [1.0, 0.8, 0.7])


@pytest.mark.parametrize("text, message", [
    (HISTORY_HEADER + "0,0.5,1.0,0.001,0.4,1", "holds no readable epochs"),
    ("loss,accuracy\n1.0,0.5\n", "is not a training history: its first line names no 'epoch' column"),
    ("", "is not a training history"),
])
def test_read_history_without_a_readable_epoch(tmp_path, text, message):
    path = tmp_path / "history.csv"
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(evaluate.EvaluateError, match=message):
            evaluate.read_history(path)


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the trained run folder, to damage."""
    import shutil

    return shutil.copytree(trained_run[0], tmp_path / "run")


def _files(folder):
    return {path.name: path.read_bytes() for path in folder.iterdir()}


@pytest.fixture
def read_only_run(run_copy):
    """The run copy, made read-only with a read-only bind mount."""
    import subprocess

    mount = ["mount", "--bind", str(run_copy), str(run_copy)]
    remount = ["mount", "-o", "remount,bind,ro", str(run_copy)]
    for command in (mount, remount):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            subprocess.run(["umount", "-l", str(run_copy)], capture_output=True)
            pytest.skip(f"cannot bind-mount read-only here ({result.stderr.strip()})")
    yield run_copy
    subprocess.run(["umount", "-l", str(run_copy)], check=False)


@pytest.mark.slow
def test_read_only_run_folder_names_out_as_the_way_out(read_only_run, capsys):
    """One line that says to write elsewhere with --out."""
    from conftest import assert_one_line_error, main_as_process

    before = _files(read_only_run)
    result = main_as_process(evaluate_cli.main, capsys, "--run", read_only_run)
    assert_one_line_error(result, str(read_only_run), "read-only file system", "--out")
    assert _files(read_only_run) == before


@pytest.mark.slow
def test_torn_history_is_plotted_as_far_as_it_goes(run_copy, tmp_path, capsys):
    """The curves are drawn from the readable rows, one plain `warning:` line
    (no `UserWarning` and source line) names the torn row, and the report
    goes to --out, leaving the run folder as it was."""
    from conftest import main_as_process

    history = run_copy / "history.csv"
    with history.open("a") as file:
        file.write("2,0.6,0.9,0.0009")  # a kill while the row was written
    before = _files(run_copy)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # shown however often this process warned before
        result = main_as_process(evaluate_cli.main, capsys, "--run", run_copy, "--out", out, "--no-fuse",
                                 "--worst", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr and "UserWarning" not in result.stderr
    assert (f"warning: {history}: skipped line 4, cut short or not numbers; "
            "the curves leave those epochs out.") in result.stderr.splitlines()
    assert {evaluate.REPORT_JSON, evaluate.REPORT_TEXT, evaluate.CURVES_PLOT} <= set(_files(out))
    assert json.loads((out / evaluate.REPORT_JSON).read_text())["plots"]["curves"] == evaluate.CURVES_PLOT
    assert _files(run_copy) == before


@pytest.mark.slow
def test_nan_weights_are_named_not_reported(run_copy, tmp_path, capsys):
    from keras_parnet.runs import BEST_WEIGHTS, build_model, read_run

    model = build_model(read_run(run_copy))
    model.set_weights([np.full_like(weights, np.nan) for weights in model.get_weights()])
    model.save_weights(run_copy / BEST_WEIGHTS)
    out = tmp_path / "out"
    assert evaluate_cli.main(["--run", str(run_copy), "--out", str(out), "--no-fuse"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: the model outputs NaN for ") and error.count("\n") == 1
    assert "pick another checkpoint with --weights" in error
    assert list(out.iterdir()) == []


# An exported artifact evaluated on the run's test split ----------------------------


@pytest.fixture(scope="module")
def tflite_artifact(trained_run):
    """The run's default TFLite artifact (uint8 input, unquantized), written
    beside its weights with labels.txt, as `export.py` does."""
    from keras_parnet import export

    out, _ = export.export_run(trained_run[0], "tflite")
    return out


@pytest.mark.slow
def test_artifact_report_matches_the_runs_own(trained_run, tflite_artifact, tmp_path, capsys):
    from keras_parnet import predict
    from keras_parnet.runs import read_run

    run_dir, test_paths, test_labels, probabilities = trained_run
    # No RUN_DIR: the artifact's folder holds the run; the report goes beside the run's own.
    assert evaluate_cli.main(["--artifact", str(tflite_artifact), "--top-k", "2", "--logs-dir",
                          str(tmp_path / "no-logs")]) == 0
    out = run_dir / evaluate.ARTIFACT_REPORTS / tflite_artifact.name
    assert f"Report and plots in {out}" in capsys.readouterr().out
    report = json.loads((out / evaluate.REPORT_JSON).read_text())
    assert (report["artifact"], report["artifact_format"], report["artifact_input"]) == (
        str(tflite_artifact), "tflite", "uint8")
    assert report["weights"] is None and report["fused"] is None and report["run_dir"] == str(run_dir)
    assert {evaluate.CONFUSION_PLOT, evaluate.REPORT_TEXT} <= {path.name for path in out.iterdir()}

    keras_report = evaluate.evaluate_run(run_dir, top_k=2, out_dir=tmp_path / "keras")
    assert keras_report["artifact"] is None and keras_report["fused"] is True
    for key in ("samples", "accuracy", "top_k_accuracy", "confusion_matrix"):
        assert report[key] == keras_report[key], key
    assert report["loss"] == pytest.approx(keras_report["loss"], abs=1e-4)
    assert [entry["path"] for entry in report["worst"]] == [entry["path"] for entry in keras_report["worst"]]

    # Image by image, through the one code path: the artifact's classifier and the trained model.
    config = read_run(run_dir)
    classify, artifact_config = predict.load_artifact_classifier(tflite_artifact, config)
    artifact_probabilities = evaluate.predict_files(classify, test_paths, artifact_config, batch_size=4)
    np.testing.assert_allclose(artifact_probabilities, probabilities, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(artifact_probabilities.argmax(1), probabilities.argmax(1))


@pytest.mark.slow
@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist: pass a .keras, .tflite or .onnx file"),
    ("garbage", "cannot load {artifact} as a tflite artifact"),
    ("other labels", "labels.txt does not match the run's class names (line 2 is 'wolf' where the run has 'dog')"),
    ("weights", "--weights and --artifact exclude each other"),
])
def test_artifact_errors_are_one_line(trained_run, tmp_path, capsys, request, case, message):
    import shutil

    from keras_parnet.export import LABELS_FILE

    run_dir, *_ = trained_run
    artifact = tmp_path / "model.tflite"
    extra = []
    if case == "garbage":
        artifact.write_text("not a flatbuffer\n")
    elif case == "other labels":  # an artifact that loads: only its labels are wrong
        shutil.copy(request.getfixturevalue("tflite_artifact"), artifact)
        (tmp_path / LABELS_FILE).write_text("cat\nwolf\nfox\n")
    elif case == "weights":  # refused with the flags, before any file is read
        artifact.write_text("not a flatbuffer\n")
        extra = ["--weights", str(run_dir / "best.weights.h5")]
    out = tmp_path / "out"
    assert evaluate_cli.main(["--run", str(run_dir), "--artifact", str(artifact), "--out", str(out), *extra]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message.format(artifact=artifact) in error, error
    assert error.count("\n") == 1
    assert not out.exists() or not any(out.iterdir())


def test_help_names_the_artifact_report_folder(capsys):
    with pytest.raises(SystemExit):
        evaluate_cli.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--artifact PATH" in help_text and "<run>/artifact_reports/<artifact name>/" in help_text
