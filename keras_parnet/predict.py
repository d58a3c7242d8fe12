"""Classify images with a trained ParNet: the library API of the predict tool
(the command line is `keras_parnet.cli.predict`).

    model, config = load_predictor("logs/<run>")       # fused, as run.json says
    predict_image(model, "cat.jpg", config["class_names"], config["image_size"],
                  preprocessing=config["preprocessing"])  # [(class, probability), ...]

The model, its weights, image size, preprocessing and class names (in label
order) come from a run folder written by train (see `keras_parnet.runs`);
arguments override them. Images go through `keras_parnet.data.load_image`, the
evaluation path of the training pipeline.

An artifact written by `keras_parnet.export` (`.keras`, `.tflite`, `.onnx` or
a SavedModel folder) classifies through its own runtime instead
(`load_artifact_predictor`): the class names and image size still come from
the run, and must match the `labels.txt` beside the artifact. Models and
artifacts do the run's preprocessing in their graph: a Keras model and a float
artifact are given the 0-255 pixels `load_image` reads, a uint8 artifact the
same pixels as 8-bit integers. Keras models and artifacts go through one
code path: `predict_paths` and `predict_probabilities` take a classifier
function `images -> probabilities` (`as_classifier`, `artifact_classifier`).
"""

import glob
import itertools
import os
import warnings
from pathlib import Path

import numpy as np

DEFAULT_TOP_K = 5
# Without a run.json: train's default image size.
DEFAULT_IMAGE_SIZE = 256
BATCH_SIZE = 16


class PredictError(ValueError):
    """A prediction setting that cannot work."""


# Prediction --------------------------------------------------------------------


def rank(probabilities, class_names, top_k=DEFAULT_TOP_K):
    """`[(class_name, probability), ...]`, the `top_k` most likely first."""
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:top_k]
    return [(class_names[index], float(probabilities[index])) for index in order]


def as_classifier(model):
    """A function `(N, H, W, 3)` 0-255 RGB pixels -> `(N, classes)` probabilities.

    A Keras model (anything with `predict_on_batch`; a run's model scales and
    normalizes in its first layers) is given them as float32; anything else
    is taken to be such a function already, e.g. an exported artifact's
    (`artifact_classifier`).
    """
    if not hasattr(model, "predict_on_batch"):
        return model
    return lambda images: np.asarray(model.predict_on_batch(np.asarray(images, np.float32)))


def predict_probabilities(model, images):
    """`(N, H, W, 3)` 0-255 pixels -> `(N, classes)` outputs of `model`,
    a Keras model or a classifier function (see `as_classifier`)."""
    return np.asarray(as_classifier(model)(images))


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
        preprocessing: `run.json`'s `preprocessing` (its `crop_fraction`
            is applied when the image is read; the model does the rest).

    Returns:
        `[(class_name, probability), ...]`, the most likely first.

    Raises:
        ImageError: the file cannot be read as an image.
    """
    from keras_parnet.data import load_image

    image = load_image(path, image_size, (preprocessing or {}).get("crop_fraction"))
    probabilities = predict_probabilities(model, image[np.newaxis])[0]
    return rank(probabilities, class_names, top_k)


def predict_paths(model, paths, image_size, preprocessing=None, batch_size=BATCH_SIZE):
    """Classifies many image files, `batch_size` at a time.

    `model` is a Keras model or a classifier function (see `as_classifier`);
    each file is read by `keras_parnet.data.load_image` at `image_size` with
    `preprocessing`'s `crop_fraction`.

    Yields:
        `(path, image, probabilities, error)` in the order of `paths`: `image`
        the `(H, W, 3)` input (0-255 pixels) and `probabilities` `(classes,)`, or
        both `None` and `error` the one-line reason the file was skipped.
    """
    from keras_parnet.data import ImageError, load_image

    crop_fraction = (preprocessing or {}).get("crop_fraction")
    classify = as_classifier(model)
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


# Loading -----------------------------------------------------------------------


def read_labels(path):
    """Class names from a text file, one per line in label order (blank lines
    skipped), e.g. the `labels.txt` export writes.

    Raises:
        PredictError: the file cannot be read or lists no names.
    """
    path = Path(path).expanduser()
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise PredictError(f"cannot read class names from {path}: {error}") from None
    if not names:
        raise PredictError(f"{path} lists no class names: write one name per line.")
    return names


def _run_config(run, weights, logs_dir):
    """`(config, weights)`: `run.json` of the run `run`/`weights` point to
    (`{}` for weights without one) and the weights file to load."""
    from keras_parnet import runs

    if weights is None:
        run_dir, weights = runs.resolve_run(run, logs_dir)
        return {**runs.read_run(run_dir), "run_dir": str(run_dir)}, weights
    weights = Path(weights).expanduser()
    run_dir = Path(run).expanduser() if run else weights.parent
    if run or (run_dir / runs.RUN_FILE).is_file():
        return {**runs.read_run(run_dir), "run_dir": str(run_dir)}, weights
    return {}, weights


def architecture_overrides(config, model=None, widths=None, small_input=False, image_size=None,
                           class_names=None):
    """A copy of the run `config` with the architecture, size and class names
    given (`model`: a size `"s"`...`"xl"`; `widths`: 4 stream widths instead)."""
    from keras_parnet.models import BUILDERS

    config = dict(config)
    if widths:
        config["model"], config["model_kwargs"] = "ParNet", {"widths": list(widths)}
    elif model:
        config["model"], config["model_kwargs"] = BUILDERS[model].__name__, {}
    if small_input:
        config["model_kwargs"] = {**config.get("model_kwargs", {}), "small_input": True}
    if image_size:
        config["image_size"] = [image_size, image_size]
    if class_names:
        config["class_names"] = list(class_names)
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


def load_predictor(run=None, weights=None, logs_dir="logs", fuse=True, **overrides):
    """`(model, config)`: the model a run describes with its weights loaded
    (fused unless `fuse=False`) and its settings (`class_names`, `image_size`,
    `preprocessing`, `weights`).

    Args:
        run: a run folder or a weights file beside its `run.json` (`None`:
            the newest run in `logs_dir`), as for `keras_parnet.runs.load_run`.
        weights: weights instead of the run's `best.weights.h5`: a
            `.weights.h5`, legacy `.h5` or full `.keras` file; without `run`,
            a `run.json` beside it is used, else `overrides` must name the
            architecture and class names (a `.keras` file holds its own).
        logs_dir: where to look for the newest run.
        fuse: fold the branches for inference (`keras_parnet.reparam`).
        **overrides: `model`, `widths`, `small_input`, `image_size`,
            `class_names` instead of the run's (`architecture_overrides`).

    Raises:
        RunError, PredictError: a missing or inconsistent run, weights file
            or class list, with what to pass instead.
    """
    from keras_parnet import runs

    config, weights = _run_config(run, weights, logs_dir)
    config = architecture_overrides(config, **overrides)
    full_model = not config.get("model") and weights.suffix == ".keras"
    if not config.get("model") and not full_model:
        raise PredictError(
            f"{weights} has no {runs.RUN_FILE} beside it: pass the architecture "
            "(--model or --widths, with --small-input if trained so), --image-size and --class-names."
        )
    if "class_names" not in config:
        raise PredictError(f"{weights} has no {runs.RUN_FILE} beside it: pass --class-names FILE.")
    if full_model:
        model = _load_full_model(weights, config)
    else:
        config.setdefault("image_size", [DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE])
        model = runs.build_model_with_weights(config, weights)
    if model.output_shape[-1] != len(config["class_names"]):
        raise PredictError(
            f"the model in {weights} has {model.output_shape[-1]} outputs but the class list "
            f"names {len(config['class_names'])} classes: pass the --class-names file it was trained with."
        )
    config.setdefault("preprocessing", dict(runs.DEFAULT_PREPROCESSING))
    config["weights"] = str(weights)
    if fuse:
        model = fuse_model(model, may_be_fused=full_model)
    if full_model:
        model = _taking_pixels(model)
    return model, config


def _taking_pixels(model):
    """A full model saved before models began with their preprocessing layers
    takes [0, 1] floats; behind a `Rescaling` it takes 0-255 pixels as every
    run's model does."""
    import keras

    from keras_parnet.models import preprocessing_layers

    if any(layer.name == "rescaling" and isinstance(layer, keras.layers.Rescaling) for layer in model.layers):
        return model  # it begins with `preprocessing_layers`
    inputs = keras.Input(model.input_shape[1:])
    return keras.Model(inputs, model(preprocessing_layers(inputs)), name=model.name)


