"""Export a trained run's fused model for deployment: `python -m keras_parnet.export --help`.

    python -m keras_parnet.export logs/<run> --format onnx
    python -m keras_parnet.export logs/<run>/ep012-....weights.h5 --format tflite --out m.tflite

The model is rebuilt from the run folder (`keras_parnet.runs.load_run`), folded
for inference (`keras_parnet.reparam.reparameterize`) and written at the run's
fixed image size with a free batch size. The artifact is then loaded back with
its own runtime and its outputs on a sample batch are compared with the trained
Keras model's: the export fails if they differ by more than 1e-4.

Formats: `keras` (`.keras`, needs keras_parnet to load), `savedmodel` (a
TensorFlow SavedModel folder, endpoint `serve`), `tflite` (TensorFlow Lite
flatbuffer) and `onnx` (needs the `export` extra: `pip install
"keras-parnet[export]"`). Inputs are RGB images scaled to [0, 1], `(batch, H, W, 3)`
float32; outputs are the class probabilities in run.json's label order.

Grouped convolutions (the fusion blocks) run through a per-op XLA function in
Keras' TensorFlow backend on CPU, which TFLite inlines but tf2onnx cannot convert
and serving runtimes without XLA cannot run; the TensorFlow formats are
therefore traced from a copy whose grouped convolutions call TensorFlow's native
grouped `Conv2D` (a plain `Conv2D` in the SavedModel and TFLite, a `Conv` with
`group=2` in ONNX).
"""

import argparse
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

FORMATS = ("keras", "savedmodel", "tflite", "onnx")
# What `--out` defaults to beside the weights: `<stem>_fused<suffix>`.
SUFFIXES = {"keras": ".keras", "savedmodel": "_savedmodel", "tflite": ".tflite", "onnx": ".onnx"}
TOLERANCE = 1e-4
CHECK_BATCH_SIZE = 4
ONNX_OPSET = 17
INPUT_NAME = "image"
EXTRA_HINT = 'pip install "keras-parnet[export]"'


class ExportError(ValueError):
    """An export that cannot be made: missing extra, unusable model or path."""


class ArtifactMismatchError(ExportError):
    """The written artifact does not compute what the Keras model computes."""


def _input_spec(model):
    import tensorflow as tf

    shape = tuple(model.input_shape)
    if len(shape) != 4 or None in shape[1:]:
        raise ExportError(
            f"export needs a fixed input size, model '{model.name}' takes {shape}: "
            "build it with input_shape=(height, width, 3)."
        )
    return tf.TensorSpec((None, *shape[1:]), tf.float32, name=INPUT_NAME)


def _native_grouped_conv_class():
    import keras
    import tensorflow as tf

    class NativeGroupedConv2D(keras.layers.Conv2D):
        """Conv2D calling `tf.nn.convolution` directly, not Keras' XLA wrapper."""

        def convolution_op(self, inputs, kernel):
            return tf.nn.convolution(
                inputs,
                kernel,
                strides=self.strides,
                padding=self.padding.upper(),
                dilations=self.dilation_rate,
            )

    return NativeGroupedConv2D


def _traceable_copy(model):
    """`model` with its grouped convolutions as native TensorFlow ops."""
    import keras

    native_conv = _native_grouped_conv_class()

    def clone_layer(layer):
        config = layer.get_config()
        if type(layer) is keras.layers.Conv2D and layer.groups > 1:
            return native_conv.from_config(config)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    copy.set_weights(model.get_weights())
    return copy


def _check_output(path, format):
    path = Path(path)
    if format not in FORMATS:
        raise ExportError(f"unknown export format '{format}': use one of {', '.join(FORMATS)}.")
    if format == "keras" and path.suffix != ".keras":
        raise ExportError(f"the keras format writes a .keras file, got {path}.")
    return path


def _require_onnx():
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx
    except ImportError as error:
        raise ExportError(
            f"ONNX export needs tf2onnx and onnxruntime ({error.name} is missing): "
            f"{EXTRA_HINT}"
        ) from None
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    return tf2onnx


def export_model(model, path, format):
    """Writes `model` as a deployable artifact.

    Args:
        model: a Keras model with a fixed input size, usually the fused model
            (`keras_parnet.reparam.reparameterize`).
        path: the file (or, for `savedmodel`, the folder) to write.
        format: one of `FORMATS`.

    Returns:
        `path` as a `Path`.

    Raises:
        ExportError: unknown format, dynamic input size, `.keras` path without
            that suffix, or the `export` extra missing for ONNX.
    """
    import tensorflow as tf

    path = _check_output(path, format)
    spec = _input_spec(model)
    if format == "onnx":
        tf2onnx = _require_onnx()
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "keras":
        model.save(path)
        return path
    traceable = _traceable_copy(model)
    if format == "savedmodel":
        traceable.export(path, format="tf_saved_model", input_signature=[spec], verbose=False)
    elif format == "tflite":
        # From a SavedModel: `from_concrete_functions` gives NaN outputs here (TF 2.21).
        with tempfile.TemporaryDirectory() as saved_model:
            traceable.export(
                saved_model, format="tf_saved_model", input_signature=[spec], verbose=False
            )
            converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
            path.write_bytes(converter.convert())
    else:

        @tf.function(input_signature=[spec])
        def serve(image):
            return traceable(image, training=False)

        tf2onnx.convert.from_function(
            serve, input_signature=[spec], opset=ONNX_OPSET, output_path=str(path)
        )
    return path


