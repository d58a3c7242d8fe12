"""Evaluate a trained run on its test split: `python evaluate.py --help`.

Writes into the run folder (see `keras_parnet.runs`), or the folder `--out` names:

    report.json, report.txt            accuracy, top-k accuracy, per-class
                                       precision / recall / F1 / support,
                                       macro and weighted averages
    confusion_matrix.png               counts
    confusion_matrix_normalized.png    rows divided by the class support
    curves.png                         loss and accuracy per epoch (history.csv)
    worst_predictions.png              the most confidently wrong test images

With `--artifact FILE` the classifier is an artifact written by
`keras_parnet.export` (`.keras`, `.tflite`, `.onnx` or a SavedModel folder),
run by its own runtime, on the same test split of the same run (RUN_DIR, else
the artifact's folder when it holds a run.json, else the newest in
`--logs-dir`): the same report, with `artifact`, `artifact_format` and
`artifact_input` in report.json, so that what fusion and each quantization
cost is the difference of two accuracies. It goes to
`<run>/artifact_reports/<artifact name>/` (or `--out`), leaving the run's own
report as it is. Images are read as for the Keras model
(`keras_parnet.predict.predict_paths`); see
`keras_parnet.predict.load_artifact_classifier` for what an artifact is fed.
"""

import argparse
import csv
import functools
import io
import json
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from keras_parnet._cli import output_dir, run_tool, write_atomically

REPORT_JSON = "report.json"
REPORT_TEXT = "report.txt"
CONFUSION_PLOT = "confusion_matrix.png"
CONFUSION_NORMALIZED_PLOT = "confusion_matrix_normalized.png"
CURVES_PLOT = "curves.png"
WORST_PLOT = "worst_predictions.png"
# Where an artifact's report goes in its run folder: <run>/artifact_reports/<artifact name>/.
ARTIFACT_REPORTS = "artifact_reports"
# Above this many classes the per-cell numbers would overlap.
MAX_ANNOTATED_CLASSES = 30


class MetricWarning(UserWarning):
    """A metric is undefined for a class (never predicted, or no test images)
    and is reported as 0."""


class EvaluateError(ValueError):
    """An evaluation that cannot run (no dataset, empty test split, ...)."""


# Metrics ---------------------------------------------------------------------


def confusion_matrix(labels, predictions, num_classes):
    """Counts of (true label, predicted label) pairs.

    Args:
        labels: int array `(n,)` of true labels in `[0, num_classes)`.
        predictions: int array `(n,)` of predicted labels.
        num_classes: number of classes.

    Returns:
        int64 array `(num_classes, num_classes)`: row = true, column = predicted.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    pairs = labels * num_classes + predictions
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(numerator, denominator):
    """`numerator / denominator`, 0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                     where=np.asarray(denominator) > 0)


def precision_recall_f1(matrix):
    """Per-class `(precision, recall, f1, support)` from a confusion matrix.

    Precision of a class never predicted and recall of a class without samples
    are 0 (as is F1 when both are 0); a `MetricWarning` names those classes.
    Returns four arrays `(num_classes,)`.
    """
    matrix = np.asarray(matrix)
    true_positives = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = _ratio(true_positives, predicted)
    recall = _ratio(true_positives, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return precision, recall, f1, support


def undefined_metric_messages(matrix, class_names):
    """Messages for the classes whose precision or recall `precision_recall_f1`
    set to 0 because it was undefined."""
    matrix = np.asarray(matrix)
    names = np.asarray(class_names)
    messages = []
    never_predicted = names[matrix.sum(axis=0) == 0]
    if never_predicted.size:
        messages.append(f"precision set to 0 for classes never predicted: {', '.join(never_predicted)}")
    without_samples = names[matrix.sum(axis=1) == 0]
    if without_samples.size:
        messages.append(f"recall set to 0 for classes without test images: {', '.join(without_samples)}")
    return messages


def top_k_accuracy(labels, probabilities, k):
    """Fraction of samples whose true label is among the `k` highest scores."""
    probabilities = np.asarray(probabilities)
    k = min(k, probabilities.shape[1])
    top = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))


