"""Classify images with a trained ParNet: `python predict.py --help`.

    python predict.py                         # prompt `input img_path:`, show the
                                              # image titled `class:probability`
    python predict.py photos/ a.jpg "*.png"   # one line per image: path, class, probability
    ls *.jpg | python predict.py --csv out.csv

The model, its weights, image size, preprocessing and class names (in label
order) come from a run folder written by `train.py` (the newest in `logs/` by
default, see `keras_parnet.runs`); flags override them. Images go through
`keras_parnet.data.load_image`, the evaluation path of the training pipeline.

    python predict.py --artifact logs/<run>/best_fused.tflite photos/

classifies with an artifact written by `keras_parnet.export` (`.keras`,
`.tflite`, `.onnx` or a SavedModel folder) through its own runtime instead:
the class names and image size still come from the run (`--run`, else the
artifact's folder when it holds a run.json), and must match the `labels.txt`
beside the artifact. A uint8 artifact is given the 8-bit pixels and does the
run's preprocessing itself; a float one is given `normalize(...)` of them.
Keras models and artifacts go through one code path: `predict_paths` and
`predict_probabilities` take a classifier function `images -> probabilities`
(`as_classifier`, `artifact_classifier`).
"""

import argparse
import csv
import glob
import itertools
import os
import sys
from pathlib import Path

import numpy as np

from keras_parnet._cli import output_dir, run_tool

PROMPT = "input img_path:"
QUIT_WORDS = ("q", "quit", "exit")
DEFAULT_TOP_K = 3
# Without a run.json: train.py's default image size.
DEFAULT_IMAGE_SIZE = 256
# Where figures go when no window can open and --save-plots is not given.
DEFAULT_PLOT_DIR = "predictions"
BATCH_SIZE = 16
# run.json `preprocessing` keys applied: `normalize` takes rescale/mean/std,
# `load_image` the official ImageNet crop (its resize is always bilinear).
SUPPORTED_PREPROCESSING = {"rescale", "mean", "std", "crop_fraction", "interpolation"}


class PredictError(ValueError):
    """A prediction setting that cannot work."""


# Prediction --------------------------------------------------------------------


def normalize(images, preprocessing=None):
    """Images in [0, 1], `(..., H, W, 3)` -> model inputs, as `run.json`'s
    `preprocessing` says: `rescale` (of 0-255 pixels, default 1/255), then
    `(x - mean) / std` per channel when given (converted ImageNet weights)."""
    preprocessing = preprocessing or {}
    inputs = np.asarray(images, dtype="float32")
    scale = 255 * preprocessing.get("rescale", 1 / 255)
    if not np.isclose(scale, 1.0):
        inputs = inputs * np.float32(scale)
    if "mean" in preprocessing:
        inputs = inputs - np.asarray(preprocessing["mean"], dtype="float32")
    if "std" in preprocessing:
        inputs = inputs / np.asarray(preprocessing["std"], dtype="float32")
    return inputs


def rank(probabilities, class_names, top_k=DEFAULT_TOP_K):
    """`[(class_name, probability), ...]`, the `top_k` most likely first."""
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:top_k]
    return [(class_names[index], float(probabilities[index])) for index in order]


def as_classifier(model, preprocessing=None):
    """A function `(N, H, W, 3)` images in [0, 1] -> `(N, classes)` probabilities.

    A Keras model (anything with `predict_on_batch`) is fed
    `normalize(images, preprocessing)`; anything else is taken to be such a
    function already, e.g. an exported artifact's (`artifact_classifier`).
    """
    if not hasattr(model, "predict_on_batch"):
        return model
    return lambda images: np.asarray(model.predict_on_batch(normalize(images, preprocessing)))


def predict_probabilities(model, images, preprocessing=None):
    """`(N, H, W, 3)` images in [0, 1] -> `(N, classes)` outputs of `model`,
    a Keras model or a classifier function (see `as_classifier`)."""
    return np.asarray(as_classifier(model, preprocessing)(images))


