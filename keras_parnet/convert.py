"""Converts the official PyTorch ParNet checkpoints to Keras weights.

The official repository (imankgoyal/NonDeepNetworks) released ImageNet
checkpoints of its `SimpNet` (timm model `simplenet_repvgg`) with these
configurations (`imagenet/models/*.yaml`):

    --model  planes (w0, w1, w2, w3)  dropout  config (.yaml, .pth.tar)
    s        92, 192, 384, 1280       0.0      planes_92_192_384_1280_num_blocks_5_6_6_1_sebv_13
    m        128, 256, 512, 2048      0.0      planes_128_256_512_2048_num_blocks_5_6_6_1_sebv_13
    l        160, 320, 640, 2560      0.1      planes_160_320_640_2560_..._dropout_lin
    xl       200, 400, 800, 3200      0.1      reg_se13[_cosine]_planes_200_400_800_3200_...

The 352 px ParNet-XL fine-tune (`ft2_..._is_320_...pth.tar`) is an xl
checkpoint too: convert it with `--image-size 352`.

ParNet-S was released with 92 channels in its first stream, not the paper's 96
(`parnet_s`), so these presets, not the `parnet_*` builders, describe the
checkpoints; `--widths` converts any other configuration.

Activation: the paper uses SiLU, but the released checkpoints were trained with
ReLU. Their yaml files set `additional_branches: [[swish]]`, a list holding a
list, and the official block picks its activation with
`'swish' in additional_branches`, which is False for a nested list, so every
block got `nn.ReLU()`. `activation="relu"` is therefore the default here;
`"silu"` converts checkpoints of networks built with `additional_branches:
[swish]`.

Names: the Keras layers are named after their place in the network
(`keras_parnet.models`), so every official tensor is mapped by name
(`keras_weight_name`) and checked by shape: each official tensor is used once,
each Keras weight is filled, or a `ValueError` lists what did not match.
Convolution kernels go from PyTorch's `(out, in / groups, kh, kw)` to Keras'
`(kh, kw, in / groups, out)`, Linear weights from `(out, in)` to `(in, out)`.

Official preprocessing (timm `_cfg_224`): resize the shorter side to
224 / 0.875 = 256 px (bilinear), centre-crop 224, scale to [0, 1], subtract the
ImageNet mean and divide by its std (`OFFICIAL_PREPROCESSING`, written to
the run folder's `run.json` by `write_run`).

Usage (the command line is `parnet-convert`, `keras_parnet.cli.convert`):
    parnet-convert planes_92_192_384_1280_num_blocks_5_6_6_1_sebv_13.pth.tar \\
        --model s --out logs/parnet_s_imagenet
    model, config = keras_parnet.load_run("logs/parnet_s_imagenet")

Needs torch: `pip install keras-parnet[convert]`.
"""

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from keras_parnet import configs
from keras_parnet.files import write_atomically

# The `parnet_*` builders' table, keyed by `--model`, but for ParNet-S's released widths.
OFFICIAL_CONFIGS = {name[len("parnet_"):]: dict(config) for name, config in configs.MODEL_CONFIGS.items()}
OFFICIAL_CONFIGS["s"]["widths"] = (92, 192, 384, 1280)
OFFICIAL_ACTIVATION = "relu"
OFFICIAL_IMAGE_SIZE = 224
OFFICIAL_PREPROCESSING = {
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "crop_fraction": 0.875,
    "interpolation": "bilinear",
}
INSTALL_HINT = "pip install keras-parnet[convert]"
CHECKPOINT_HINT = ("pass an official PyTorch checkpoint (.pth/.pth.tar): a file written by "
                   "torch.save holding a state_dict")
# torch.save writes a zip archive (PyTorch >= 1.6) or, in the legacy format, a pickle.
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"


class ConversionError(ValueError):
    """A checkpoint that cannot be read or does not fit the Keras model."""


def _official_blocks():
    """Official block module -> Keras block name (see `keras_parnet.models`)."""
    blocks = {
        "inits.0.0": "downsample1",
        "inits.0.1": "downsample2",
        "inits.1": "downsample3",
        "inits.2": "downsample4",
        "downsamples_2.0": "stream1_downsample",
        "downsamples_2.1.2": "fusion1",
        "combine.2": "fusion2",
        "combine.3": "downsample5",
    }
    for stream, depth in enumerate(configs.STREAM_DEPTHS):  # the builders' depths
        for block in range(depth):
            blocks[f"streams.{stream}.{block}"] = f"stream{stream + 1}_block{block + 1}"
    return blocks


