"""Evaluate a trained run on its test split (`evaluate_run`; the command line
is `keras_parnet.cli.evaluate`): the images of `test/` only, never those
that trained the model or selected its checkpoint (val/ or the recorded
validation split of train/); a run that validated on `test/` (`--val-split 0`
without val/) gets a warning in its report that its accuracy is optimistic. Writes into the run folder (see
`keras_parnet.runs`), or the folder `out_dir` names:

    report.json, report.txt            accuracy, top-k accuracy, per-class
                                       precision / recall / F1 / support,
                                       macro and weighted averages
    confusion_matrix.png               counts
    confusion_matrix_normalized.png    rows divided by the class support
    curves.png                         loss and accuracy per epoch (history.csv)
    worst_predictions.png              the most confidently wrong test images

With `artifact` the classifier is an artifact written by
`keras_parnet.export` (`.keras`, `.tflite`, `.onnx` or a SavedModel folder),
run by its own runtime, on the same test split of the same run (`path`, else
the artifact's folder when it holds a run.json, else the newest in
`logs_dir`): the same report, with `artifact`, `artifact_format` and
`artifact_input` in report.json, so that what fusion and each quantization
cost is the difference of two accuracies. It goes to
`<run>/artifact_reports/<artifact name>/` (or `out_dir`), leaving the run's own
report as it is. Images are read as for the Keras model
(`keras_parnet.predict.predict_paths`); see
`keras_parnet.predict.load_artifact_classifier` for what an artifact is fed.
"""

import csv
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np

from keras_parnet.files import output_dir, write_atomically
from keras_parnet.metrics import MetricWarning, classification_report, format_report, worst_predictions
from keras_parnet.plots import plot_confusion_matrix, plot_history, plot_worst_predictions, save_figure

REPORT_JSON = "report.json"
REPORT_TEXT = "report.txt"
CONFUSION_PLOT = "confusion_matrix.png"
CONFUSION_NORMALIZED_PLOT = "confusion_matrix_normalized.png"
CURVES_PLOT = "curves.png"
WORST_PLOT = "worst_predictions.png"
# Where an artifact's report goes in its run folder: <run>/artifact_reports/<artifact name>/.
ARTIFACT_REPORTS = "artifact_reports"
BATCH_SIZE = 32
# How many of the most confidently wrong test images worst_predictions.png shows.
WORST = 16


class EvaluateError(ValueError):
    """An evaluation that cannot run (no dataset, empty test split, ...)."""


# Training history ------------------------------------------------------------


def _numbers(header, row):
    """`{column: float}` of a history row (empty cells NaN, `epoch` an int),
    or `None` if a cell is not a number."""
    try:
        values = {name: float(cell) if cell.strip() else math.nan for name, cell in zip(header, row)}
        values["epoch"] = int(values["epoch"])
    except (ValueError, OverflowError):
        return None
    return values


def read_history(path):
    """Reads a Keras `CSVLogger` file into `{column: float array}`, one entry
    per epoch (the last row wins when a resumed run logged an epoch twice),
    with `epoch` counted from 1; empty cells are NaN.

    Rows cut short (a kill while the row was written leaves a last line
    without its end) or holding something other than numbers are left out,
    with one warning naming their line numbers.

    Raises:
        EvaluateError: no column header or no readable row.
    """
    # A crash can leave NUL bytes where the last row was being written.
    text = Path(path).read_text(errors="replace").replace("\0", "")
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    if "epoch" not in header:
        raise EvaluateError(f"{path} is not a training history: its first line names no 'epoch' column.")
    rows = [(reader.line_num, row) for row in reader if row]
    cut_short = rows[-1][0] if rows and not text.endswith(("\n", "\r")) else None
    by_epoch, skipped = {}, []
    for line, row in rows:
        values = _numbers(header, row) if line != cut_short and len(row) == len(header) else None
        if values is None:
            skipped.append(str(line))
        else:
            by_epoch[int(values.pop("epoch"))] = values
    if skipped:
        warnings.warn(f"{path}: skipped line{'s' * (len(skipped) > 1)} {', '.join(skipped)}, cut short "
                      "or not numbers; the curves leave those epochs out.", stacklevel=2)
    if not by_epoch:
        raise EvaluateError(f"{path} holds no readable epochs.")
    epochs = sorted(by_epoch)
    history = {name: np.array([by_epoch[epoch][name] for epoch in epochs])
               for name in header if name != "epoch"}
    history["epoch"] = np.array(epochs) + 1
    return history


# Evaluating a run --------------------------------------------------------------