def check_finite(probabilities, sources):
    """Raises `PredictError` naming the first of `sources` (one per row of
    `probabilities`) whose outputs are not numbers: the weights are broken
    (e.g. a run whose loss went NaN)."""
    finite = np.isfinite(probabilities).all(axis=-1)
    if not finite.all():
        raise PredictError(
            f"the model outputs NaN for {sources[int(np.argmin(finite))]}: its weights are broken "
            "(retrain, or pick another checkpoint with --weights)."
        )


def predict_image(model, path, class_names, image_size, top_k=DEFAULT_TOP_K, preprocessing=None):
    """Classifies one image file.

    Args:
        model: a Keras classifier with a softmax top, inputs `(None, H, W, 3)`,
            or a classifier function (see `as_classifier`).
        path: image file (any format and mode PIL reads).
        class_names: names in label order.
        image_size: `(height, width)` or int, as the model was trained.
        top_k: how many classes to return.
        preprocessing: `run.json`'s `preprocessing` (default: [0, 1] pixels).

    Returns:
        `[(class_name, probability), ...]`, the most likely first.

    Raises:
        ImageError: the file cannot be read as an image.
    """
    from keras_parnet.data import load_image

    image = load_image(path, image_size, (preprocessing or {}).get("crop_fraction"))
    probabilities = predict_probabilities(model, image[np.newaxis], preprocessing)[0]
    return rank(probabilities, class_names, top_k)


def predict_paths(model, paths, image_size, preprocessing=None, batch_size=BATCH_SIZE):
    """Classifies many image files, `batch_size` at a time.

    `model` is a Keras model or a classifier function (see `as_classifier`);
    each file is read by `keras_parnet.data.load_image` at `image_size` with
    `preprocessing`'s `crop_fraction`.

    Yields:
        `(path, image, probabilities, error)` in the order of `paths`: `image`
        the `(H, W, 3)` input in [0, 1] and `probabilities` `(classes,)`, or
        both `None` and `error` the one-line reason the file was skipped.
    """
    from keras_parnet.data import ImageError, load_image

    crop_fraction = (preprocessing or {}).get("crop_fraction")
    classify = as_classifier(model, preprocessing)
    paths = iter(paths)
    while True:
        chunk = list(itertools.islice(paths, batch_size))
        if not chunk:
            return
        loaded = []
        for path in chunk:
            try:
                loaded.append((path, load_image(path, image_size, crop_fraction), None))
            except ImageError as error:
                loaded.append((path, None, str(error)))
        images = [image for _, image, _ in loaded if image is not None]
        outputs = iter(np.asarray(classify(np.stack(images))) if images else [])
        for path, image, error in loaded:
            yield path, image, (next(outputs) if image is not None else None), error


# Plotting ----------------------------------------------------------------------


def plot_title(ranked):
    """`'class:probability'` of the top class, as the original script printed it."""
    return "%s:%.3f" % ranked[0]


def plot_prediction(image, ranked, figure=None):
    """Draws `image` titled with the top class and its probability.

    Args:
        image: `(H, W, 3)` in [0, 1].
        ranked: `rank(...)` output.
        figure: a pyplot figure to draw into (to show it); by default a bare
            `Figure` that holds no pyplot state and only saves.

    Returns:
        The matplotlib `Figure`.
    """
    if figure is None:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(4, 4.4), layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(np.clip(image, 0, 1))
    axes.axis("off")
    axes.set_title(plot_title(ranked))
    return figure


def save_figure(figure, path):
    """Writes the figure as PNG, its title also in the PNG's `Title` text."""
    title = figure.axes[0].get_title()
    figure.savefig(path, format="png", metadata={"Title": title})


def display_available():
    """Whether matplotlib can open a window here."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return False
    import matplotlib

    return matplotlib.get_backend().lower() not in _non_interactive_backends()


def _non_interactive_backends():
    try:
        from matplotlib.backends import BackendFilter, backend_registry
    except ImportError:  # matplotlib < 3.9
        from matplotlib.rcsetup import non_interactive_bk

        return {name.lower() for name in non_interactive_bk}
    return set(backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE))


class PlotWriter:
    """Saves one titled PNG per image in `folder`, names made unique."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.used = set()

    def save(self, figure, image_path):
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = Path(image_path).stem or "image"
        name, suffix = f"{stem}.png", 1
        while name in self.used:
            suffix += 1
            name = f"{stem}-{suffix}.png"
        self.used.add(name)
        path = self.folder / name
        save_figure(figure, path)
        return path


