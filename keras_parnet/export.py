"""Export a trained run's fused model for deployment (the command line is
`parnet-export`, `keras_parnet.cli.export`):

    parnet-export --run logs/<run> --format onnx
    parnet-export --run logs/<run> --format tflite --quantize int8

The model is rebuilt from the run folder (`keras_parnet.runs.load_run`), folded
for inference (`keras_parnet.reparam.reparameterize`) and written at the run's
fixed image size with a free batch size, with the run's class names beside it
(`labels.txt`, one per line in label order). The artifact is then loaded back
with its own runtime and its outputs on a sample batch are compared with the
trained Keras model fed through the data pipeline (load, resize): a float
artifact fails the export if they differ by more than 1e-4; a quantized one is
graded by its accuracy (`parnet-evaluate --artifact`).

Every artifact scales its input (and, for converted runs, normalizes it with
the official mean/std) in its graph: the run's model starts with those layers.
Inputs (`--input`): `uint8` (default) takes RGB images `(batch, H, W, 3)` uint8 at
the run's size and resizes them as the run did (the run's crop, for converted
runs); `float` takes float32 0-255 RGB pixels already at the run's size
(resized and cropped by the caller), what the run's model takes. Outputs are the class
probabilities in label order. A SavedModel has the endpoints `serve` (the
input above; also `serving_default`), `serve_float`, `serve_bytes` (a batch of
encoded JPEG/PNG/BMP/GIF images of any size, resized as the run did) and
`labels` (the class names).

Formats: `keras` (`.keras`, needs keras_parnet to load), `savedmodel` (a
TensorFlow SavedModel folder), `tflite` (TensorFlow Lite flatbuffer; `--quantize
float16`, `dynamic` (int8 weights) or `int8` (full integer, calibrated per
channel on training images of the run)) and `onnx` (needs the `export` extra:
`pip install "keras-parnet[export]"`; the class names are in its metadata).
`load_artifact(path)` runs any of them with its own runtime (the format follows
from the path: `artifact_format`) and tells what it takes (`input_dtype`,
`input_shape`); `predict.py --artifact` and `evaluate.py --artifact` use it.

Grouped convolutions (the fusion blocks) run through a per-op XLA function in
Keras' TensorFlow backend on CPU, which tf2onnx cannot convert and serving
runtimes without XLA cannot run; the non-Keras formats are therefore traced from
a copy whose grouped convolutions are TensorFlow ops: one convolution per group,
concatenated, in the SavedModel and TFLite (TensorFlow's graph optimizer would
fuse a grouped convolution and its bias into an op with no grouped kernel on
CPUs where the oneDNN path is off), and one `Conv` with `group=2` in ONNX.
"""

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

FORMATS = ("keras", "savedmodel", "tflite", "onnx")
INPUTS = ("uint8", "float")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
DEFAULT_CALIBRATION_IMAGES = 200
LABELS_FILE = "labels.txt"
# The artifact's name ends `<stem>_fused<suffix>` (see `default_output`).
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


def _input_spec(model, dtype="float32"):
    import tensorflow as tf

    shape = tuple(model.input_shape)
    if len(shape) != 4 or None in shape[1:]:
        raise ExportError(
            f"export needs a fixed input size, model '{model.name}' takes {shape}: "
            "build it with input_shape=(height, width, 3)."
        )
    return tf.TensorSpec((None, *shape[1:]), dtype, name=INPUT_NAME)


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


def _silu(x):
    """SiLU as `x * sigmoid(x)`: TensorFlow's `silu` op carries a custom
    gradient, which a SavedModel either stores (traced at every export) or
    warns about at every load; serving needs no gradient."""
    import tensorflow as tf

    return x * tf.sigmoid(x)


def _traceable_copy(model, split_groups):
    """`model` with its grouped convolutions as TensorFlow ops (see
    `_tensorflow_conv_class`) and its SiLU without a custom gradient."""
    import keras

    tensorflow_conv = _tensorflow_conv_class(split_groups)

    def clone_layer(layer):
        config = layer.get_config()
        if type(layer) is keras.layers.Conv2D and layer.groups > 1:
            return tensorflow_conv.from_config(config)
        if type(layer) is keras.layers.Activation and config["activation"] == "silu":
            return keras.layers.Activation(_silu, name=layer.name)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    copy.set_weights(model.get_weights())
    return copy