def resolve_dataset(config, run_dir, dataset=None):
    """The dataset folder: `dataset` if given, else the one the run config
    (`run_dir/run.json`) records.

    A relative recorded path is tried from the working folder, then from the
    folder holding `logs/` (where train.py ran with the default --logs-dir).
    """
    if dataset is not None:
        path = Path(dataset).expanduser()
        if not path.is_dir():
            raise EvaluateError(f"dataset {path} is not a folder: pass --dataset DIR holding test/.")
        return path
    recorded = config.get("training", {}).get("dataset")
    if recorded is None:
        raise EvaluateError("run.json records no dataset: pass --dataset DIR holding test/.")
    candidates = [Path(recorded)]
    if not candidates[0].is_absolute():
        candidates.append(Path(run_dir).resolve().parent.parent / recorded)
    for path in candidates:
        if path.is_dir():
            return path
    raise EvaluateError(f"the run's dataset {recorded} is not found: pass --dataset DIR holding test/.")


def checkpoint_selected_on_test(config, run_dir, dataset_dir):
    """Whether the run validated on `dataset_dir/test` (its early stopping and
    best.weights.h5 were chosen on the images evaluated). Runs trained before
    validation splits were recorded validated on test/; converted runs were
    not trained here."""
    if "training" not in config or config.get("validation", {"folder": "test"})["folder"] != "test":
        return False
    try:
        return resolve_dataset(config, run_dir).resolve() == Path(dataset_dir).resolve()
    except EvaluateError:  # the recorded dataset is gone: another one is evaluated
        return False


def predict_files(model, paths, config, batch_size=BATCH_SIZE):
    """Predicts image files as the predict tool does (`keras_parnet.predict.predict_paths`,
    run.json's `preprocessing`) with a Keras model or a classifier function
    (`keras_parnet.predict.as_classifier`).

    Returns:
        Float array `(len(paths), num_classes)`.

    Raises:
        EvaluateError: a file no longer decodes (it was scanned readable).
    """
    from keras_parnet import predict

    probabilities = []
    for _, _, outputs, error in predict.predict_paths(model, paths, config["image_size"],
                                                       config["preprocessing"], batch_size):
        if error:
            raise EvaluateError(f"{error} It changed during the evaluation: evaluate again.")
        probabilities.append(outputs)
    return np.stack(probabilities).astype(np.float64)


def _save(figure, path):
    return save_figure(figure, path).name


def write_plots(run_dir, report, paths, labels, probabilities, image_size, worst_indices,
                out_dir=None):
    """Writes the report plots into `out_dir` (default `run_dir`), the
    training curves from `run_dir`'s history; returns `{plot: file name}`.

    `worst_indices` (from `worst_predictions`) picks the images of the grid.
    """
    from keras_parnet.callbacks import HISTORY_FILE
    from keras_parnet.data import load_image

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    class_names = [entry["name"] for entry in report["classes"]]
    matrix = report["confusion_matrix"]
    plots = {
        "confusion_matrix": _save(plot_confusion_matrix(matrix, class_names), out_dir / CONFUSION_PLOT),
        "confusion_matrix_normalized": _save(
            plot_confusion_matrix(matrix, class_names, normalize=True), out_dir / CONFUSION_NORMALIZED_PLOT),
    }
    if (run_dir / HISTORY_FILE).is_file():
        try:
            history = read_history(run_dir / HISTORY_FILE)
        except EvaluateError as error:
            warnings.warn(f"{error} {CURVES_PLOT} is not written.", stacklevel=2)
        else:
            plots["curves"] = _save(plot_history(history), out_dir / CURVES_PLOT)
    if len(worst_indices):
        images = np.stack([load_image(paths[index], image_size) / 255 for index in worst_indices])
        figure = plot_worst_predictions(images, labels[worst_indices], probabilities[worst_indices],
                                        class_names)
        plots["worst_predictions"] = _save(figure, out_dir / WORST_PLOT)
    return plots


