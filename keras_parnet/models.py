"""ParNet models with the `keras.applications` builder contract.

Reference:
    Goyal, Bochkovskiy, Deng, Koltun. "Non-deep Networks". arXiv 2110.07641.
    Official code: imankgoyal/NonDeepNetworks (`simplenet_impl/simpnet.py`).

Layout (layer-name prefixes in brackets; the official module names after `=`):

    image -> [downsample1] 64, s2 -> [downsample2] w0, s2 = inits.0
          -> [downsample3] w1, s2 = inits.1 -> [downsample4] w2, s2 = inits.2
    stream 1: downsample2 output -> [stream1_block1..4]
              -> [stream1_downsample] w1, s2 = downsamples_2.0
    stream 2: downsample3 output -> [stream2_block1..5]
              -> [fusion1] (stream 2, stream1_downsample) -> w2, s2 = downsamples_2.1
    stream 3: downsample4 output -> [stream3_block1..5]
              -> [fusion2] (stream 3, fusion1) -> w2, s1 = combine.0-2
    -> [downsample5] w3, s2 = combine.3 -> [avg_pool] -> [top_dropout] -> [predictions]

The output stride is 32 (7x7 features at 224 px). With `small_input=True`
(the paper's CIFAR setting) the first two blocks keep stride 1, so the output
stride is 8 (4x4 features at 32 px).
"""

import dataclasses
import io
import logging
import os
import zipfile

import keras
from keras import layers

from keras_parnet import compat, configs
from keras_parnet.blocks import downsampling_block, fusion_block, repvgg_block, stream
from keras_parnet.configs import MIN_INPUT_SIZE, MODEL_CONFIGS

# The classifier: the one layer a partial load may leave at its fresh initialization.
HEAD_LAYER = "predictions"
# The layers whose output channels are the widths (w0, w1, w2, w3).
WIDTH_LAYERS = ("downsample2_dense_conv", "downsample3_dense_conv", "downsample4_dense_conv",
                "downsample5_dense_conv")

logger = logging.getLogger(__name__)

BASE_DOCSTRING = """Instantiates the {size} ParNet architecture.

Reference:
- [Non-deep Networks](https://arxiv.org/abs/2110.07641) (Goyal et al., 2021)

Widths (w0, w1, w2, w3) = {widths}; streams of 4, 5 and 5 ParNet blocks;
{params} trainable parameters with the 1000-class top (unfused form).
Inputs are channels-last RGB, any size from 32 px: floats in [0, 1] by
default, or pixels in [0, 255] with `include_preprocessing=True`.

Args:
    include_top: whether to include the pooling and dense classifier.
    weights: `None` (random initialization) or the path of a weights file
        (`.weights.h5`, legacy `.h5` as written by Keras `save_weights`, or
        `.keras`). With `include_top=False` the file's classifier is
        ignored, so a converted 1000-class file gives the backbone for a
        new head.
    input_tensor: optional Keras tensor to use as the image input.
    input_shape: optional `(height, width, 3)`; `None` accepts any size.
    pooling: with `include_top=False`, `None` for the 4D feature map,
        `"avg"` or `"max"` for a 2D pooled output.
    classes: number of classes, with `include_top=True`.
    classifier_activation: activation of the top layer (`None` for logits).
    dropout: dropout rate before the classifier (official: {dropout}).
    small_input: keep stride 1 in the first two blocks (CIFAR-style,
        32x32 inputs; output stride 8 instead of 32).
    activation: block non-linearity, `"silu"` as in the paper (`"relu"`
        for the converted official checkpoints).
    name: model name.
    include_preprocessing: start the model with the layers that prepare
        0-255 RGB pixels (`Rescaling(1/255)`, then `Normalization` when
        `normalization` is given), as `keras.applications` models do; they
        hold no weights. Default `False`: the model takes [0, 1] floats, as
        these builders always have (with `True`, such inputs would be scaled
        again without any error). A run's model (`keras_parnet.runs.load_run`)
        is built with `True`.
    normalization: `None`, or `(mean, std)` per channel of the [0, 1]
        pixels, applied after rescaling with `include_preprocessing=True`;
        the official ImageNet weights use
        `((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))`.
    skip_mismatch: with `weights`, leave the classifier at its fresh
        initialization when its shape differs from the file's (another
        `classes`), as `load_matching_weights` does: e.g. the 1000-class
        converted weights with `classes=2`. Every other weight must still
        match the file. Default `False`: the file must fit exactly.

Returns:
    A `keras.Model`.
"""


