"""Check an image dataset before training (`analyze_dataset`; the command line
is `keras_parnet.cli.analyze`, `parnet-analyze --dataset DIR`).

    DATASET/train/<class>/*.jpg
    DATASET/val/<class>/*.jpg      optional
    DATASET/test/<class>/*.jpg

Counts the images per class and split (train, val when there is a val/
folder or a run's recorded validation split of train/, test), checks every
image as training does (`keras_parnet.data.check_image`), reads its size from
the file header, and warns about class imbalance, duplicate files (the same
bytes twice: across splits they leak validation or test images into
training, or test images into checkpoint selection), tiny images and
unreadable files (damaged, or too large to decode: training skips them). Writes
`class_counts.png`, `image_sizes.png` and `analysis.json` into the output
folder.
"""

import concurrent.futures
import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from keras_parnet.files import output_dir, write_atomically
from keras_parnet.plots import plot_class_counts, plot_image_sizes, save_figure

SPLITS = ("train", "val", "test")
# ParNet's minimum input size; smaller images are upsampled a lot.
DEFAULT_MIN_SIZE = 32
# Largest over smallest class count that still passes without a warning.
DEFAULT_IMBALANCE = 3.0
ANALYSIS_JSON = "analysis.json"
COUNTS_PLOT = "class_counts.png"
SIZES_PLOT = "image_sizes.png"
# How many paths a warning lists before "...".
LISTED = 5


def _map_in_threads(function, items):
    """`[function(item) for item in items]`, reading files in parallel."""
    with concurrent.futures.ThreadPoolExecutor(min(16, (os.cpu_count() or 1) * 4)) as pool:
        return list(pool.map(function, items))


def _read_header(path):
    """`{path, bytes, width, height, error}` of one image file: its size from
    the header, or the reason training would skip it."""
    from PIL import Image

    from keras_parnet.data import ImageError, check_image

    record = {"path": path, "bytes": os.path.getsize(path), "width": None, "height": None, "error": None}
    try:
        check_image(path)  # the check training applies
        with Image.open(path) as image:
            record["width"], record["height"] = image.size
    except ImageError as error:
        record["error"] = str(error)
    return record


def _digest(path):
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def find_duplicates(records):
    """Groups of files with identical content.

    Only files sharing a byte size are hashed, so a dataset without
    duplicates is read once (headers) rather than twice.

    Args:
        records: dicts with `path`, `bytes`, `split` and `class`.

    Returns:
        A list of `{paths, splits, classes}` (sorted lists), one per group of
        two or more identical files.
    """
    by_size = defaultdict(list)
    for record in records:
        by_size[record["bytes"]].append(record)
    candidates = [record for group in by_size.values() if len(group) > 1 for record in group]
    by_digest = defaultdict(list)
    for record, digest in zip(candidates, _map_in_threads(_digest, [r["path"] for r in candidates])):
        by_digest[digest].append(record)
    return sorted(
        ({"paths": sorted(r["path"] for r in group),
          "splits": sorted({r["split"] for r in group}),
          "classes": sorted({r["class"] for r in group})}
         for group in by_digest.values() if len(group) > 1),
        key=lambda group: group["paths"],
    )


def _listing(items):
    shown = ", ".join(items[:LISTED])
    return shown + (f", ... ({len(items) - LISTED} more)" if len(items) > LISTED else "")


def _imbalance_warnings(counts, imbalance):
    messages = []
    for split, per_class in counts.items():
        empty = [name for name, count in per_class.items() if count == 0]
        if empty:
            messages.append(f"{split}: no readable images for {_listing(empty)}.")
        nonzero = {name: count for name, count in per_class.items() if count}
        if len(nonzero) < 2:
            continue
        largest, smallest = max(nonzero, key=nonzero.get), min(nonzero, key=nonzero.get)
        ratio = nonzero[largest] / nonzero[smallest]
        if ratio > imbalance:
            messages.append(
                f"{split}: class imbalance, {nonzero[largest]} images of '{largest}' but "
                f"{nonzero[smallest]} of '{smallest}' ({ratio:.1f}x > {imbalance:g}x): accuracy "
                "will favour the large classes; balance the classes or weight them.")
    return messages


def _duplicate_warnings(duplicates, dataset_dir):
    def same(group):
        return " = ".join(os.path.relpath(path, dataset_dir) for path in group["paths"])

    consequences = {("train", "test"): "test images leak into training and inflate test accuracy",
                    ("train", "val"): "validation images are trained on and inflate validation accuracy, "
                                      "which selects the checkpoint",
                    ("val", "test"): "test images select the checkpoint and inflate test accuracy"}
    messages = []
    for (first, second), consequence in consequences.items():
        leaks = [group for group in duplicates if {first, second} <= set(group["splits"])]
        if leaks:
            pairs = [same(group) for group in leaks]
            messages.append(f"{len(leaks)} file(s) in both {first} and {second} (same content): {consequence}; "
                            f"remove one copy of {_listing(pairs)}")
    for split in SPLITS:
        within = [group for group in duplicates if group["splits"] == [split]]
        if within:
            conflicting = sum(len(group["classes"]) > 1 for group in within)
            labels = f", {conflicting} of them under different classes" if conflicting else ""
            pairs = [same(group) for group in within]
            messages.append(f"{split}: {len(within)} group(s) of duplicate files{labels}: "
                            f"{_listing(pairs)}")
    return messages