# Loading -----------------------------------------------------------------------


def read_class_names(path):
    """Class names from a text file, one per line in label order."""
    path = Path(path).expanduser()
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise PredictError(f"cannot read class names from {path}: {error}") from None
    if not names:
        raise PredictError(f"{path} lists no class names: write one name per line.")
    return names


def _run_config(args):
    """`(config, weights)`: `run.json` of the run the flags point to (`{}` for
    weights without one) and the weights file to load."""
    from keras_parnet import runs

    if args.weights is None:
        run_dir, weights = runs.resolve_run(args.run, args.logs_dir)
        return runs.read_run(run_dir), weights
    weights = Path(args.weights).expanduser()
    run_dir = Path(args.run).expanduser() if args.run else weights.parent
    if args.run or (run_dir / runs.RUN_FILE).is_file():
        return runs.read_run(run_dir), weights
    return {}, weights


def _apply_overrides(config, args):
    """The run config with the architecture, size and class flags applied."""
    from keras_parnet.models import BUILDERS

    config = dict(config)
    if args.widths:
        config["model"], config["model_kwargs"] = "ParNet", {"widths": list(args.widths)}
    elif args.model:
        config["model"], config["model_kwargs"] = BUILDERS[args.model].__name__, {}
    if args.small_input:
        config["model_kwargs"] = {**config.get("model_kwargs", {}), "small_input": True}
    if args.image_size:
        config["image_size"] = [args.image_size, args.image_size]
    if args.classes:
        config["class_names"] = read_class_names(args.classes)
    return config


def _load_full_model(weights, config):
    """A `.keras` file without `run.json`: the model is in the file."""
    import keras

    try:
        model = keras.saving.load_model(weights)
    except (ValueError, OSError) as error:
        raise PredictError(f"cannot load the model in {weights}: {error}") from None
    fixed_size = list(model.input_shape[1:3])
    if None not in fixed_size:
        if "image_size" in config and config["image_size"] != fixed_size:
            raise PredictError(
                f"{weights} takes {fixed_size[0]}x{fixed_size[1]} images: drop --image-size."
            )
        config["image_size"] = fixed_size
    return model


def load_predictor(args):
    """`(model, config)` from the parsed flags: the model with weights loaded
    (fused unless `--no-fuse`) and its settings (`class_names`, `image_size`,
    `preprocessing`, `weights`).

    With `--artifact`, the model is the exported artifact's classifier
    function instead (`load_artifact_predictor`).

    Raises:
        RunError, PredictError: a missing or inconsistent run, weights file,
            artifact or class list, with what to pass instead.
    """
    from keras_parnet import runs
    from keras_parnet.models import load_weights_file

    if args.artifact:
        return load_artifact_predictor(args)
    config, weights = _run_config(args)
    config = _apply_overrides(config, args)
    full_model = not config.get("model") and weights.suffix == ".keras"
    if not config.get("model") and not full_model:
        raise PredictError(
            f"{weights} has no {runs.RUN_FILE} beside it: pass the architecture "
            "(--model or --widths, with --small-input if trained so), --image-size and --classes."
        )
    if "class_names" not in config:
        raise PredictError(f"{weights} has no {runs.RUN_FILE} beside it: pass --classes FILE.")
    if full_model:
        model = _load_full_model(weights, config)
    else:
        config.setdefault("image_size", [DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE])
        model = runs.build_model(config)
        try:
            load_weights_file(model, weights)
        except (FileNotFoundError, ValueError) as error:
            raise runs.RunError(
                f"{error} (the class list names {len(config['class_names'])} classes)"
            ) from None
    if model.output_shape[-1] != len(config["class_names"]):
        raise PredictError(
            f"the model in {weights} has {model.output_shape[-1]} outputs but the class list "
            f"names {len(config['class_names'])} classes: pass the --classes file it was trained with."
        )
    config.setdefault("preprocessing", dict(runs.DEFAULT_PREPROCESSING))
    unsupported = sorted(set(config["preprocessing"]) - SUPPORTED_PREPROCESSING)
    if unsupported:
        print(f"note: images are resized as in training (keras_parnet.data.load_image); "
              f"run.json's {', '.join(unsupported)} is not applied.", file=sys.stderr)
    config["weights"] = str(weights)
    if not args.no_fuse:
        model = fuse(model, may_be_fused=full_model)
    return model, config