def _check_arguments(widths, include_top, weights, input_shape, pooling, classes, dropout,
                     include_preprocessing, normalization):
    if normalization is not None:
        if not include_preprocessing:
            raise ValueError("`normalization` needs `include_preprocessing=True`: it is applied by "
                             "the model's preprocessing layers.")
        if len(normalization) != 2 or any(len(values) != 3 for values in normalization):
            raise ValueError(f"`normalization` must be (mean, std) with 3 values each, got {normalization!r}.")
        if any(float(value) <= 0 for value in normalization[1]):
            raise ValueError(f"`normalization` std values must be positive, got {normalization[1]!r}.")
    if len(widths) != 4 or any(int(w) < 1 for w in widths):
        raise ValueError(f"`widths` must be 4 positive integers (w0, w1, w2, w3), got {widths}.")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"`weights` must be None or the path of a weights file, got {weights!r}.")
    if weights == "imagenet":
        raise ValueError(
            "No ImageNet weights can be downloaded for ParNet: pass weights=None or the "
            "path of a weights file."
        )
    if include_top and (not isinstance(classes, int) or classes < 1):
        raise ValueError(f"`classes` must be an integer of at least 1, got {classes!r}.")
    if not include_top and pooling not in (None, "avg", "max"):
        raise ValueError(f"`pooling` must be None, 'avg' or 'max', got {pooling!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}.")
    if input_shape is None:
        return
    if len(input_shape) != 3:
        raise ValueError(
            f"`input_shape` must be (height, width, channels), got {tuple(input_shape)}."
        )
    if input_shape[-1] != 3:
        raise ValueError(
            f"`input_shape` must have 3 (RGB) channels last, got {tuple(input_shape)}; "
            "convert images to RGB and use channels_last."
        )
    for size in input_shape[:2]:
        if size is not None and size < MIN_INPUT_SIZE:
            raise ValueError(
                f"`input_shape` {tuple(input_shape)} is below the {MIN_INPUT_SIZE} px "
                f"minimum; resize images to at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}."
            )


def load_weights_file(model, path):
    """Loads `.weights.h5`, legacy `.h5` or `.keras` weights into `model`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file does not fit the model (other architecture or
            class count), with the file and model named.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if not path.endswith((".h5", ".hdf5", ".keras")):
        raise ValueError(
            f"unsupported weights file {path}: use .weights.h5, .h5 or .keras."
        )
    try:
        model.load_weights(path)
    except (ValueError, KeyError, OSError) as error:
        reason = " ".join(str(error).split())[:300]
        raise ValueError(
            f"weights file {path} does not fit model '{model.name}' (output shape "
            f"{model.output_shape}): {reason}"
        ) from None


class WeightsMismatchError(ValueError):
    """A weights file of another architecture than the model it is loaded into."""


@dataclasses.dataclass(frozen=True)
class PartialLoad:
    """What `load_matching_weights` did: `loaded` of the model's `total`
    weight tensors came from the file `path`; the layers in `reinitialised`
    (`{name: (model shapes, file shapes or None when absent)}`) kept their
    fresh initialization."""

    path: str
    loaded: int
    total: int
    reinitialised: dict

    def summary(self):
        """One line: how many tensors loaded and what was re-initialised."""
        line = f"loaded {self.loaded} of {self.total} weight tensors from {self.path}"
        for name, (model_shapes, file_shapes) in self.reinitialised.items():
            found = f"the file's {_shapes_text(file_shapes)}" if file_shapes else "none in the file"
            line += f"; re-initialised {name} ({_shapes_text(model_shapes)} instead of {found})"
        return line


def _shapes_text(shapes):
    return " + ".join("x".join(map(str, shape)) for shape in shapes)


def _read_weights_file(path):
    """`(arrays, layout)`: the tensors of a `.weights.h5`, `.keras` or legacy
    `.h5` file as `{key: [arrays in the layer's variable order]}`, and
    whether the keys are Keras 3 paths (`"keras3"`, see
    `compat.weights_file_keys`) or layer names (`"legacy"`)."""
    import h5py

    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            source = io.BytesIO(archive.read("model.weights.h5"))
    else:
        source = path
    with h5py.File(source, "r") as file:
        if "layers" in file and "layer_names" not in file.attrs:
            groups = file["layers"]
            return {key: [groups[key]["vars"][str(index)][()] for index in range(len(groups[key]["vars"]))]
                    for key in groups if "vars" in groups[key]}, "keras3"
        root = file["model_weights"] if "model_weights" in file else file
        arrays = {}
        for name in root.attrs.get("layer_names", []):
            name = name.decode() if isinstance(name, bytes) else name
            group = root[name]
            weight_names = [weight.decode() if isinstance(weight, bytes) else weight
                            for weight in group.attrs.get("weight_names", [])]
            if weight_names:
                arrays[name] = [group[weight][()] for weight in weight_names]
        return arrays, "legacy"


def _widths_of(shapes_by_layer):
    """The widths `(w0, w1, w2, w3)` a ParNet's tensors show, or `None`."""
    kernels = [shapes_by_layer.get(name) for name in WIDTH_LAYERS]
    if any(not shapes or len(shapes[0]) != 4 for shapes in kernels):
        return None
    return tuple(int(shapes[0][-1]) for shapes in kernels)