def fuse_model(model, may_be_fused=False):
    """The model with its branches folded for inference (`keras_parnet.reparam`).

    With `may_be_fused` (a full `.keras` file, e.g. an exported fused model
    with nothing left to fold) a model that cannot be folded is used as
    loaded, with a warning. A model rebuilt from `run.json` is always a ParNet:
    there a folding error is a bug and is raised.
    """
    from keras_parnet.reparam import reparameterize

    try:
        return reparameterize(model)
    except ValueError as error:
        if not may_be_fused:
            raise
        warnings.warn(f"{error} Predicting with the model as loaded.", stacklevel=2)
        return model


# Exported artifacts --------------------------------------------------------------


def artifact_classifier(run):
    """The classifier function (see `as_classifier`) of a loaded artifact.

    Args:
        run: what `keras_parnet.export.load_artifact` returns.

    Both kinds do the run's preprocessing in their graph. A uint8 artifact is
    given the pixels rounded to integers: exactly the 8-bit pixels for images
    read by `load_image` at the run's size without a crop. A float artifact
    is given them as they are.
    """
    if run.input_dtype == np.uint8:
        return lambda images: np.asarray(run(np.round(np.asarray(images, np.float32)).astype(np.uint8)))
    return lambda images: np.asarray(run(np.asarray(images, np.float32)))


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
    names = read_labels(labels)
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
        size (a warning says so).

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
        warnings.warn(f"{path} takes uint8 images at {height}x{width} and does the run's crop "
                      f"({preprocessing.pop('crop_fraction')}) itself: each image is given to it whole, "
                      f"resized to {height}x{width}.", stacklevel=2)
    config["preprocessing"] = preprocessing
    classify = artifact_classifier(loaded)
    try:
        outputs = classify(np.zeros((1, height, width, 3), np.float32))
    except Exception as error:  # noqa: BLE001 - as above
        raise PredictError(f"cannot run {path} on {height}x{width} images ({_one_line(error)}).") from None
    classes = len(config["class_names"])
    if outputs.ndim != 2 or outputs.shape[-1] != classes:
        raise PredictError(f"{path} gives {outputs.shape[-1] if outputs.ndim else 0} class probabilities but "
                           f"{run} names {classes} classes: pass the run the artifact was exported from.")
    return classify, config


def load_artifact_predictor(artifact, run=None, logs_dir="logs", class_names=None):
    """`(classifier, config)` of an exported artifact: the run from `run`,
    the artifact's folder or `logs_dir` (`resolve_artifact`), its class names
    (or `class_names`), and the artifact (`load_artifact_classifier`)."""
    from keras_parnet import runs

    path, run_dir = resolve_artifact(artifact, run, logs_dir)
    config = runs.read_run(run_dir)
    if class_names:
        config["class_names"] = list(class_names)
    return load_artifact_classifier(path, config, run_dir)