def fuse(model, may_be_fused=False):
    """The model with its branches folded for inference (`keras_parnet.reparam`).

    With `may_be_fused` (a full `.keras` file, e.g. an exported fused model
    with nothing left to fold) a model that cannot be folded is used as
    loaded, with a note. A model rebuilt from `run.json` is always a ParNet:
    there a folding error is a bug and is raised.
    """
    from keras_parnet.reparam import reparameterize

    try:
        return reparameterize(model)
    except ValueError as error:
        if not may_be_fused:
            raise
        print(f"note: {error} Predicting with the model as loaded.", file=sys.stderr)
        return model


# Exported artifacts --------------------------------------------------------------


def artifact_classifier(run, preprocessing=None):
    """The classifier function (see `as_classifier`) of a loaded artifact.

    Args:
        run: what `keras_parnet.export.load_artifact` returns.
        preprocessing: the run's `preprocessing`, for a float artifact.

    A uint8 artifact does the run's preprocessing itself and is given the
    pixels `round(255 * images)`: exactly the 8-bit pixels for images read by
    `load_image` at the run's size without a crop. A float artifact takes
    what the network takes: `normalize(images, preprocessing)`.
    """
    if run.input_dtype == np.uint8:
        return lambda images: np.asarray(run(np.round(np.asarray(images, np.float32) * 255).astype(np.uint8)))
    return lambda images: np.asarray(run(normalize(images, preprocessing)))


def resolve_artifact(artifact, run=None, logs_dir="logs"):
    """`(artifact, run_dir)`: the artifact's path, checked to exist, and the
    run it goes with: `run` (a run folder or a weights file beside its
    run.json) when given, else the artifact's folder when it holds a run.json
    (export writes beside the weights by default), else the newest run in
    `logs_dir`."""
    from keras_parnet import runs

    path = Path(artifact).expanduser()
    if not path.exists():
        raise PredictError(f"artifact {path} does not exist: pass a .keras, .tflite or .onnx file or a "
                           "SavedModel folder written by keras_parnet.export.")
    if run is None and (path.parent / runs.RUN_FILE).is_file():
        return path, path.parent
    return path, runs.resolve_run(run, logs_dir)[0]


def _first_difference(names, expected):
    if len(names) != len(expected):
        return f"{len(names)} names where the run has {len(expected)}"
    line = next(index for index, (name, other) in enumerate(zip(names, expected)) if name != other)
    return f"line {line + 1} is '{names[line]}' where the run has '{expected[line]}'"


def check_artifact_labels(artifact, class_names):
    """Raises `PredictError` when the `labels.txt` export wrote beside
    `artifact` (if there is one) differs from `class_names`."""
    from keras_parnet.export import LABELS_FILE

    labels = Path(artifact).parent / LABELS_FILE
    if not labels.is_file():
        return
    names = read_class_names(labels)
    if names != list(class_names):
        raise PredictError(f"{labels} does not match the run's class names ({_first_difference(names, class_names)}): "
                           "the artifact was exported from another run; pass that run.")