# Module inside an official block (`RepVGGOur.block` is the `RepVGGBlock`)
# -> Keras layer suffix and layer kind.
BRANCHES = {
    "block.rbr_dense.conv": ("dense_conv", "conv"),
    "block.rbr_dense.bn": ("dense_bn", "bn"),
    "block.rbr_1x1.conv": ("1x1_conv", "conv"),  # stride 1
    "block.rbr_1x1.bn": ("1x1_bn", "bn"),
    "block.rbr_1x1.1.conv": ("1x1_conv", "conv"),  # stride 2: rbr_1x1.0 is the AvgPool2d
    "block.rbr_1x1.1.bn": ("1x1_bn", "bn"),
    "block.rbr_identity": ("identity_bn", "bn"),
    "block.se.cvsig.conv": ("se_conv", "conv"),
}

# Official modules outside the blocks: the fusions' MultiBatchNorm2d and the head.
OTHER_LAYERS = {
    "downsamples_2.1.0.b1": ("fusion1_bn1", "bn"),
    "downsamples_2.1.0.b2": ("fusion1_bn2", "bn"),
    "combine.0.b1": ("fusion2_bn1", "bn"),
    "combine.0.b2": ("fusion2_bn2", "bn"),
    "head.fc": ("predictions", "dense"),
}

# Official parameter -> Keras weight, per layer kind; None: not kept by Keras.
PARAMETERS = {
    "conv": {"weight": "kernel"},
    "bn": {
        "weight": "gamma",
        "bias": "beta",
        "running_mean": "moving_mean",
        "running_var": "moving_variance",
        "num_batches_tracked": None,
    },
    "dense": {"weight": "kernel", "bias": "bias"},
}

# The official module -> (Keras layer, kind) table.
OFFICIAL_LAYERS = {
    **{
        f"{module}.{branch}": (f"{block}_{suffix}", kind)
        for module, block in _official_blocks().items()
        for branch, (suffix, kind) in BRANCHES.items()
    },
    **OTHER_LAYERS,
}

# Tensors that give the widths and classes of a checkpoint (output channels).
WIDTH_TENSORS = (
    "inits.0.1.block.rbr_dense.conv.weight",
    "inits.1.block.rbr_dense.conv.weight",
    "inits.2.block.rbr_dense.conv.weight",
    "combine.3.block.rbr_dense.conv.weight",
)
CLASSES_TENSOR = "head.fc.weight"


def keras_weight_name(official_name):
    """Maps an official tensor name to `(keras_layer, keras_weight, kind)`.

    `"streams.0.1.block.rbr_dense.conv.weight"` ->
    `("stream1_block2_dense_conv", "kernel", "conv")`.

    Returns:
        The triple, or `None` for a tensor Keras does not keep
        (`num_batches_tracked`).

    Raises:
        KeyError: the name is not part of the official network.
    """
    module, _, parameter = official_name.rpartition(".")
    layer, kind = OFFICIAL_LAYERS[module]
    weight = PARAMETERS[kind][parameter]
    return None if weight is None else (layer, weight, kind)


def _to_keras_layout(value, kind, weight):
    """Reorders a PyTorch tensor to Keras' layout (unchanged if its rank is wrong)."""
    if kind == "conv" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)  # (out, in/g, kh, kw) -> (kh, kw, in/g, out)
    if kind == "dense" and weight == "kernel" and value.ndim == 2:
        return value.T
    return value


def _listing(label, items, limit=5):
    shown = ", ".join(items[:limit])
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return f"{len(items)} {label}: {shown}{more}"


