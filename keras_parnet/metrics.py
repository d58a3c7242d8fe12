"""Classification metrics of predicted probabilities, in numpy: confusion
matrix, precision / recall / F1 per class and averaged, top-k accuracy, the
report `evaluate` writes (`classification_report`, `format_report`) and the
most confidently wrong predictions."""

import warnings

import numpy as np


class MetricWarning(UserWarning):
    """A metric is undefined for a class (never predicted, or no test images)
    and is reported as 0."""



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


def ratio(numerator, denominator):
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
    precision = ratio(true_positives, predicted)
    recall = ratio(true_positives, support)
    f1 = ratio(2 * precision * recall, precision + recall)
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
    """The report as a plain-text table: evaluate's report.txt and what its command line prints."""
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
