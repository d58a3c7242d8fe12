"""The run folder shared by train, predict, evaluate and export.

    logs/<run-name>/
      run.json            builder and its arguments, image size, class names in
                          label order, preprocessing, training settings, the
                          validation split (`validation`, see
                          `keras_parnet.data.dataset_splits`), versions, command line
      config.json         the train command's resolved flags (`parnet-train
                          --config` takes it back to train the run again)
      best.weights.h5     best epoch (lowest val_loss on the validation images)
      ep{epoch:03d}-loss{loss:.3f}-val_loss{val_loss:.3f}.weights.h5
      history.csv, tensorboard/, backup/ (resume state while a run is unfinished)

Everything that reads a run rebuilds the model from `run.json` and loads
weights; nothing re-derives class names or sizes from folders.
"""

import datetime
import json
import math
import sys
from pathlib import Path

RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
BEST_WEIGHTS = "best.weights.h5"
# Pixels scaled to [0, 1], what train.py feeds the network.
DEFAULT_PREPROCESSING = {"rescale": 1 / 255}
# run.json `preprocessing` keys: `rescale`, `mean` and `std` become the model's
# first layers (`models.preprocessing_layers`); `crop_fraction` is applied when
# images are decoded (`data.load_image`); `interpolation` only names the resize
# decoding does (older converted runs record it).
PREPROCESSING_KEYS = ("rescale", "mean", "std", "crop_fraction", "interpolation")
REQUIRED_KEYS = ("model", "model_kwargs", "image_size", "class_names")


class RunError(ValueError):
    """A run folder that is missing, incomplete or does not fit its weights."""


def image_size_pair(image_size):
    """`224` or `(224, 160)` -> `[height, width]`."""
    if isinstance(image_size, int):
        return [image_size, image_size]
    height, width = image_size
    return [int(height), int(width)]


def new_run_dir(logs_dir, model_name):
    """An unused `logs_dir/<timestamp>-<model_name>`, not created yet (a run
    that fails to start leaves no folder behind)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(logs_dir) / f"{stamp}-{model_name}"
    run_dir, suffix = base, 1
    while run_dir.exists():
        suffix += 1
        run_dir = Path(f"{base}-{suffix}")
    return run_dir


def _versions():
    import keras
    import tensorflow as tf

    from keras_parnet import __version__

    return {"keras_parnet": __version__, "keras": keras.__version__, "tensorflow": tf.__version__}


def write_run(run_dir, model_name, model_kwargs, image_size, class_names,
              preprocessing=None, command=None, **extra):
    """Writes `run_dir/run.json` (see `run_config`) and returns its content."""
    return save_run(run_dir, run_config(model_name, model_kwargs, image_size, class_names,
                                        preprocessing, command, **extra))


def run_config(model_name, model_kwargs, image_size, class_names, preprocessing=None, command=None, **extra):
    """The content of a run.json.

    Args:
        model_name: a builder name (`"parnet_s"`, ...) or `"ParNet"` with
            `model_kwargs["widths"]`.
        model_kwargs: builder arguments other than `input_shape` and `classes`.
        image_size: int or `(height, width)` the model was trained at.
        class_names: names in label order.
        preprocessing: how pixels were prepared (default: scaled to [0, 1]).
        command: the command line (default: this process's).
        **extra: further JSON-serialisable entries (e.g. training settings).
    """
    return {
        "model": model_name,
        "model_kwargs": dict(model_kwargs),
        "image_size": image_size_pair(image_size),
        "class_names": list(class_names),
        "preprocessing": dict(preprocessing or DEFAULT_PREPROCESSING),
        **extra,
        "versions": _versions(),
        "command": command if command is not None else " ".join(sys.argv),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def save_run(run_dir, config):
    """Writes `config` to `run_dir/run.json` atomically (creating the
    folder if needed) and returns it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / RUN_FILE, config)
    return config


def write_json(path, value):
    """Writes `value` to `path` as indented JSON, atomically."""
    from keras_parnet.files import write_atomically

    write_atomically(path, lambda temporary: temporary.write_text(json.dumps(value, indent=2) + "\n"))


