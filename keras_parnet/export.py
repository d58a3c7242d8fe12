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
Keras' TensorFlow backend on CPU, which tf2onnx cannot convert and serving
runtimes without XLA cannot run; the non-Keras formats are therefore traced from
a copy whose grouped convolutions are TensorFlow ops: one convolution per group,
concatenated, in the SavedModel and TFLite (TensorFlow's graph optimizer would
fuse a grouped convolution and its bias into an op with no grouped kernel on
CPUs where the oneDNN path is off), and one `Conv` with `group=2` in ONNX.
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


def _tensorflow_conv_class(split_groups):
    """A `Conv2D` on TensorFlow's own convolution op instead of Keras' XLA
    wrapper for grouped convolutions.

    With `split_groups`, each group is a convolution of its own and the
    results are concatenated. A restored SavedModel's graph optimizer fuses a
    convolution with the bias add after it into one op that has no grouped
    kernel when TensorFlow's oneDNN path is off ("Fused conv implementation
    does not support grouped convolutions"); with no grouped op left, every
    fusion it can make has a kernel, whatever the CPU. The arithmetic is the
    same, group by group.
    """
    import keras
    import tensorflow as tf

    class TensorFlowConv2D(keras.layers.Conv2D):
        def convolution_op(self, inputs, kernel):
            def convolve(x, k):
                return tf.nn.convolution(
                    x,
                    k,
                    strides=self.strides,
                    padding=self.padding.upper(),
                    dilations=self.dilation_rate,
                )

            if not split_groups:
                return convolve(inputs, kernel)
            return tf.concat(
                [
                    convolve(x, k)
                    for x, k in zip(
                        tf.split(inputs, self.groups, axis=-1),
                        tf.split(kernel, self.groups, axis=-1),
                    )
                ],
                axis=-1,
            )

    return TensorFlowConv2D


def _traceable_copy(model, split_groups):
    """`model` with its grouped convolutions as TensorFlow ops (see
    `_tensorflow_conv_class`)."""
    import keras

    tensorflow_conv = _tensorflow_conv_class(split_groups)

    def clone_layer(layer):
        config = layer.get_config()
        if type(layer) is keras.layers.Conv2D and layer.groups > 1:
            return tensorflow_conv.from_config(config)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    copy.set_weights(model.get_weights())
    return copy


def _check_output(path, format):
    """`path` as a `Path`, once its format, suffix and folder are known good."""
    from keras_parnet._cli import output_dir

    path = Path(path)
    if format not in FORMATS:
        raise ExportError(f"unknown export format '{format}': use one of {', '.join(FORMATS)}.")
    if format == "keras" and path.suffix != ".keras":
        raise ExportError(f"the keras format writes a .keras file, got {path}.")
    if format == "savedmodel" and path.exists() and not path.is_dir():
        raise ExportError(f"{path} is a file and a SavedModel is a folder: choose another --out.")
    if format != "savedmodel" and path.is_dir():
        raise ExportError(f"{path} is a folder and the {format} format writes a file: choose another --out.")
    output_dir(path.parent, "the output folder")
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
            that suffix, a file where a folder goes (or the reverse), or the
            `export` extra missing for ONNX.
        keras_parnet._cli.OutputError: the output folder cannot be written.
    """
    from keras_parnet._cli import write_atomically

    path = _check_output(path, format)
    spec = _input_spec(model)
    if format == "onnx":
        _require_onnx()
    # A failed or interrupted export leaves any earlier artifact at `path` whole.
    return write_atomically(path, lambda partial: _write(model, partial, format, spec))


def _write(model, path, format, spec):
    import tensorflow as tf

    if format == "keras":
        model.save(path)
        return
    # ONNX Runtime has grouped kernels for every fusion it makes: one grouped Conv there.
    traceable = _traceable_copy(model, split_groups=format != "onnx")
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

        _require_onnx().convert.from_function(
            serve, input_signature=[spec], opset=ONNX_OPSET, output_path=str(path)
        )


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
    out = _check_output(out if out is not None else default_output(config["weights"], format), format)
    fused = reparameterize(model)
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
    from keras_parnet._cli import run_tool
    from keras_parnet.runs import RunError

    def export_and_report():
        try:
            out, report = export_run(args.weights, args.format, args.out, args.logs_dir)
        except ArtifactMismatchError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"wrote {out} ({args.format})")
        print(
            f"max abs difference from the trained model on {CHECK_BATCH_SIZE} random images: "
            f"{report['artifact_diff']:.3g} (fused Keras model: {report['fused_diff']:.3g})"
        )
        return 0

    return run_tool(export_and_report, (RunError, ExportError))


if __name__ == "__main__":
    sys.exit(main())