def _one_line(error):
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def load_artifact_classifier(artifact, config, run_dir=None):
    """Loads an exported artifact to classify the images of a run.

    Args:
        artifact: a file (or SavedModel folder) written by `keras_parnet.export`.
        config: the run's config (`run.json`): `class_names`, `image_size`
            and `preprocessing`.
        run_dir: the run folder, named in errors.

    Returns:
        `(classifier, config)`: the classifier function (`artifact_classifier`)
        and a copy of `config` with `artifact`, `artifact_format` and
        `artifact_input` (`"uint8"` or `"float32"`) added. For a uint8 artifact
        of a run with a `crop_fraction`, the artifact crops itself, so the
        copy's preprocessing has none: images are given to it whole at the run's
        size (a note says so).

    Raises:
        PredictError: the artifact cannot be loaded or run, its `labels.txt`,
            input size or class count differ from the run's.
        keras_parnet.export.ExportError: a path of no export format, or ONNX
            without the export extra.
    """
    from keras_parnet import export

    path = Path(artifact).expanduser()
    run = f"the run {run_dir}" if run_dir is not None else "the run"
    format = export.artifact_format(path)
    check_artifact_labels(path, config["class_names"])
    try:
        loaded = export.load_artifact(path, format)
    except export.ExportError:
        raise
    except Exception as error:  # noqa: BLE001 - any runtime's failure to read a user's file
        raise PredictError(f"cannot load {path} as a {format} artifact ({_one_line(error)}): pass a file "
                           "written by keras_parnet.export.") from None
    height, width = config["image_size"]
    artifact_size = loaded.input_shape[1:3]
    if None not in artifact_size and list(artifact_size) != [height, width]:
        raise PredictError(f"{path} takes {artifact_size[0]}x{artifact_size[1]} images but {run} was trained "
                           f"at {height}x{width}: pass the run the artifact was exported from.")
    config = {**config, "artifact": str(path), "artifact_format": format,
              "artifact_input": loaded.input_dtype.name}
    preprocessing = dict(config.get("preprocessing") or {})
    if loaded.input_dtype == np.uint8 and preprocessing.get("crop_fraction"):
        print(f"note: {path} takes uint8 images at {height}x{width} and does the run's crop "
              f"({preprocessing.pop('crop_fraction')}) itself: each image is given to it whole, resized to "
              f"{height}x{width}.", file=sys.stderr)
    config["preprocessing"] = preprocessing
    classify = artifact_classifier(loaded, preprocessing)
    try:
        outputs = classify(np.zeros((1, height, width, 3), np.float32))
    except Exception as error:  # noqa: BLE001 - as above
        raise PredictError(f"cannot run {path} on {height}x{width} images ({_one_line(error)}).") from None
    classes = len(config["class_names"])
    if outputs.ndim != 2 or outputs.shape[-1] != classes:
        raise PredictError(f"{path} gives {outputs.shape[-1] if outputs.ndim else 0} class probabilities but "
                           f"{run} names {classes} classes: pass the run the artifact was exported from.")
    return classify, config


def load_artifact_predictor(args):
    """`(classifier, config)` for `--artifact`: the run from `--run`, the
    artifact's folder or `--logs-dir` (`resolve_artifact`), its class names
    (or `--classes`), and the artifact (`load_artifact_classifier`)."""
    from keras_parnet import runs

    model_flags = {"--weights": args.weights, "--model": args.model, "--widths": args.widths,
                   "--small-input": args.small_input, "--image-size": args.image_size, "--no-fuse": args.no_fuse}
    given = [flag for flag, value in model_flags.items() if value]
    if given:
        raise PredictError(f"--artifact holds the model, its size and its weights: drop {', '.join(given)}.")
    path, run_dir = resolve_artifact(args.artifact, args.run, args.logs_dir)
    config = runs.read_run(run_dir)
    if args.classes:
        config["class_names"] = read_class_names(args.classes)
    return load_artifact_classifier(path, config, run_dir)


# Command line ------------------------------------------------------------------


def expand_paths(arguments):
    """Files, folders (images below them, sorted) and globs -> `(paths, errors)`."""
    from keras_parnet.data import IMAGE_EXTENSIONS, list_images

    paths, errors = [], []
    for argument in arguments:
        path = Path(argument).expanduser()
        if path.is_dir():
            found = list_images(path)
            if not found:
                errors.append(f"{path} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
            paths.extend(found)
        elif not path.exists() and glob.has_magic(argument):
            found = sorted(glob.glob(os.path.expanduser(argument), recursive=True))
            if not found:
                errors.append(f"no file matches {argument}.")
            paths.extend(found)
        else:
            paths.append(str(path))
    return paths, errors


def clean_path(line):
    """A typed or pasted path: whitespace and surrounding quotes stripped, `~` expanded."""
    text = line.strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].strip()
    return os.path.expanduser(text)