def classification_report(labels, probabilities, class_names, top_k=5):
    """Accuracy, top-k accuracy, loss and per-class metrics of predictions.

    Args:
        labels: int array `(n,)` of true labels.
        probabilities: float array `(n, num_classes)` of class probabilities.
        class_names: names in label order.
        top_k: `k` of the top-k accuracy; reported as `None` when `k` is not
            below the number of classes (it would be 1 by construction).

    Returns:
        A JSON-serialisable dict: `samples`, `accuracy`, `top_k`,
        `top_k_accuracy`, `loss` (mean cross-entropy), `classes` (list of
        `{name, precision, recall, f1, support}` in label order), `macro_avg`,
        `weighted_avg`, `confusion_matrix` and `warnings` (messages also issued
        as `MetricWarning`).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = len(class_names)
    if probabilities.shape != (len(labels), num_classes):
        raise ValueError(
            f"probabilities of shape {probabilities.shape} do not fit {len(labels)} labels "
            f"and {num_classes} classes."
        )
    if not len(labels):
        raise ValueError("no samples to evaluate.")
    matrix = confusion_matrix(labels, probabilities.argmax(axis=1), num_classes)
    precision, recall, f1, support = precision_recall_f1(matrix)
    messages = undefined_metric_messages(matrix, class_names)
    for message in messages:
        warnings.warn(message, MetricWarning, stacklevel=2)
    true_probability = probabilities[np.arange(len(labels)), labels]
    per_class = np.stack([precision, recall, f1])

    def averages(weights):
        precision_avg, recall_avg, f1_avg = np.average(per_class, axis=1, weights=weights)
        return {"precision": float(precision_avg), "recall": float(recall_avg),
                "f1": float(f1_avg), "support": int(support.sum())}

    return {
        "samples": int(len(labels)),
        "accuracy": float(np.trace(matrix) / len(labels)),
        "top_k": int(top_k),
        "top_k_accuracy": top_k_accuracy(labels, probabilities, top_k) if top_k < num_classes else None,
        "loss": float(-np.mean(np.log(np.clip(true_probability, 1e-7, 1.0)))),
        "classes": [
            {"name": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
        ],
        "macro_avg": averages(None),
        "weighted_avg": averages(support),
        "confusion_matrix": matrix.tolist(),
        "warnings": messages,
    }


def format_report(report):
    """The report as a plain-text table (what `evaluate.py` prints)."""
    rows = [(entry["name"], entry) for entry in report["classes"]]
    rows += [("macro avg", report["macro_avg"]), ("weighted avg", report["weighted_avg"])]
    width = max(14, *(len(name) for name, _ in rows))
    header = f"{'':<{width}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>9}"
    lines = [header]
    for index, (name, entry) in enumerate(rows):
        if index == len(report["classes"]):
            lines.append("")
        lines.append(f"{name:<{width}}  {entry['precision']:>9.4f}  {entry['recall']:>9.4f}  "
                     f"{entry['f1']:>9.4f}  {entry['support']:>9d}")
    lines.append("")
    lines.append(f"{'accuracy':<{width}}  {report['accuracy']:.4f}  ({report['samples']} images)")
    if report["top_k_accuracy"] is not None:
        name = f"top-{report['top_k']} accuracy"
        lines.append(f"{name:<{width}}  {report['top_k_accuracy']:.4f}")
    lines.append(f"{'loss':<{width}}  {report['loss']:.4f}")
    lines += [f"warning: {message}" for message in report["warnings"]]
    return "\n".join(lines) + "\n"


def worst_predictions(labels, probabilities, count):
    """Indices of up to `count` misclassified samples, lowest probability of
    the true class first."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    wrong = np.flatnonzero(probabilities.argmax(axis=1) != labels)
    true_probability = probabilities[wrong, labels[wrong]]
    return wrong[np.argsort(true_probability, kind="stable")[:count]]


# Plots -----------------------------------------------------------------------