def _check_output(path, format, quantize="none"):
    """`path` as a `Path`, once its format, quantization, suffix and folder are known good."""
    from keras_parnet.files import output_dir

    path = Path(path)
    if format not in FORMATS:
        raise ExportError(f"unknown export format '{format}': use one of {', '.join(FORMATS)}.")
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization '{quantize}': use one of {', '.join(QUANTIZATIONS)}.")
    if quantize != "none" and format != "tflite":
        raise ExportError(f"--quantize {quantize} is for the tflite format; the {format} format is float32.")
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


def export_model(model, path, format, config=None, input="uint8", quantize="none", calibration=None):
    """Writes `model` as a deployable artifact.

    Args:
        model: a Keras model with a fixed input size, usually the fused model
            (`keras_parnet.reparam.reparameterize`).
        path: the file (or, for `savedmodel`, the folder) to write.
        format: one of `FORMATS`.
        config: the run config (`run.json`), or `None` for a bare model that
            takes what `model` takes. With it, the class names go into
            `labels.txt` beside the artifact (and into the SavedModel and ONNX
            files).
        input: with `config`, `"uint8"` for an artifact that takes uint8 images
            and resizes them as the run did in its graph
            (`keras_parnet.preprocessing.with_preprocessing`), or `"float"`
            for one that takes what `model` takes (a run's model: 0-255 pixels).
        quantize: one of `QUANTIZATIONS`; anything but `"none"` is TFLite only.
        calibration: with `quantize="int8"`, images the artifact's input
            takes, `(N, H, W, 3)`, to calibrate the integer ranges on.

    Returns:
        `path` as a `Path`.

    Raises:
        ExportError: unknown format or quantization, dynamic input size,
            `.keras` path without that suffix, a file where a folder goes (or
            the reverse), int8 without calibration images, or the `export`
            extra missing for ONNX.
        keras_parnet.files.OutputError: the output folder cannot be written.
    """
    from keras_parnet.files import write_atomically

    path = _check_output(path, format, quantize)
    _input_spec(model)
    if input not in INPUTS:
        raise ExportError(f"unknown input '{input}': use one of {', '.join(INPUTS)}.")
    raw_input = config is not None and input == "uint8"
    if quantize == "int8" and (calibration is None or not len(calibration)):
        raise ExportError("int8 quantization needs calibration images.")
    if format == "onnx":
        _require_onnx()
    # A failed or interrupted export leaves any earlier artifact at `path` whole.
    write_atomically(
        path, lambda partial: _write(model, partial, format, config, raw_input, quantize, calibration)
    )
    if config is not None:
        labels = "".join(f"{name}\n" for name in config["class_names"])
        write_atomically(path.parent / LABELS_FILE, lambda partial: partial.write_text(labels))
    return path


def _write(model, path, format, config, raw_input, quantize, calibration):
    import tensorflow as tf

    from keras_parnet.preprocessing import with_preprocessing

    def served(model):
        return with_preprocessing(model, config) if raw_input else model

    if format == "keras":
        served(model).save(path)
        return
    # ONNX Runtime has grouped kernels for every fusion it makes: one grouped Conv there.
    traceable = _traceable_copy(model, split_groups=format != "onnx")
    if format == "onnx":
        _write_onnx(served(traceable), path, config)
        return
    if format == "savedmodel":
        _serving_archive(traceable, config, raw_input).write_out(path, verbose=False)
        return
    with tempfile.TemporaryDirectory() as saved_model:
        # From a SavedModel: `from_concrete_functions` gives NaN outputs here (TF 2.21).
        _serving_archive(traceable, config, raw_input, serve_only=True).write_out(saved_model, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=["serve"])
        _set_quantization(converter, quantize, calibration)
        path.write_bytes(converter.convert())