def load_state_dict(model, state_dict):
    """Fills a built ParNet with the tensors of an official `state_dict`.

    Nothing is assigned unless every official tensor maps to exactly one Keras
    weight of the same shape and every Keras weight is filled.

    Args:
        model: a ParNet `keras.Model` of the checkpoint's widths and classes.
        state_dict: official tensor name (without `module.`) -> array
            (numpy arrays or CPU torch tensors).

    Returns:
        `model`.

    Raises:
        ConversionError (a `ValueError`): listing missing, unexpected and
            mis-shaped tensors.
    """
    targets = {
        f"{layer.name}/{variable.name}": variable
        for layer in model.layers
        for variable in layer.weights
    }
    values, sources, unexpected, mismatched = {}, {}, [], []
    for name, tensor in state_dict.items():
        try:
            mapped = keras_weight_name(name)
        except KeyError:
            unexpected.append(name)
            continue
        if mapped is None:
            continue
        layer, weight, kind = mapped
        target = f"{layer}/{weight}"
        if target not in targets:
            unexpected.append(name)
            continue
        if target in sources:
            unexpected.append(f"{name} (fills {target} like {sources[target]})")
            continue
        sources[target] = name
        value = _to_keras_layout(np.asarray(tensor, dtype="float32"), kind, weight)
        expected = tuple(targets[target].shape)
        if value.shape != expected:
            mismatched.append(f"{name} {value.shape} vs {target} {expected}")
            continue
        values[target] = value
    missing = [target for target in targets if target not in sources]
    problems = [
        _listing(label, items)
        for label, items in (
            ("Keras weights missing from the checkpoint", missing),
            ("unexpected checkpoint tensors", unexpected),
            ("shape mismatches (Keras layout)", mismatched),
        )
        if items
    ]
    if problems:
        raise ConversionError(
            f"checkpoint does not fit model '{model.name}': " + "; ".join(problems)
        )
    for target, value in values.items():
        targets[target].assign(value)
    return model


def official_config(model_name):
    """The released configuration (`widths`, `dropout`) of `'s'`, `'m'`, `'l'` or `'xl'`."""
    if model_name not in OFFICIAL_CONFIGS:
        raise ConversionError(
            f"unknown model '{model_name}': expected one of {', '.join(OFFICIAL_CONFIGS)}."
        )
    return OFFICIAL_CONFIGS[model_name]


def build_official(model_name, widths=None, activation=OFFICIAL_ACTIVATION, classes=1000,
                   **kwargs):
    """A Keras ParNet laid out like a released checkpoint.

    Args:
        model_name: `'s'`, `'m'`, `'l'` or `'xl'`: widths and dropout of the
            released configuration.
        widths: `(w0, w1, w2, w3)` replacing the preset widths.
        activation: block activation (`'relu'` for the released checkpoints).
        classes: classifier outputs.
        **kwargs: further `ParNet` arguments (`weights=` a converted file,
            `input_shape`, `classifier_activation`, ...).

    Returns:
        A `keras.Model`.
    """
    from keras_parnet.models import ParNet

    config = official_config(model_name)
    kwargs.setdefault("dropout", config["dropout"])
    kwargs.setdefault("name", f"parnet_{model_name}")
    return ParNet(widths or config["widths"], activation=activation, classes=classes, **kwargs)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ModuleNotFoundError(
            f"converting PyTorch checkpoints needs torch: {INSTALL_HINT}"
        ) from None
    return torch


def _unwrap(checkpoint, use_ema, path):
    """The state_dict inside a training checkpoint (timm, or `{'model': ...}`)."""
    keys = ("state_dict_ema",) if use_ema else ("state_dict", "model", "state_dict_ema")
    if isinstance(checkpoint, Mapping):
        for key in keys:
            if isinstance(checkpoint.get(key), Mapping):
                return checkpoint[key]
    if use_ema:
        raise ConversionError(f"{path} holds no 'state_dict_ema' (EMA weights): leave out --ema.")
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(
            f"{path} holds a {type(checkpoint).__name__}, not a state_dict of tensors."
        )
    return checkpoint