def analyze_dataset(dataset_dir, out_dir=None, min_size=DEFAULT_MIN_SIZE, imbalance=DEFAULT_IMBALANCE,
                    validation=None):
    """Analyses the `train/`, `val/` (if any) and `test/` splits of a dataset folder.

    Args:
        dataset_dir: folder holding `train/<class>/`, `test/<class>/` and
            maybe `val/<class>/`.
        out_dir: where to write `analysis.json`, `class_counts.png` and
            `image_sizes.png` (created if needed); `None` writes nothing.
        min_size: images with a side below this many pixels are "tiny".
        imbalance: warn when a split's largest class has more than this
            many times the images of its smallest.
        validation: a run's `validation` record (`keras_parnet.data.dataset_splits`):
            when it holds out files of `train/`, those count as the "val" split.

    Returns:
        A JSON-serialisable dict: `dataset`, `classes` (all class names),
        `counts` (`{split: {class: readable images}}`), `sizes` (`{split:
        {width|height: {min, median, max}}}`), `unreadable` (`[{path,
        error}]`), `tiny` (`[{path, width, height}]`), `duplicates` (see
        `find_duplicates`), `warnings` (messages) and `plots` (file names).

    Raises:
        DatasetError: a missing split or a split without class folders.
        OutputError: `out_dir` cannot be written (a file, read-only, full);
            checked before the images are read.
    """
    from keras_parnet import data

    dataset_dir = Path(dataset_dir)
    folders = [split for split in SPLITS if split != data.VAL_SPLIT or (dataset_dir / split).is_dir()]
    split_classes = {split: data.find_classes(dataset_dir / split) for split in folders}
    if out_dir is not None:
        out_dir = output_dir(out_dir, "--out")
    messages = []
    try:
        data.check_dataset(dataset_dir)
    except data.DatasetError as error:  # the splits have different classes
        messages.append(str(error))
    files = [(split, name, path) for split, names in split_classes.items() for name in names
             for path in data.list_images(dataset_dir / split / name)]
    records = _map_in_threads(_read_header, [path for _, _, path in files])
    held_out = set()
    if validation and validation["folder"] == "train":
        held_out = set(data.held_out_paths(dataset_dir, validation))
        split_classes[data.VAL_SPLIT] = split_classes["train"]
        split_classes = {split: split_classes[split] for split in SPLITS if split in split_classes}
    for (split, name, path), record in zip(files, records):
        record["split"], record["class"] = (data.VAL_SPLIT if path in held_out else split), name
    readable = [record for record in records if record["error"] is None]

    classes = sorted(set().union(*split_classes.values()))
    counts = {split: dict.fromkeys(names, 0) for split, names in split_classes.items()}
    for record in readable:
        counts[record["split"]][record["class"]] += 1
    sizes = {split: np.array([(r["width"], r["height"]) for r in readable if r["split"] == split],
                             dtype=float).reshape(-1, 2) for split in split_classes}
    unreadable = [{"path": r["path"], "error": r["error"]} for r in records if r["error"] is not None]
    tiny = [{"path": r["path"], "width": r["width"], "height": r["height"]}
            for r in readable if min(r["width"], r["height"]) < min_size]
    duplicates = find_duplicates(records)

    messages += _imbalance_warnings(counts, imbalance)
    messages += _duplicate_warnings(duplicates, dataset_dir)
    if tiny:
        messages.append(f"{len(tiny)} image(s) smaller than {min_size} px on a side: "
                        f"{_listing([os.path.relpath(r['path'], dataset_dir) for r in tiny])}")
    if unreadable:
        messages.append(f"{len(unreadable)} unreadable file(s), skipped by training: "
                        f"{_listing([r['error'] for r in unreadable])}")
    report = {
        "dataset": str(dataset_dir),
        "classes": classes,
        "counts": counts,
        "sizes": {split: {axis: {"min": int(values[:, column].min()),
                                 "median": float(np.median(values[:, column])),
                                 "max": int(values[:, column].max())}
                          for column, axis in enumerate(("width", "height"))}
                  for split, values in sizes.items() if len(values)},
        "unreadable": unreadable,
        "tiny": tiny,
        "duplicates": duplicates,
        "warnings": messages,
        "plots": {},
    }
    if out_dir is not None:
        save_figure(plot_class_counts(counts, classes), out_dir / COUNTS_PLOT)
        save_figure(plot_image_sizes(sizes, min_size), out_dir / SIZES_PLOT)
        report["plots"] = {"class_counts": COUNTS_PLOT, "image_sizes": SIZES_PLOT}
        write_atomically(out_dir / ANALYSIS_JSON,
                         lambda temporary: temporary.write_text(json.dumps(report, indent=2) + "\n"))
    return report


def format_analysis(report):
    """The analysis as text: images per class and split, sizes, warnings."""
    splits = list(report["counts"])
    width = max(12, *(len(name) for name in report["classes"]))
    lines = [f"{'class':<{width}}" + "".join(f"  {split:>8}" for split in splits)]
    for name in report["classes"] + ["total"]:
        cells = [sum(counts.values()) if name == "total" else counts.get(name, 0)
                 for counts in report["counts"].values()]
        lines.append(f"{name:<{width}}" + "".join(f"  {cell:>8}" for cell in cells))
    for split, size in report["sizes"].items():
        lines.append(f"{split} image sizes: width {size['width']['min']}-{size['width']['max']} "
                     f"(median {size['width']['median']:g}), height {size['height']['min']}-"
                     f"{size['height']['max']} (median {size['height']['median']:g})")
    lines += [f"warning: {message}" for message in report["warnings"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from keras_parnet.cli import _common, analyze as cli
    _common.warn_deprecated("python -m keras_parnet.analyze", "parnet-analyze")
    raise SystemExit(cli.main())