def _serving_archive(model, config, raw_input, serve_only=False):
    """The SavedModel endpoints of `model` (see the module docstring): `serve`
    (the first, so also `serving_default`) takes uint8 images when
    `raw_input`, else what `model` takes; the others come with a `config`
    unless `serve_only`. The network is traced once; every endpoint calls it."""
    import keras
    import tensorflow as tf

    from keras_parnet.preprocessing import RunPreprocessing

    archive = keras.export.ExportArchive()
    archive.track(model)
    float_spec = _input_spec(model)
    serve_float = tf.function(lambda images: model(images, training=False), input_signature=[float_spec])
    if raw_input:
        preprocessing = RunPreprocessing.from_run(config)  # no variables to track
        archive.add_endpoint(
            "serve", lambda images: serve_float(preprocessing(images)), input_signature=[_input_spec(model, "uint8")]
        )
        if serve_only:
            return archive
        archive.add_endpoint("serve_float", serve_float, input_signature=[float_spec])

        def serve_bytes(encoded):
            def decode_and_prepare(data):
                image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
                return preprocessing(image[tf.newaxis])[0]

            images = tf.map_fn(
                decode_and_prepare, encoded, fn_output_signature=tf.TensorSpec(float_spec.shape[1:], tf.float32)
            )
            return serve_float(images)

        archive.add_endpoint(
            "serve_bytes", serve_bytes, input_signature=[tf.TensorSpec((None,), tf.string, name="encoded")]
        )
    else:
        archive.add_endpoint("serve", serve_float, input_signature=[float_spec])
    if config is not None and not serve_only:
        class_names = tf.constant(config["class_names"])
        archive.add_endpoint("labels", tf.function(lambda: class_names), input_signature=[])
    return archive


def _set_quantization(converter, quantize, calibration):
    import tensorflow as tf

    if quantize == "none":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        # Full integer, weights per channel (the converter's default for convolutions).
        converter.representative_dataset = lambda: ([image[np.newaxis]] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


def _write_onnx(model, path, config):
    import tensorflow as tf

    tf2onnx = _require_onnx()
    spec = _input_spec(model, model.inputs[0].dtype)

    @tf.function(input_signature=[spec])
    def serve(image):
        return model(image, training=False)

    onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=[spec], opset=ONNX_OPSET)
    if config is not None:
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = "class_names", json.dumps(config["class_names"])
    path.write_bytes(onnx_model.SerializeToString())


def artifact_format(path):
    """The format of an artifact from its path: a `.keras`, `.tflite` or
    `.onnx` file, or a folder (a SavedModel).

    Raises:
        ExportError: any other path.
    """
    path = Path(path)
    if path.is_dir():
        return "savedmodel"
    for format in ("keras", "tflite", "onnx"):
        if path.suffix == SUFFIXES[format]:
            return format
    raise ExportError(f"cannot tell the format of {path}: pass a .keras, .tflite or .onnx file or a "
                      "SavedModel folder written by keras_parnet.export.")


def _artifact_runner(run, shape, dtype):
    """`run` with the artifact's `input_shape` (a tuple, `None` for a free
    dimension) and `input_dtype` (a numpy dtype) as attributes."""
    run.input_shape = tuple(
        int(dim) if isinstance(dim, (int, np.integer)) and dim >= 0 else None for dim in shape
    )
    run.input_dtype = np.dtype(dtype)
    return run


def load_artifact(path, format=None):
    """Loads an exported artifact with its own runtime.

    Args:
        path: the artifact's file (or SavedModel folder).
        format: one of `FORMATS` (default: `artifact_format(path)`).

    Returns:
        A function `(batch, H, W, 3) array -> probabilities`; the batch is
        cast to the artifact's input type. Its attributes `input_dtype`
        (`numpy.uint8`: pixels, resized inside; `float32`: 0-255 pixels at
        the run's size) and `input_shape` (`(None, H, W, 3)`) say
        what the artifact takes.
    """
    if format is None:
        format = artifact_format(path)
    path = os.fspath(path)
    if format == "keras":
        import keras

        model = keras.saving.load_model(path)  # keras_parnet's layers are registered
        dtype = model.inputs[0].dtype
        return _artifact_runner(lambda batch: np.asarray(model(np.asarray(batch, dtype), training=False)),
                                model.inputs[0].shape, dtype)
    if format == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)  # must outlive the function using its variables
        spec = loaded.signatures["serve"].structured_input_signature[1][INPUT_NAME]
        dtype = spec.dtype.as_numpy_dtype
        return _artifact_runner(lambda batch: loaded.serve(np.asarray(batch, dtype)).numpy(),
                                spec.shape.as_list(), dtype)
    if format == "tflite":
        return _tflite_runner(path)
    if format == "onnx":
        _require_onnx()
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        model_input = session.get_inputs()[0]
        dtype = np.uint8 if model_input.type == "tensor(uint8)" else np.float32
        return _artifact_runner(lambda batch: session.run(None, {model_input.name: np.asarray(batch, dtype)})[0],
                                model_input.shape, dtype)
    raise ExportError(f"unknown export format '{format}': use one of {', '.join(FORMATS)}.")