class Reporter:
    """Prints (and writes to CSV / PNG) each prediction."""

    def __init__(self, class_names, top_k, csv_path=None, plot_dir=None, show=False, verbose=False):
        self.class_names = class_names
        self.top_k = top_k
        self.plots = PlotWriter(plot_dir) if plot_dir else None
        self.show = show
        self.verbose = verbose
        self.csv_file = self.csv_writer = None
        if csv_path:
            self.csv_file = open(csv_path, "w", newline="")
            self.csv_writer = csv.writer(self.csv_file)
            self.csv_writer.writerow(["path", "class", "probability", *class_names])
        self.failures = 0

    def error(self, message):
        self.failures += 1
        print(f"error: {message}", file=sys.stderr, flush=True)

    def report(self, path, image, probabilities):
        check_finite(probabilities[np.newaxis], [path])
        ranked = rank(probabilities, self.class_names, self.top_k)
        if self.verbose:
            width = max(len(name) for name, _ in ranked)
            for name, probability in ranked:
                print(f"  {name:<{width}}  {probability:.3f}")
        else:
            print(f"{path}\t{ranked[0][0]}\t{ranked[0][1]:.3f}", flush=True)
        if self.csv_writer:
            self.csv_writer.writerow(
                [path, ranked[0][0], f"{ranked[0][1]:.6f}", *(f"{p:.6f}" for p in probabilities)]
            )
            self.csv_file.flush()
        if self.show:
            self._show(image, ranked)
        elif self.plots:
            saved = self.plots.save(plot_prediction(image, ranked), path)
            if self.verbose:
                print(f"  saved {saved}")

    def _show(self, image, ranked):
        import matplotlib.pyplot as plt

        figure = plot_prediction(image, ranked, plt.figure(figsize=(4, 4.4), layout="constrained"))
        plt.show()
        plt.close(figure)

    def close(self):
        if self.csv_file:
            self.csv_file.close()


def predict_arguments(model, config, arguments, reporter):
    """Batch mode: every image the arguments name; exit code 2 if any failed."""
    paths, errors = expand_paths(arguments)
    for message in errors:
        reporter.error(message)
    results = predict_paths(model, paths, config["image_size"], config["preprocessing"])
    for path, image, probabilities, error in results:
        if error:
            reporter.error(error)
        else:
            reporter.report(path, image, probabilities)
    return 2 if reporter.failures else 0


