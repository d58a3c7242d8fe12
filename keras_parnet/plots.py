"""Every figure the tools draw: a prediction, the confusion matrix, training
curves, the worst predictions, a dataset's class counts and image sizes.

Figures are bare matplotlib `Figure`s (`new_figure`): they draw with Agg,
hold no pyplot state and need no display; `save_figure` writes one as PNG.
"""

import functools
import math

import numpy as np

from keras_parnet.files import write_atomically
from keras_parnet.metrics import ratio

# Above this many classes the confusion matrix's per-cell numbers would overlap.
MAX_ANNOTATED_CLASSES = 30
# The longest side of a photo drawn in a prediction figure, in pixels: enough
# for a figure a few inches wide, and a large photo does not fill the memory.
DISPLAY_SIDE = 800
DPI = 110


def new_figure(width, height):
    """A matplotlib `Figure` of `width` x `height` inches, laid out to fit.

    A bare Figure draws with Agg and holds no pyplot state, so nothing leaks
    between plots or needs closing, and no display is needed.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(figure, path):
    """Writes `figure` to `path` as PNG (atomically), the title of its first
    axes (if any) also in the PNG's `Title` text."""
    title = figure.axes[0].get_title() if figure.axes else ""
    metadata = {"Title": title} if title else None
    write_atomically(path, functools.partial(figure.savefig, format="png", dpi=DPI, metadata=metadata))
    return path


def display_image(path, max_side=DISPLAY_SIDE):
    """The photo in `path` as a person sees it: EXIF orientation applied,
    its own aspect ratio, RGB, downscaled to at most `max_side` pixels on its
    longer side (for display only: the network reads the file itself).

    Returns:
        uint8 array `(height, width, 3)`.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
    image.thumbnail((max_side, max_side))
    return np.asarray(image)


def plot_title(ranked):
    """`'class:probability'` of the top class, as the original script printed it."""
    return "%s:%.3f" % ranked[0]


def plot_prediction(image, ranked, figure=None):
    """Draws `image` titled with the top class and its probability.

    Args:
        image: `(H, W, 3)`, uint8 or floats in [0, 1], any aspect ratio
            (e.g. `display_image(path)`).
        ranked: `keras_parnet.predict.rank(...)` output.
        figure: a pyplot figure to draw into (to show it; size it with
            `prediction_figure_size`); by default a bare `new_figure`.

    Returns:
        The matplotlib `Figure`.
    """
    image = np.asarray(image)
    if figure is None:
        figure = new_figure(*prediction_figure_size(image))
    axes = figure.add_subplot()
    axes.imshow(image if image.dtype == np.uint8 else np.clip(image, 0, 1))
    axes.axis("off")
    axes.set_title(plot_title(ranked))
    return figure


def prediction_figure_size(image, longer=5.0):
    """`(width, height)` in inches of `plot_prediction`'s figure for `image`:
    the image's aspect, its longer side `longer`, and room for the title."""
    height, width = np.asarray(image).shape[:2]
    scale = longer / max(width, height)
    return max(width * scale, 2.0), height * scale + 0.4


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
    values = ratio(matrix, matrix.sum(axis=1, keepdims=True)) if normalize else matrix
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


def plot_class_counts(counts, class_names):
    """Grouped bars: images per class, one bar per split.

    Args:
        counts: `{split: {class: count}}`.
        class_names: the classes along the x axis.

    Returns:
        The matplotlib `Figure`.
    """
    figure = new_figure(max(6, 0.7 * len(class_names) * len(counts) + 2), 4.5)
    axes = figure.add_subplot()
    positions = np.arange(len(class_names))
    width = 0.8 / len(counts)
    for index, (split, per_class) in enumerate(counts.items()):
        bars = axes.bar(positions + (index - (len(counts) - 1) / 2) * width,
                        [per_class.get(name, 0) for name in class_names], width,
                        label=f"{split} ({sum(per_class.values())})")
        axes.bar_label(bars, fontsize=8)
    rotate = len(class_names) > 6
    axes.set_xticks(positions, labels=class_names, rotation=45 if rotate else 0,
                    ha="right" if rotate else "center", rotation_mode="anchor")
    axes.set_title("Images per class and split")
    axes.set_xlabel("class")
    axes.set_ylabel("images")
    axes.legend()
    return figure


def plot_image_sizes(sizes, min_size):
    """Scatter of image widths against heights, one colour per split, with
    the tiny-image limit dashed.

    Args:
        sizes: `{split: float array (n, 2)}` of `(width, height)` pairs.
        min_size: the tiny-image limit in pixels.

    Returns:
        The matplotlib `Figure`.
    """
    figure = new_figure(6.5, 5.5)
    axes = figure.add_subplot()
    for split, values in sizes.items():
        axes.scatter(values[:, 0], values[:, 1], s=12, alpha=0.5, label=f"{split} ({len(values)})")
    axes.axvline(min_size, color="grey", linestyle="--", linewidth=1)
    axes.axhline(min_size, color="grey", linestyle="--", linewidth=1, label=f"{min_size} px")
    axes.set_title("Image sizes (from file headers)")
    axes.set_xlabel("width (px)")
    axes.set_ylabel("height (px)")
    axes.set_xlim(left=0)
    axes.set_ylim(bottom=0)
    axes.legend()
    return figure