def read_run(run_dir):
    """Reads and checks `run_dir/run.json`."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise RunError(f"{path} not found: pass a run folder written by train.py.")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise RunError(f"{path} is not valid JSON ({error}).") from None
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise RunError(f"{path} lacks {', '.join(missing)}: it was not written by train.py.")
    if not config["class_names"]:
        raise RunError(f"{path} lists no class names.")
    config.setdefault("preprocessing", dict(DEFAULT_PREPROCESSING))
    try:
        preprocessing_arguments(config)
    except RunError as error:
        raise RunError(f"{path}: {error}") from None
    return config


def preprocessing_arguments(config):
    """The builder arguments that put a run's `preprocessing` into its model:
    `{"include_preprocessing": True, "normalization": (mean, std) or None}`.

    Raises:
        RunError: a preprocessing the model and decoding cannot do.
    """
    preprocessing = {**DEFAULT_PREPROCESSING, **config.get("preprocessing", {})}
    unknown = sorted(set(preprocessing) - set(PREPROCESSING_KEYS))
    if unknown:
        raise RunError(f"preprocessing {', '.join(unknown)} is not supported "
                       f"(supported: {', '.join(PREPROCESSING_KEYS)}).")
    if not math.isclose(float(preprocessing["rescale"]), 1 / 255, rel_tol=1e-6):
        raise RunError(f"preprocessing rescale {preprocessing['rescale']} is not supported: models "
                       "take 0-255 pixels and scale them by 1/255.")
    resize = "bilinear" if preprocessing.get("crop_fraction") else "nearest"
    if preprocessing.get("interpolation", resize) != resize:
        raise RunError(f"preprocessing interpolation '{preprocessing['interpolation']}' is not supported: "
                       f"this run's images are resized '{resize}' (remove the key).")
    if "mean" not in preprocessing and "std" not in preprocessing:
        return {"include_preprocessing": True, "normalization": None}
    mean = preprocessing.get("mean", [0.0, 0.0, 0.0])
    std = preprocessing.get("std", [1.0, 1.0, 1.0])
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise RunError(f"preprocessing mean {mean} and std {std} must be 3 values each, std positive.")
    return {"include_preprocessing": True, "normalization": (mean, std)}


def find_latest_run(logs_dir="logs"):
    """The most recently written run folder below `logs_dir`."""
    runs = sorted(Path(logs_dir).glob(f"*/{RUN_FILE}"), key=lambda path: path.stat().st_mtime)
    if not runs:
        raise RunError(
            f"no run found in {logs_dir}/: train one with `python train.py`, or name a run folder."
        )
    return runs[-1].parent


def resolve_run(path=None, logs_dir="logs"):
    """`(run_dir, weights_path)` for a run folder, a weights file beside a
    `run.json`, or (`path=None`) the newest run in `logs_dir`."""
    if path is None:
        run_dir = find_latest_run(logs_dir)
    else:
        path = Path(path).expanduser()
        if not path.exists():
            raise RunError(f"{path} does not exist: pass a run folder or a weights file.")
        run_dir = path if path.is_dir() else path.parent
        if path.is_file():
            return run_dir, path
    return run_dir, run_dir / BEST_WEIGHTS


def build_model(config, include_preprocessing=True, **overrides):
    """Rebuilds the (random-weight) model a run config describes.

    With `include_preprocessing` (the default), the model starts with the
    run's preprocessing layers (see `preprocessing_arguments`) and takes 0-255
    RGB pixels at the run's size, what `keras_parnet.data` yields; without,
    it is the bare network, taking what those layers output.
    Weights saved with or without these layers load either way (they hold none).
    """
    from keras_parnet.models import BUILDERS, ParNet

    builders = {builder.__name__: builder for builder in BUILDERS.values()}
    builders["ParNet"] = ParNet
    if config["model"] not in builders:
        raise RunError(
            f"unknown model '{config['model']}' in run config: expected one of {sorted(builders)}."
        )
    kwargs = {
        **config["model_kwargs"],
        "input_shape": (*config["image_size"], 3),
        "classes": len(config["class_names"]),
        **(preprocessing_arguments(config) if include_preprocessing else {}),
        **overrides,
    }
    return builders[config["model"]](**kwargs)


def load_run(path=None, weights=None, logs_dir="logs", include_preprocessing=True):
    """Rebuilds a trained model from its run folder.

    Args:
        path: run folder, weights file beside a `run.json`, or `None` for the
            newest run in `logs_dir`.
        weights: a weights file to use instead of the run's `best.weights.h5`
            (`.weights.h5`, legacy `.h5` or `.keras`).
        logs_dir: where to look for runs when `path` is `None`.
        include_preprocessing: see `build_model`.

    Returns:
        `(model, config)`: the model with weights loaded, and the run config.

    Raises:
        RunError: missing or inconsistent run folder or weights, including a
            class count that differs between weights and `run.json`.
    """
    run_dir, run_weights = resolve_run(path, logs_dir)
    config = read_run(run_dir)
    config["run_dir"] = str(run_dir)
    weights = Path(weights).expanduser() if weights is not None else run_weights
    if weights.name == BEST_WEIGHTS and not weights.is_file():
        raise RunError(
            f"{weights} not found: the run has not finished an epoch; train on with "
            f"`python train.py --resume {run_dir}`, or name another run."
        )
    model = build_model_with_weights(config, weights, include_preprocessing)
    config["weights"] = str(weights)
    return model, config


def build_model_with_weights(config, weights, include_preprocessing=True):
    """`build_model(config, include_preprocessing)` with the `weights` file
    loaded (`.weights.h5`, legacy `.h5` or `.keras`).

    Raises:
        RunError: a missing file, or weights of another architecture or
            class count than `config`.
    """
    from keras_parnet.models import load_weights_file

    model = build_model(config, include_preprocessing)
    try:
        load_weights_file(model, weights)
    except (FileNotFoundError, ValueError) as error:
        raise RunError(f"{error} (the class list names {len(config['class_names'])} classes)") from None
    return model