def predict_lines(model, config, stdin, reporter, interactive):
    """The prompt loop (or, when piped, one path per line); always exits 0.

    Interactive: an empty line, `q`, end of input or Ctrl-C ends it. Piped:
    blank lines are skipped and the input's end ends it.
    """
    from keras_parnet.data import ImageError, load_image

    try:
        while True:
            if interactive:
                print(PROMPT, end="", flush=True)
            line = stdin.readline()
            if not line:
                if interactive:
                    print()
                break
            path = clean_path(line)
            if interactive and (not path or path.lower() in QUIT_WORDS):
                break
            if not path:
                continue
            try:
                image = load_image(path, config["image_size"], config["preprocessing"].get("crop_fraction"))
            except ImageError as error:
                reporter.error(error)
                continue
            probabilities = predict_probabilities(model, image[np.newaxis], config["preprocessing"])[0]
            reporter.report(path, image, probabilities)
    except KeyboardInterrupt:
        print()
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="Classify images with a trained ParNet. Without PATHS and with a terminal, "
        f"prompts '{PROMPT}' and shows each image titled class:probability (empty line, q, "
        "Ctrl-D or Ctrl-C to quit); with PATHS, or paths piped one per line, prints one "
        "tab-separated line per image: path, class, probability.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="image files, folders (every image below them) or globs")
    run = parser.add_argument_group("model (default: the newest run in --logs-dir)")
    run.add_argument("--run", metavar="RUN_DIR", help="run folder written by train.py")
    run.add_argument("--weights", metavar="FILE",
                     help="weights to load instead of the run's best.weights.h5: .weights.h5, "
                     "legacy .h5 or a full .keras model; a run.json beside it is used")
    run.add_argument("--logs-dir", default="logs", help="where to look for runs (default logs)")
    run.add_argument("--classes", metavar="FILE",
                     help="class names, one per line in label order (default: the run's)")
    run.add_argument("--model", choices=("s", "m", "l", "xl"), help="ParNet size (default: the run's)")
    run.add_argument("--widths", type=int, nargs=4, metavar=("W0", "W1", "W2", "W3"),
                     help="custom stream widths instead of a size's (default: the run's)")
    run.add_argument("--small-input", action="store_true",
                     help="CIFAR-style stem without stride (with --model/--widths)")
    run.add_argument("--image-size", type=int, metavar="PX",
                     help=f"square input size (default: the run's, else {DEFAULT_IMAGE_SIZE})")
    run.add_argument("--no-fuse", action="store_true",
                     help="predict with the trained (unfused) model instead of its folded "
                     "inference form; the outputs agree within 1e-4")
    run.add_argument("--artifact", metavar="FILE",
                     help="classify with an exported artifact (python -m keras_parnet.export): a .keras, "
                     ".tflite or .onnx file or a SavedModel folder, instead of the run's weights; the run "
                     "(--run, else the artifact's folder when it holds a run.json, else the newest in "
                     "--logs-dir) gives the class names and image size, checked against the labels.txt "
                     "beside the artifact")
    out = parser.add_argument_group("output")
    out.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                     help=f"classes printed per image at the prompt (default {DEFAULT_TOP_K})")
    out.add_argument("--csv", metavar="FILE",
                     help="also write path, class, probability and every class's probability")
    out.add_argument("--save-plots", metavar="DIR",
                     help="write each titled figure as DIR/<image name>.png instead of showing it")
    out.add_argument("--no-show", action="store_true",
                     help=f"never open a window (the default without a display); at the prompt, "
                     f"figures are saved to --save-plots or {DEFAULT_PLOT_DIR}/")
    return parser


def predict(args, stdin):
    """Runs the mode the arguments and stdin call for; returns the exit code."""
    from keras_parnet.models import MIN_INPUT_SIZE

    if args.top_k < 1:
        raise PredictError(f"--top-k must be at least 1, got {args.top_k}.")
    if args.image_size is not None and args.image_size < MIN_INPUT_SIZE:
        raise PredictError(f"--image-size {args.image_size} is below ParNet's {MIN_INPUT_SIZE} px "
                           f"minimum: pass at least {MIN_INPUT_SIZE}, or leave it out for the run's size.")
    if args.save_plots:
        output_dir(args.save_plots, "--save-plots")
    model, config = load_predictor(args)
    interactive = not args.paths and stdin.isatty()
    show = interactive and not args.no_show and not args.save_plots and display_available()
    plot_dir = args.save_plots
    if interactive and not show and not plot_dir:
        plot_dir = DEFAULT_PLOT_DIR
        reason = "--no-show" if args.no_show else "no display"
        print(f"{reason}: figures are saved to {plot_dir}/.", file=sys.stderr)
    if interactive:
        height, width = config["image_size"]
        if "artifact" in config:
            source = f"{config['artifact']}: {config['artifact_format']} artifact ({config['artifact_input']} input)"
        else:
            source = f"{config['weights']}: {config.get('model', model.name)}"
        print(f"{source} at {height}x{width}, classes {', '.join(config['class_names'])}")
    reporter = Reporter(config["class_names"], args.top_k, args.csv, plot_dir, show,
                        verbose=interactive)
    try:
        if args.paths:
            return predict_arguments(model, config, args.paths, reporter)
        return predict_lines(model, config, stdin, reporter, interactive)
    finally:
        reporter.close()


def main(argv=None):
    from keras_parnet.data import ImageError
    from keras_parnet.export import ExportError
    from keras_parnet.runs import RunError

    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run_tool(lambda: predict(args, sys.stdin), (RunError, PredictError, ImageError, ExportError))


if __name__ == "__main__":
    sys.exit(main())