def read_checkpoint(path, use_ema=False):
    """Reads an official checkpoint as official name -> float32 numpy array.

    Accepts a bare `state_dict` or a training checkpoint nesting it under
    `state_dict` (`state_dict_ema` with `use_ema`) or `model`, with or without
    DataParallel's `module.` prefix. Loads with `weights_only=True`: no code
    from the file runs.

    Raises:
        ConversionError: a missing file, a file torch.save did not write, or
            one that torch cannot read.
        ModuleNotFoundError: no torch.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(
            f"checkpoint {path} {'is a folder' if path.is_dir() else 'does not exist'}: {CHECKPOINT_HINT}."
        )
    torch = _import_torch()
    with path.open("rb") as file:
        head = file.read(len(ZIP_MAGIC))
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        raise ConversionError(f"{path} is not a PyTorch checkpoint (neither a zip nor a pickle "
                              f"file): {CHECKPOINT_HINT}.")
    try:
        # timm training checkpoints also pickle their argparse options.
        import argparse

        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for unreadable files
        message = " ".join(str(error).split())
        refused = re.search(r"Unsupported global: GLOBAL [\w.]+", message)
        reason = refused.group(0) if refused else message[:300]
        raise ConversionError(f"cannot read {path} as a PyTorch checkpoint: {reason}") from None
    arrays = {}
    for name, tensor in _unwrap(checkpoint, use_ema, path).items():
        if not isinstance(tensor, torch.Tensor):
            raise ConversionError(
                f"{path}: '{name}' is a {type(tensor).__name__}, not a tensor; "
                "pass a model state_dict."
            )
        name = name[len("module."):] if name.startswith("module.") else name
        arrays[name] = tensor.detach().to(torch.float32).numpy()
    return arrays


def checkpoint_layout(state_dict):
    """`(widths, classes)` of an official state_dict, `None` for what it lacks."""
    try:
        widths = tuple(int(state_dict[name].shape[0]) for name in WIDTH_TENSORS)
    except KeyError:
        widths = None
    classes = state_dict.get(CLASSES_TENSOR)
    return widths, None if classes is None else int(classes.shape[0])


def _check_layout(state_dict, model_name, widths, classes):
    """Names the right `--model`/`--widths`/`--classes` before building a model."""
    found_widths, found_classes = checkpoint_layout(state_dict)
    if found_widths is not None and found_widths != tuple(widths):
        presets = [name for name, config in OFFICIAL_CONFIGS.items()
                   if config["widths"] == found_widths]
        fix = (
            f"model '{presets[0]}' (--model {presets[0]})" if presets
            else f"widths={found_widths} (--widths {' '.join(map(str, found_widths))})"
        )
        raise ConversionError(
            f"the checkpoint is a ParNet of widths {found_widths}, not {tuple(widths)} "
            f"(model '{model_name}'): convert it with {fix}."
        )
    if found_classes is not None and found_classes != classes:
        raise ConversionError(
            f"the checkpoint has {found_classes} classes, not {classes}: convert it with "
            f"classes={found_classes} (--classes {found_classes})."
        )


def convert_checkpoint(checkpoint_path, model_name, widths=None,
                       activation=OFFICIAL_ACTIVATION, classes=1000, use_ema=False,
                       **model_kwargs):
    """Builds the Keras ParNet of an official checkpoint and loads its weights.

    Args:
        checkpoint_path: official `.pth` / `.pth.tar` file.
        model_name: `'s'`, `'m'`, `'l'` or `'xl'` (released configurations).
        widths: `(w0, w1, w2, w3)` replacing the preset widths.
        activation: `'relu'` (the released checkpoints) or `'silu'`.
        classes: classifier outputs of the checkpoint.
        use_ema: take `state_dict_ema` from a timm training checkpoint.
        **model_kwargs: further `ParNet` arguments (e.g. `classifier_activation`).

    Returns:
        The `keras.Model` with the checkpoint's weights.

    Raises:
        ConversionError: unreadable checkpoint, or one that does not fit.
        ModuleNotFoundError: torch is not installed.
    """
    widths = tuple(int(w) for w in (widths or official_config(model_name)["widths"]))
    state_dict = read_checkpoint(checkpoint_path, use_ema)
    _check_layout(state_dict, model_name, widths, classes)
    model = build_official(model_name, widths, activation, classes, **model_kwargs)
    return load_state_dict(model, state_dict)


def write_run(run_dir, model, model_name, widths, activation, image_size, class_names, checkpoint_path):
    """Writes a run folder for a converted `model`: `run_dir/best.weights.h5`
    and `run_dir/run.json` with the official preprocessing, so that
    `keras_parnet.runs.load_run` (and predict, evaluate, export) use it.

    Returns:
        `run_dir` as a `Path`.
    """
    from keras_parnet import runs
    from keras_parnet.files import output_dir

    run_dir = output_dir(run_dir, "the run folder")
    write_atomically(run_dir / runs.BEST_WEIGHTS, model.save_weights)
    runs.write_run(
        run_dir,
        "ParNet",
        {"widths": list(widths), "dropout": official_config(model_name)["dropout"], "activation": activation},
        image_size,
        class_names,
        preprocessing=OFFICIAL_PREPROCESSING,
        converted_from=str(checkpoint_path),
    )
    return run_dir


if __name__ == "__main__":
    from keras_parnet.cli import _common, convert

    _common.warn_deprecated("python -m keras_parnet.convert", "parnet-convert")
    raise SystemExit(convert.main())
