"""Structural reparameterization: ParNet blocks folded for inference.

At inference a BatchNormalization is an affine map per channel, so a bias-free
convolution followed by BN is one convolution with a bias. In a ParNet block
the 3x3 conv-BN and the 1x1 conv-BN read the same input and are summed, so both
fold into ONE 3x3 convolution (RepVGG; the official `fuse_repvgg_block`):

- 1x1 at stride 1: its kernel goes to the centre of the 3x3 kernel.
- 1x1 after 2x2 average pooling at stride 2: its kernel, divided by 4, goes to
  the lower-right 2x2 of the 3x3 kernel. The strided 3x3 pads one pixel on
  every side and the pooling pads the bottom/right with zeros, so the pooled
  window is exactly that corner of the 3x3 window, odd sizes included.

What stays: the identity BN of a ParNet block (its output is also what the SSE
gate looks at, so no convolution can absorb it; the official code keeps
`rbr_identity` too), the SE gates, channel shuffles and the fusion blocks'
input BNs (a BN in front of a zero-padded convolution cannot fold exactly: the
padded zeros would not be shifted by the BN).

The fused model is for inference: it computes what the original computes in
inference mode, with fewer layers, and training it would train another network.
"""

import keras
import numpy as np
from keras import layers

from keras_parnet import compat

__all__ = ["reparameterize", "fold_batch_norm"]


def _graph(model):
    """`(producers, consumers)`: the layer making each tensor and the layers
    reading it (`None` for the model's outputs), keyed by `id(tensor)`."""
    producers, consumers = {}, {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"reparameterize: model '{model.name}' nests model '{layer.name}'; "
                "pass the ParNet model itself (as the keras_parnet builders make it)."
            )
        if compat.call_count(layer) > 1:
            raise ValueError(
                f"reparameterize: layer '{layer.name}' is shared (called "
                f"{compat.call_count(layer)} times); only unshared layers can be folded."
            )
        producers[id(layer.output)] = layer
        if not isinstance(layer, layers.InputLayer):
            for tensor in keras.tree.flatten(layer.input):
                consumers.setdefault(id(tensor), []).append(layer)
    for tensor in keras.tree.flatten(model.outputs):
        consumers.setdefault(id(tensor), []).append(None)
    return producers, consumers


def _only_consumer(layer, consumers):
    """The one layer reading `layer`'s output, or None."""
    readers = consumers.get(id(layer.output), [])
    return readers[0] if len(readers) == 1 else None


def _foldable_conv(bn, producers, consumers):
    """The Conv2D whose output only `bn` reads, or None."""
    conv = producers.get(id(bn.input))
    if (
        type(conv) is layers.Conv2D
        and conv.data_format == "channels_last"
        and conv.activation is keras.activations.linear
        and bn.axis in (-1, 3)
        and _only_consumer(conv, consumers) is bn
    ):
        return conv
    return None


def _branch(conv, producers, consumers):
    """Describes a conv-BN branch: `(source, strides, layers_before_conv)`.

    `source` is the tensor the branch reads before any padding or pooling;
    `strides` is its effective stride; `layers_before_conv` are the padding
    (and pooling) layers only this branch uses. Returns None for a branch
    that is not a ParNet 3x3 or (pooled) 1x1 branch.
    """
    kernel_size, strides = tuple(conv.kernel_size), tuple(conv.strides)
    if tuple(conv.dilation_rate) != (1, 1):
        return None
    if kernel_size == (3, 3):
        if strides == (1, 1) and conv.padding == "same":
            return conv.input, 1, []
        pad = producers.get(id(conv.input))
        if (
            strides == (2, 2)
            and conv.padding == "valid"
            and isinstance(pad, layers.ZeroPadding2D)
            and tuple(map(tuple, pad.padding)) == ((1, 1), (1, 1))
            and _only_consumer(pad, consumers) is conv
        ):
            return pad.input, 2, [pad]
        return None
    if kernel_size != (1, 1) or strides != (1, 1):
        return None
    pool = producers.get(id(conv.input))
    if not isinstance(pool, layers.AveragePooling2D):
        return conv.input, 1, []
    pad = producers.get(id(pool.input))
    if (
        tuple(pool.pool_size) == (2, 2)
        and tuple(pool.strides) == (2, 2)
        and pool.padding == "valid"
        and _only_consumer(pool, consumers) is conv
        and isinstance(pad, layers.ZeroPadding2D)
        and tuple(map(tuple, pad.padding)) == ((0, 1), (0, 1))
        and _only_consumer(pad, consumers) is pool
    ):
        return pad.input, 2, [pad, pool]
    return None


def fold_batch_norm(conv, bn):
    """Kernel and bias of `bn(conv(x))` as one convolution (BN in inference mode).

    Returns:
        `(kernel, bias)` in float64, kernel shaped like `conv.kernel`
        `(kh, kw, in_channels / groups, filters)`, bias `(filters,)`.
    """
    kernel = keras.ops.convert_to_numpy(conv.kernel).astype("float64")
    filters = kernel.shape[-1]

    def weight(variable, default):
        if variable is None:
            return np.full(filters, default)
        return keras.ops.convert_to_numpy(variable).astype("float64")

    bias = weight(conv.bias if conv.use_bias else None, 0.0)
    mean = weight(bn.moving_mean, 0.0)
    variance = weight(bn.moving_variance, 1.0)
    gamma = weight(bn.gamma if bn.scale else None, 1.0)
    beta = weight(bn.beta if bn.center else None, 0.0)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    return kernel * scale, (bias - mean) * scale + beta