def _tflite_runner(path):
    import tensorflow as tf

    with warnings.catch_warnings():
        # TF 2.20+ points to the separate ai_edge_litert package; TF's copy still works.
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=path)
    model_input = interpreter.get_input_details()[0]
    input_index, dtype = model_input["index"], model_input["dtype"]
    output_index = interpreter.get_output_details()[0]["index"]

    def run(batch):
        batch = np.asarray(batch, dtype)
        interpreter.resize_tensor_input(input_index, batch.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(input_index, batch)
        interpreter.invoke()
        return interpreter.get_tensor(output_index)

    return _artifact_runner(run, model_input["shape_signature"], dtype)


def max_abs_diff(run, reference, batch):
    """Largest absolute difference between `run(batch)` and `reference`."""
    output = np.asarray(run(batch))
    if output.shape != reference.shape:
        raise ArtifactMismatchError(
            f"outputs of shape {output.shape} where the trained model gives {reference.shape}."
        )
    return float(np.max(np.abs(output - reference)))


def sample_images(image_size, size=CHECK_BATCH_SIZE, seed=0):
    """Random uint8 RGB images `(size, H, W, 3)` at `image_size`."""
    return np.random.default_rng(seed).integers(0, 256, (size, *image_size, 3), dtype=np.uint8)


def pipeline_inputs(images, config):
    """What the trained model is fed for uint8 `images` by the data pipeline:
    each image goes through a PNG file and `keras_parnet.data.load_image`
    (the run's resize; float 0-255 pixels, the model scales them itself)."""
    from PIL import Image

    from keras_parnet.data import load_image

    crop_fraction = config.get("preprocessing", {}).get("crop_fraction")
    with tempfile.TemporaryDirectory() as folder:
        loaded = []
        for index, image in enumerate(images):
            file = os.path.join(folder, f"{index}.png")
            Image.fromarray(image).save(file)
            loaded.append(load_image(file, config["image_size"], crop_fraction))
    return np.stack(loaded)


def calibration_images(dataset_dir, image_size, count=DEFAULT_CALIBRATION_IMAGES, seed=0):
    """Up to `count` images of `dataset_dir/train`, drawn evenly at random
    from every class, as uint8 `(N, H, W, 3)` resized to `image_size` (what a
    uint8 artifact takes)."""
    from keras_parnet.data import load_image, scan_split

    paths, _, _ = scan_split(Path(dataset_dir) / "train")
    order = np.random.default_rng(seed).permutation(len(paths))[:count]
    return np.stack([
        np.round(load_image(paths[index], image_size)).astype(np.uint8) for index in sorted(order)
    ])


def default_output(weights, format, quantize="none"):
    """`<weights folder>/<weights stem>_fused[_<quantize>]<suffix>`, e.g. `best_fused.onnx`."""
    weights = Path(weights)
    stem = weights.name
    for extension in (".weights.h5", ".h5", ".hdf5", ".keras"):
        if stem.endswith(extension):
            stem = stem[: -len(extension)]
            break
    quantized = "" if quantize == "none" else f"_{quantize}"
    return weights.parent / f"{stem}_fused{quantized}{SUFFIXES[format]}"


def export_run(path=None, format="keras", out=None, logs_dir="logs", input="uint8", quantize="none",
               calibration_count=DEFAULT_CALIBRATION_IMAGES, dataset=None, weights=None, out_dir=None):
    """Rebuilds a run's model, fuses it, exports it and checks the artifact.

    Args:
        path: run folder or weights file beside a `run.json` (`None`: the
            newest run in `logs_dir`, or the run beside `weights`).
        format: one of `FORMATS`.
        out: the file (folder for savedmodel) to write (default: in
            `out_dir`, named as `default_output(weights, format, quantize)`).
        logs_dir: where to look for runs when `path` is `None`.
        input: `"uint8"` (the run's resize inside) or `"float"` (0-255
            pixels at the run's size), see the module docstring.
        quantize: one of `QUANTIZATIONS` (tflite only).
        calibration_count: how many training images calibrate int8.
        dataset: the dataset folder whose `train/` calibrates int8 (default:
            the run's, from `run.json`).
        weights: a weights file to export instead of the run's
            `best.weights.h5`.
        out_dir: the folder to write into when `out` is `None` (default:
            the folder of the weights).

    Returns:
        `(out, report)`: the artifact's path and a dict with `fused_diff` and
        `artifact_diff`, the max abs differences of the fused model's and the
        artifact's probabilities from the trained model's, and `top1_agreement`,
        the fraction of the sample whose top class the artifact keeps.

    Raises:
        keras_parnet.runs.RunError: the run cannot be loaded.
        keras_parnet.data.DatasetError: no images to calibrate int8 on.
        ExportError: see `export_model`.
        ArtifactMismatchError: a float artifact off by more than `TOLERANCE`,
            or any artifact giving NaN.
    """
    from keras_parnet.files import output_dir
    from keras_parnet.runs import load_run

    if input not in INPUTS:
        raise ExportError(f"unknown input '{input}': use one of {', '.join(INPUTS)}.")
    # Fail before the slow part.
    if out is not None:
        _check_output(out, format, quantize)
    elif out_dir is not None:
        output_dir(out_dir, "the output folder")
    if format == "onnx":
        _require_onnx()
    model, config = load_run(path if path is not None else weights, weights, logs_dir=logs_dir)
    if out is None:
        out = default_output(config["weights"], format, quantize)
        out = Path(out_dir) / out.name if out_dir is not None else out
    out = _check_output(out, format, quantize)
    images = sample_images(config["image_size"])
    calibration = None
    if quantize == "int8":
        dataset = dataset or config.get("training", {}).get("dataset")
        if not dataset:
            raise ExportError("int8 quantization calibrates on the run's training images and this run "
                              "records no dataset: pass --dataset DIR (a folder with train/).")
        calibration = calibration_images(dataset, config["image_size"], calibration_count)
        if input == "float":
            calibration = pipeline_inputs(calibration, config)
    from keras_parnet.reparam import reparameterize  # imports Keras: after the checks above

    fused = reparameterize(model)
    export_model(fused, out, format, config, input, quantize, calibration)

    batch = pipeline_inputs(images, config)
    reference = np.asarray(model(batch, training=False))
    artifact = load_artifact(out, format)
    report = {
        "fused_diff": max_abs_diff(lambda x: fused(x, training=False), reference, batch),
        "artifact_diff": max_abs_diff(artifact, reference, images if input == "uint8" else batch),
    }
    report["top1_agreement"] = float(np.mean(
        np.argmax(artifact(images if input == "uint8" else batch), -1) == np.argmax(reference, -1)))
    tolerance = TOLERANCE if quantize == "none" else np.inf  # quantized: graded by test accuracy
    if not all(diff <= tolerance for diff in (report["fused_diff"], report["artifact_diff"])):  # NaN fails
        raise ArtifactMismatchError(
            f"{out} differs from the trained model by up to {report['artifact_diff']:.3g} (tolerance "
            f"{TOLERANCE:g}; fused Keras model: {report['fused_diff']:.3g}): do not deploy it."
        )
    return out, report


if __name__ == "__main__":
    from keras_parnet.cli import _common, export

    _common.warn_deprecated("python -m keras_parnet.export", "parnet-export")
    raise SystemExit(export.main())