def load_artifact(path, format):
    """Loads an exported artifact with its own runtime.

    Returns:
        A function `(batch, H, W, 3) float32 array -> output array`.
    """
    path = os.fspath(path)
    if format == "keras":
        import keras

        model = keras.saving.load_model(path)  # keras_parnet's layers are registered
        return lambda batch: np.asarray(model(batch, training=False))
    if format == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)  # must outlive the function using its variables
        return lambda batch: loaded.serve(batch).numpy()
    if format == "tflite":
        return _tflite_runner(path)
    if format == "onnx":
        _require_onnx()
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {input_name: batch})[0]
    raise ExportError(f"unknown export format '{format}': use one of {', '.join(FORMATS)}.")


def _tflite_runner(path):
    import tensorflow as tf

    with warnings.catch_warnings():
        # TF 2.20+ points to the separate ai_edge_litert package; TF's copy still works.
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=path)
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]

    def run(batch):
        interpreter.resize_tensor_input(input_index, batch.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(input_index, batch)
        interpreter.invoke()
        return interpreter.get_tensor(output_index)

    return run


def max_abs_diff(run, reference, batch):
    """Largest absolute difference between `run(batch)` and `reference`."""
    output = np.asarray(run(batch))
    if output.shape != reference.shape:
        raise ArtifactMismatchError(
            f"outputs of shape {output.shape} where the trained model gives {reference.shape}."
        )
    return float(np.max(np.abs(output - reference)))


def sample_batch(model, size=CHECK_BATCH_SIZE, seed=0):
    """Random images in [0, 1] at the model's input size, `(size, H, W, 3)` float32."""
    shape = (size, *model.input_shape[1:])
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def default_output(weights, format):
    """`<weights folder>/<weights stem>_fused<suffix>`, e.g. `best_fused.onnx`."""
    weights = Path(weights)
    stem = weights.name
    for extension in (".weights.h5", ".h5", ".hdf5", ".keras"):
        if stem.endswith(extension):
            stem = stem[: -len(extension)]
            break
    return weights.parent / f"{stem}_fused{SUFFIXES[format]}"


def export_run(path=None, format="keras", out=None, logs_dir="logs"):
    """Rebuilds a run's model, fuses it, exports it and checks the artifact.

    Args:
        path: run folder or weights file beside a `run.json` (`None`: the
            newest run in `logs_dir`).
        format: one of `FORMATS`.
        out: where to write (default: `default_output(weights, format)`).
        logs_dir: where to look for runs when `path` is `None`.

    Returns:
        `(out, report)`: the artifact's path and a dict with `fused_diff` and
        `artifact_diff`, the max abs differences from the trained model's outputs.

    Raises:
        keras_parnet.runs.RunError: the run cannot be loaded.
        ExportError: see `export_model`.
        ArtifactMismatchError: a difference above `TOLERANCE`.
    """
    from keras_parnet.reparam import reparameterize
    from keras_parnet.runs import load_run

    # Fail before the slow part.
    if out is not None:
        _check_output(out, format)
    if format == "onnx":
        _require_onnx()
    model, config = load_run(path, logs_dir=logs_dir)
    fused = reparameterize(model)
    out = Path(out) if out is not None else default_output(config["weights"], format)
    export_model(fused, out, format)

    batch = sample_batch(model)
    reference = np.asarray(model(batch, training=False))
    report = {
        "fused_diff": max_abs_diff(lambda x: fused(x, training=False), reference, batch),
        "artifact_diff": max_abs_diff(load_artifact(out, format), reference, batch),
    }
    if not all(diff <= TOLERANCE for diff in report.values()):  # NaN fails too
        raise ArtifactMismatchError(
            f"{out} differs from the trained model by up to {report['artifact_diff']:.3g} (tolerance "
            f"{TOLERANCE:g}; fused Keras model: {report['fused_diff']:.3g}): do not deploy it."
        )
    return out, report


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m keras_parnet.export",
        description=(
            "Write a deployable artifact of a trained run's fused (reparameterized) "
            "model and check that it computes what the trained Keras model computes "
            f"(max abs difference at most {TOLERANCE:g} on a random batch)."
        ),
    )
    parser.add_argument(
        "weights",
        nargs="?",
        metavar="WEIGHTS",
        help="run folder (uses its best.weights.h5) or a weights file beside a run.json; "
        "default: the newest run in --logs-dir",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        required=True,
        help="keras: .keras file; savedmodel: TensorFlow SavedModel folder; tflite: "
        "TensorFlow Lite file; onnx: ONNX file (needs the export extra: "
        f"{EXTRA_HINT})",
    )
    parser.add_argument(
        "--out",
        help="file (folder for savedmodel) to write; default: beside the weights, "
        "<weights name>_fused.keras / _fused_savedmodel / _fused.tflite / _fused.onnx",
    )
    parser.add_argument(
        "--logs-dir",
        default="logs",
        help="where to look for the newest run when WEIGHTS is not given (default: logs)",
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Eager calls through Keras' per-op XLA grouped convolution warn about retracing.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    from keras_parnet.runs import RunError

    try:
        out, report = export_run(args.weights, args.format, args.out, args.logs_dir)
    except ArtifactMismatchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (RunError, ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({args.format})")
    print(
        f"max abs difference from the trained model on {CHECK_BATCH_SIZE} random images: "
        f"{report['artifact_diff']:.3g} (fused Keras model: {report['fused_diff']:.3g})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