def load_matching_weights(model, path):
    """Loads every tensor of a weights file that matches `model`'s by name
    and shape, for fine-tuning: a classifier (`predictions`) of another
    class count keeps its fresh initialization, and tensors the model lacks
    (the file's classifier, for a model built with `include_top=False`) are
    ignored. Reads `.weights.h5`, `.keras` and legacy `.h5` files. Logs the
    `PartialLoad.summary` line on the `keras_parnet` logger.

    Returns:
        A `PartialLoad`.

    Raises:
        FileNotFoundError: the file does not exist.
        WeightsMismatchError: a weight outside the classifier is missing from
            the file or has another shape (another architecture), naming the
            file's and the model's widths.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if not path.endswith((".h5", ".hdf5", ".keras")):
        raise ValueError(f"unsupported weights file {path}: use .weights.h5, .h5 or .keras.")
    try:
        arrays, layout = _read_weights_file(path)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(f"cannot read weights file {path}: {' '.join(str(error).split())[:200]}") from None
    keys = (compat.weights_file_keys(model) if layout == "keras3"
            else {layer.name: layer.name for layer in model.layers})
    matched, mismatched = {}, {}
    for layer in model.layers:
        if not layer.weights:
            continue
        current = {}
        layer.save_own_variables(current)
        model_shapes = [tuple(current[str(index)].shape) for index in range(len(current))]
        found = arrays.get(keys[layer.name])
        file_shapes = [tuple(array.shape) for array in found] if found is not None else None
        if file_shapes == model_shapes:
            matched[layer] = found
        else:
            mismatched[layer.name] = (model_shapes, file_shapes)
    loaded = sum(map(len, matched.values()))
    total = loaded + sum(len(model_shapes) for model_shapes, _ in mismatched.values())
    backbone = [name for name in mismatched if name != HEAD_LAYER]
    if backbone:
        file_widths = _widths_of({name: [tuple(a.shape) for a in arrays.get(keys[name], [])]
                                  for name in WIDTH_LAYERS if name in keys})
        model_widths = _widths_of({name: [tuple(weight.shape) for weight in model.get_layer(name).weights]
                                   for name in WIDTH_LAYERS if name in keys})
        held = (f"a ParNet of widths {file_widths}" if file_widths
                else "no ParNet of this layout")
        raise WeightsMismatchError(
            f"weights file {path} holds {held}, not the model's (widths {model_widths}): "
            f"{loaded} of {total} tensors match, {len(backbone)} layers outside the "
            f"classifier do not (first: {backbone[0]}); build the model with the file's widths"
            + (f" (train: --widths {' '.join(map(str, file_widths))})" if file_widths else "")
            + " or start from the run folder holding the file")
    for layer, found in matched.items():
        layer.load_own_variables({str(index): array for index, array in enumerate(found)})
    report = PartialLoad(path, loaded, total, mismatched)
    logger.info("%s", report.summary())
    return report


def preprocessing_layers(x, normalization=None):
    """0-255 RGB pixels -> the network's input: `Rescaling(1/255)` and, with
    `normalization=(mean, std)`, `Normalization` (constants, no weights)."""
    x = layers.Rescaling(1 / 255, name="rescaling")(x)
    if normalization is not None:
        mean, std = ([float(value) for value in values] for values in normalization)
        x = layers.Normalization(mean=mean, variance=[value**2 for value in std], name="normalization")(x)
    return x


def ParNet(
    widths,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    dropout=0.0,
    small_input=False,
    activation="silu",
    name="parnet",
    include_preprocessing=False,
    normalization=None,
    skip_mismatch=False,
):
    """Instantiates a ParNet of any widths.

    Args:
        widths: `(w0, w1, w2, w3)`: the widths of the three streams and of the
            last downsampling block.
        See `parnet_s` for the other arguments.

    Returns:
        A `keras.Model`.
    """
    if input_tensor is not None and input_shape is None:
        input_shape = tuple(input_tensor.shape[1:])
    _check_arguments(widths, include_top, weights, input_shape, pooling, classes, dropout,
                     include_preprocessing, normalization)
    w0, w1, w2, w3 = (int(w) for w in widths)

    if input_shape is None:
        input_shape = (None, None, 3)
    if input_tensor is None:
        img_input = layers.Input(shape=input_shape)
    elif not keras.backend.is_keras_tensor(input_tensor):
        img_input = layers.Input(tensor=input_tensor, shape=input_shape)
    else:
        img_input = input_tensor

    x = img_input
    if include_preprocessing:
        x = preprocessing_layers(x, normalization)
    stem_strides = 1 if small_input else 2
    x = repvgg_block(x, min(64, w0), stem_strides, activation, "downsample1")
    stream1_in = repvgg_block(x, w0, stem_strides, activation, "downsample2")
    stream2_in = downsampling_block(stream1_in, w1, activation=activation, name="downsample3")
    stream3_in = downsampling_block(stream2_in, w2, activation=activation, name="downsample4")

    x = stream(stream1_in, configs.STREAM_DEPTHS[0], activation, "stream1")
    x = downsampling_block(x, w1, activation=activation, name="stream1_downsample")
    y = stream(stream2_in, configs.STREAM_DEPTHS[1], activation, "stream2")
    x = fusion_block(y, x, w2, strides=2, activation=activation, name="fusion1")
    y = stream(stream3_in, configs.STREAM_DEPTHS[2], activation, "stream3")
    x = fusion_block(y, x, w2, strides=1, activation=activation, name="fusion2")
    x = downsampling_block(x, w3, activation=activation, name="downsample5")

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name="top_dropout")(x)
        # float32 even under a mixed precision policy: softmax and loss need its range.
        x = layers.Dense(classes, activation=classifier_activation, dtype="float32", name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else img_input
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        if skip_mismatch or not include_top:
            load_matching_weights(model, weights)
        else:
            load_weights_file(model, weights)
    return model


def _builder(model_name, params):
    config = MODEL_CONFIGS[model_name]

    def builder(
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        dropout=config["dropout"],
        small_input=False,
        activation="silu",
        name=model_name,
        include_preprocessing=False,
        normalization=None,
        skip_mismatch=False,
    ):
        return ParNet(
            config["widths"],
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            dropout=dropout,
            small_input=small_input,
            activation=activation,
            name=name,
            include_preprocessing=include_preprocessing,
            normalization=normalization,
            skip_mismatch=skip_mismatch,
        )

    builder.__name__ = builder.__qualname__ = model_name
    builder.__doc__ = BASE_DOCSTRING.format(
        size=model_name.split("_")[1].upper(), params=params, **config
    )
    return builder


parnet_s = _builder("parnet_s", "20,983,848")
parnet_m = _builder("parnet_m", "38,953,256")
parnet_l = _builder("parnet_l", "60,180,008")
parnet_xl = _builder("parnet_xl", "93,176,168")

BUILDERS = {"s": parnet_s, "m": parnet_m, "l": parnet_l, "xl": parnet_xl}