def new_figure(width, height):
    """A matplotlib `Figure` of `width` x `height` inches, laid out to fit.

    A bare Figure draws with Agg and holds no pyplot state, so nothing leaks
    between plots or needs closing, and no display is needed.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_confusion_matrix(matrix, class_names, normalize=False):
    """The confusion matrix as a heat map with class names on both axes.

    Args:
        matrix: `(num_classes, num_classes)` counts, row = true class.
        class_names: names in label order.
        normalize: divide each row by its sum (the recall on the diagonal).

    Returns:
        The matplotlib `Figure`.
    """
    matrix = np.asarray(matrix)
    num_classes = len(class_names)
    values = _ratio(matrix, matrix.sum(axis=1, keepdims=True)) if normalize else matrix
    side = min(4 + 0.45 * num_classes, 30)
    figure = new_figure(side + 1.5, side)
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    figure.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class" if normalize else "images")
    positions = np.arange(num_classes)
    axes.set_xticks(positions, labels=class_names, rotation=45 if num_classes > 4 else 0,
                    ha="right" if num_classes > 4 else "center", rotation_mode="anchor")
    axes.set_yticks(positions, labels=class_names)
    axes.set_xlabel("Predicted label")
    axes.set_ylabel("True label")
    axes.set_title("Confusion matrix (row-normalised)" if normalize else "Confusion matrix (counts)")
    if num_classes <= MAX_ANNOTATED_CLASSES:
        threshold = (1 if normalize else values.max()) / 2
        for (row, column), value in np.ndenumerate(values):
            axes.text(column, row, f"{value:.2f}" if normalize else f"{value:d}", ha="center",
                      va="center", color="white" if value > threshold else "black", fontsize=9)
    return figure


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


def plot_history(history):
    """Loss and accuracy per epoch, training and validation, with the
    learning rate on a second y axis.

    Args:
        history: `{column: array}` as returned by `read_history` (columns
            `loss`, `accuracy`, their `val_` versions and `learning_rate`;
            missing ones are left out).

    Returns:
        The matplotlib `Figure` (two axes: loss, accuracy).
    """
    figure = new_figure(11, 4.2)
    epochs = history["epoch"]
    for axes, metric, title in zip(figure.subplots(1, 2), ("loss", "accuracy"), ("Loss", "Accuracy")):
        for key, label, style in ((metric, "training", "-o"), (f"val_{metric}", "validation", "-s")):
            if key in history:
                axes.plot(epochs, history[key], style, markersize=3, label=label)
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        lines, labels = axes.get_legend_handles_labels()
        if "learning_rate" in history:
            rate_axes = axes.twinx()
            lines += rate_axes.plot(epochs, history["learning_rate"], "--", color="grey",
                                    label="learning rate")
            labels.append("learning rate")
            rate_axes.set_ylabel("learning rate")
            rate_axes.set_yscale("log")
        axes.legend(lines, labels, loc="best", fontsize=9)
    return figure


def plot_worst_predictions(images, labels, probabilities, class_names, columns=4):
    """A grid of images titled with their true and predicted class and the
    probabilities the model gave each.

    Args:
        images: float array `(n, height, width, 3)` in [0, 1].
        labels: int array `(n,)` of true labels.
        probabilities: float array `(n, num_classes)`.
        class_names: names in label order.
        columns: images per row.

    Returns:
        The matplotlib `Figure` (one axes per image).
    """
    count = len(images)
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    figure = new_figure(3 * columns, 3.3 * rows + 0.4)
    figure.suptitle("Worst misclassified test images")
    predictions = np.asarray(probabilities).argmax(axis=1)
    for index, image in enumerate(images):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(np.clip(image, 0, 1))
        axes.set_axis_off()
        true, predicted = labels[index], predictions[index]
        axes.set_title(
            f"true: {class_names[true]} ({probabilities[index][true]:.2f})\n"
            f"predicted: {class_names[predicted]} ({probabilities[index][predicted]:.2f})",
            fontsize=9, color="darkred",
        )
    return figure


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


def predict_files(model, paths, config, batch_size=32):
    """Predicts image files as `predict.py` does (`keras_parnet.predict.predict_paths`,
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
    write_atomically(path, functools.partial(figure.savefig, dpi=110))
    return path.name


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
        images = np.stack([np.asarray(load_image(paths[index], image_size)) for index in worst_indices])
        figure = plot_worst_predictions(images, labels[worst_indices], probabilities[worst_indices],
                                        class_names)
        plots["worst_predictions"] = _save(figure, out_dir / WORST_PLOT)
    return plots


def evaluate_run(path=None, weights=None, dataset=None, top_k=5, batch_size=32, worst=16,
                 fuse=True, logs_dir="logs", out_dir=None, artifact=None):
    """Evaluates a trained run on the test split of its dataset.

    Args:
        path: run folder or weights file beside a run.json (`None`: the
            newest run in `logs_dir`), as for `runs.load_run`.
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
        `classification_report` returns plus the run, weights, dataset, the
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
        run_dir, _ = resolve_run(path, logs_dir)
    # The dataset and the output folder are checked before the (slower) model is built.
    config = read_run(run_dir)
    dataset_dir = resolve_dataset(config, run_dir, dataset)
    split_dir = dataset_dir / "test"
    class_names = config["class_names"]
    paths, labels, _ = scan_split(split_dir, class_names)
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


def _int_at_least(minimum):
    def parse(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in "invalid integer value"
    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Evaluate a trained run (or, with --artifact, an artifact exported from it) on "
        "the test split of its dataset: accuracy, top-k accuracy, per-class precision/recall/F1, "
        "confusion matrix, training curves and the worst misclassified images, written into the "
        "run folder (report.json, report.txt, *.png); an artifact's report goes to "
        f"<run>/{ARTIFACT_REPORTS}/<artifact name>/.",
    )
    parser.add_argument("run", nargs="?", metavar="RUN_DIR",
                        help="run folder or a weights file beside its run.json (default: the newest "
                        "run in --logs-dir)")
    parser.add_argument("--weights", metavar="FILE",
                        help="weights to evaluate instead of the run's best.weights.h5")
    parser.add_argument("--dataset", metavar="DIR",
                        help="dataset folder holding test/<class>/ (default: the one in run.json)")
    parser.add_argument("--top-k", type=_positive_int, default=5, metavar="K",
                        help="k of the top-k accuracy (default 5; left out when not below the class count)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, metavar="N", help="images per batch (default 32)")
    parser.add_argument("--worst", type=_non_negative_int, default=16, metavar="N",
                        help="misclassified images to show in worst_predictions.png (default 16, 0: none)")
    parser.add_argument("--no-fuse", action="store_true",
                        help="evaluate the model as trained instead of its reparameterized (fused) form")
    parser.add_argument("--logs-dir", default="logs", metavar="DIR", help="where to find the newest run (default logs)")
    parser.add_argument("--artifact", metavar="FILE",
                        help="evaluate an artifact written by python -m keras_parnet.export (.keras, "
                        ".tflite or .onnx file or SavedModel folder) with its own runtime instead of the "
                        "run's Keras model, on the run's test split; the run is RUN_DIR, else the "
                        "artifact's folder when it holds a run.json, else the newest in --logs-dir")
    parser.add_argument("--out", metavar="DIR",
                        help="where to write the report and plots (default: the run folder; with "
                        f"--artifact, <run>/{ARTIFACT_REPORTS}/<artifact name>/, so the run's own "
                        "report is kept)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_parnet.data import DatasetError, ImageError
    from keras_parnet.export import ExportError
    from keras_parnet.predict import PredictError
    from keras_parnet.runs import RunError

    def evaluate():
        report = evaluate_run(args.run, args.weights, args.dataset, args.top_k, args.batch_size,
                              args.worst, fuse=not args.no_fuse, logs_dir=args.logs_dir,
                              out_dir=args.out, artifact=args.artifact)
        print(format_report(report), end="")
        print(f"Report and plots in {report['out_dir']}: {REPORT_JSON}, {REPORT_TEXT}, "
              f"{', '.join(report['plots'].values())}")

    return run_tool(evaluate, (DatasetError, ImageError, RunError, EvaluateError, PredictError, ExportError))


if __name__ == "__main__":
    sys.exit(main())