def evaluate_run(path=None, weights=None, dataset=None, top_k=5, batch_size=BATCH_SIZE, worst=WORST,
                 fuse=True, logs_dir="logs", out_dir=None, artifact=None):
    """Evaluates a trained run on the test split of its dataset.

    Args:
        path: run folder or weights file beside a run.json (`None`: the
            newest run in `logs_dir`, or with `weights` the run.json beside
            them), as for `runs.load_run`.
        weights: weights file instead of the run's best.
        dataset: dataset folder instead of the one run.json records.
        top_k: `k` of the top-k accuracy.
        batch_size: images per prediction batch.
        worst: how many misclassified images to plot (0: none).
        fuse: evaluate the reparameterized (inference) model.
        logs_dir: where to look for the newest run.
        out_dir: where to write the report and plots (default: the run
            folder; with `artifact`, `<run>/artifact_reports/<artifact name>/`).
        artifact: an artifact written by `keras_parnet.export` to evaluate
            instead of the run's Keras model (not with `weights` or
            `fuse=False`); without `path`, the run is the artifact's folder
            when it holds a run.json.

    Returns:
        The report dict written to `out_dir/report.json`: what
        `classification_report` returns plus the run, weights, dataset,
        whether the test split also selected the checkpoint
        (`checkpoint_selected_on_test`, then also in `warnings`), the
        artifact (`artifact`, `artifact_format`, `artifact_input`: `None`
        for the Keras model; then `weights` and `fused` are `None`), the
        worst predictions (`worst`: path, true and predicted class and their
        probabilities), the output folder (`out_dir`) and the plot files
        (`plots`).

    Raises:
        OutputError: `out_dir` cannot be written (a file, read-only, full).
        PredictError: the model outputs NaN (broken weights), or the artifact
            is missing, unreadable or made for other classes.
    """
    from keras_parnet.data import scan_split
    from keras_parnet.predict import check_finite, load_artifact_classifier, resolve_artifact
    from keras_parnet.runs import load_run, read_run, resolve_run

    if artifact is not None:
        if weights is not None:
            raise EvaluateError("--weights and --artifact exclude each other: the artifact holds its weights.")
        if not fuse:
            raise EvaluateError("--no-fuse is for the run's Keras model: an artifact is evaluated as exported.")
        artifact, run_dir = resolve_artifact(artifact, path, logs_dir)
    else:
        if path is None and weights is not None:
            path = weights
        run_dir, _ = resolve_run(path, logs_dir)
    # The dataset and the output folder are checked before the (slower) model is built.
    config = read_run(run_dir)
    dataset_dir = resolve_dataset(config, run_dir, dataset)
    split_dir = dataset_dir / "test"
    class_names = config["class_names"]
    paths, labels, _ = scan_split(split_dir, class_names)
    selected_by_test = checkpoint_selected_on_test(config, run_dir, dataset_dir)
    if out_dir is not None:
        out_dir = output_dir(out_dir, "--out")
    elif artifact is not None:
        out_dir = output_dir(Path(run_dir) / ARTIFACT_REPORTS / artifact.name,
                             "the artifact's report folder (write elsewhere with --out)")
    else:
        out_dir = output_dir(run_dir, "the run folder (write elsewhere with --out)")
    if artifact is not None:
        model, config = load_artifact_classifier(artifact, config, run_dir)
    else:
        model, config = load_run(path, weights, logs_dir)
        if fuse:
            from keras_parnet.reparam import reparameterize

            model = reparameterize(model)
    # By path: a second scan (data.make_dataset) would decode every file again.
    probabilities = predict_files(model, paths, config, batch_size)
    check_finite(probabilities, paths)
    with warnings.catch_warnings():
        # The messages are kept in report["warnings"] and printed with it.
        warnings.simplefilter("ignore", MetricWarning)
        metrics = classification_report(labels, probabilities, class_names, top_k)
    if selected_by_test:
        metrics["warnings"].append(
            "the test split also selected the checkpoint (the run validated on test/: no val/ folder and "
            "--val-split 0), so this accuracy is optimistic; train with a val/ folder or --val-split for an "
            "unbiased one.")
    indices = worst_predictions(labels, probabilities, worst)
    predictions = probabilities.argmax(axis=1)
    report = {
        "run_dir": str(run_dir),
        "weights": config.get("weights"),
        "artifact": config.get("artifact"),
        "artifact_format": config.get("artifact_format"),
        "artifact_input": config.get("artifact_input"),
        "dataset": str(dataset_dir),
        "split": "test",
        "checkpoint_selected_on_test": selected_by_test,
        "fused": bool(fuse) if artifact is None else None,
        **metrics,
        "worst": [
            {"path": str(paths[index]),
             "true": class_names[labels[index]],
             "predicted": class_names[predictions[index]],
             "probability_true": float(probabilities[index, labels[index]]),
             "probability_predicted": float(probabilities[index, predictions[index]])}
            for index in indices
        ],
    }
    report["out_dir"] = str(out_dir)
    report["plots"] = write_plots(run_dir, report, paths, labels, probabilities,
                                  config["image_size"], indices, out_dir)
    write_atomically(out_dir / REPORT_JSON,
                     lambda temporary: temporary.write_text(json.dumps(report, indent=2) + "\n"))
    write_atomically(out_dir / REPORT_TEXT, lambda temporary: temporary.write_text(format_report(report)))
    return report