def _pointwise_as_3x3(kernel, strides):
    """A folded 1x1 kernel as the 3x3 kernel computing the same thing.

    At stride 1 the 1x1 kernel is the centre tap. After 2x2 average pooling
    it covers the lower-right 2x2 of the strided 3x3 window, a quarter each.
    """
    expanded = np.zeros((3, 3, *kernel.shape[2:]), kernel.dtype)
    if strides == 1:
        expanded[1, 1] = kernel[0, 0]
    else:
        expanded[1:, 1:] = kernel[0, 0] / 4
    return expanded


def _plan(model):
    """What to do with each layer: the new weights of folded convolutions and
    the layers whose outputs vanish (BNs folded away, merged 1x1 branches)."""
    producers, consumers = _graph(model)
    folded = {}  # conv -> (kernel, bias)
    passthrough = set()  # folded BNs: output = input
    dropped = set()  # merged 1x1 branch layers: output = nothing
    conv_of_bn = {}
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            conv = _foldable_conv(layer, producers, consumers)
            if conv is not None:
                folded[conv] = fold_batch_norm(conv, layer)
                passthrough.add(layer)
                conv_of_bn[layer] = conv

    for add in model.layers:
        if not isinstance(add, layers.Add):
            continue
        branches = {}  # (source, strides, groups, filters) -> {kernel size: (bn, conv, extra)}
        for tensor in add.input:
            bn = producers.get(id(tensor))
            if bn not in conv_of_bn or _only_consumer(bn, consumers) is not add:
                continue
            conv = conv_of_bn[bn]
            branch = _branch(conv, producers, consumers)
            if branch is None:
                continue
            source, strides, before = branch
            key = (id(source), strides, conv.groups, conv.filters)
            branches.setdefault(key, {})[conv.kernel_size[0]] = (bn, conv, before)
        for key, by_size in branches.items():
            if set(by_size) != {1, 3}:
                continue
            dense = by_size[3][1]
            pointwise_bn, pointwise, before = by_size[1]
            kernel, bias = folded.pop(pointwise)
            dense_kernel, dense_bias = folded[dense]
            folded[dense] = (
                dense_kernel + _pointwise_as_3x3(kernel, key[1]),
                dense_bias + bias,
            )
            passthrough.discard(pointwise_bn)
            dropped.update([pointwise_bn, pointwise, *before])
    return folded, passthrough, dropped


def reparameterize(model):
    """The inference form of a ParNet model, with its branches folded.

    Every ParNet block's 3x3 conv-BN and 1x1 conv-BN (average-pooled at stride 2)
    become one 3x3 convolution with a bias, named after the block's 3x3
    convolution (`<block>_dense_conv`); any other conv-BN pair becomes its
    convolution with a bias. Everything else is copied with its weights.
    The input model is not changed.

    Args:
        model: a functional ParNet model (any builder, size, head; e.g. from
            `keras_parnet.parnet_s(...)`, `keras.saving.load_model` or
            `keras_parnet.runs.load_run`).

    Returns:
        A new `keras.Model` with the same inputs and outputs (in inference mode,
        within float32 rounding) and fewer layers.

    Raises:
        ValueError: the model is not a functional model or has nothing to fold.
    """
    if not compat.is_functional(model):
        raise ValueError(
            f"reparameterize needs a functional keras.Model, got {type(model).__name__}."
        )
    folded, passthrough, dropped = _plan(model)
    if not folded:
        raise ValueError(
            f"reparameterize: model '{model.name}' has no convolution followed by "
            "BatchNormalization to fold; is it a ParNet model?"
        )
    folded_by_name = {conv.name: weights for conv, weights in folded.items()}
    passthrough_names = {layer.name for layer in passthrough}
    dropped_names = {layer.name for layer in dropped}

    def clone_layer(layer):
        if layer.name in passthrough_names | dropped_names:
            return layer  # never called, see call_layer
        config = layer.get_config()
        if layer.name in folded_by_name:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call_layer(layer, *args, **kwargs):
        if layer.name in dropped_names:
            return None
        if layer.name in passthrough_names:
            return args[0]
        if isinstance(layer, layers.Add):
            inputs = [tensor for tensor in args[0] if tensor is not None]
            if len(inputs) == 1:
                return inputs[0]
            return layer(inputs, *args[1:], **kwargs)
        return layer(*args, **kwargs)

    fused = keras.models.clone_model(
        model, clone_function=clone_layer, call_function=call_layer
    )
    for layer in fused.layers:
        if layer.name in folded_by_name:
            kernel, bias = folded_by_name[layer.name]
            layer.set_weights([kernel.astype("float32"), bias.astype("float32")])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return fused

