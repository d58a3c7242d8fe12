"""ParNet building blocks (Goyal et al., "Non-deep Networks", arXiv 2110.07641).

Every block follows the official RepVGG-style unit
(imankgoyal/NonDeepNetworks, `simplenet_impl/repvgg.py`): a 3x3 conv-BN branch
(`<name>_dense_*`), a 1x1 conv-BN branch (`<name>_1x1_*`, after 2x2 average
pooling when the stride is 2) and, only when input and output channels match at
stride 1, an identity BN branch (`<name>_identity_bn`) gated by the SSE.
Convolutions have no bias; BatchNorm uses PyTorch's momentum 0.1 / eps 1e-5.

All tensors are channels-last. Layer names record the place of each weight in
the network, so that weights can be mapped by name (conversion, fusion).
"""

from keras import layers

from keras_parnet.layers import ChannelShuffle, InterleaveChannels

# PyTorch BatchNorm2d defaults (momentum 0.1 there is 0.9 here).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def batch_norm(x, name):
    """BatchNormalization with the official (PyTorch) momentum and epsilon."""
    return layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
    )(x)


def conv_bn(x, filters, kernel_size, strides=1, groups=1, name=None):
    """Bias-free convolution followed by BatchNormalization.

    A 3x3 convolution at stride 2 pads one pixel on every side, as PyTorch's
    `padding=1` does, so the output is `ceil(H / 2) x ceil(W / 2)` for any
    input size and the kernel is aligned as in the official network.

    Args:
        x: input tensor `(batch, H, W, C)`.
        filters: output channels.
        kernel_size: 1 or 3.
        strides: 1 or 2.
        groups: convolution groups; must divide `C` and `filters`.
        name: prefix for `<name>_conv` and `<name>_bn` (and `<name>_pad`).

    Returns:
        Tensor `(batch, H / strides, W / strides, filters)`.
    """
    padding = "same"
    if strides > 1 and kernel_size > 1:
        x = layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        groups=groups,
        use_bias=False,
        name=f"{name}_conv",
    )(x)
    return batch_norm(x, f"{name}_bn")


def _pointwise_branch(x, filters, strides, groups, name):
    """The 1x1 conv-BN branch, after 2x2 average pooling when strided.

    The pooling input is zero-padded by one row and column at the bottom/right
    so that pooling gives `ceil(H / 2)` like the padded 3x3 branch, odd sizes
    included, and pads with zeros exactly as the 3x3 conv does (which is what
    lets the two branches fold into one 3x3 kernel).
    """
    if strides > 1:
        x = layers.ZeroPadding2D(((0, 1), (0, 1)), name=f"{name}_1x1_pool_pad")(x)
        x = layers.AveragePooling2D(2, name=f"{name}_1x1_pool")(x)
    return conv_bn(x, filters, 1, groups=groups, name=f"{name}_1x1")


def _se_gate(x, filters, groups, name):
    """`sigmoid(conv1x1(GAP(x)))`, shape `(batch, 1, 1, filters)`."""
    x = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    return layers.Conv2D(
        filters,
        1,
        groups=groups,
        use_bias=False,
        activation="sigmoid",
        name=f"{name}_se_conv",
    )(x)


def sse(x, name):
    """Skip-Squeeze-Excitation: `BN(x) * sigmoid(conv1x1(GAP(BN(x))))`.

    Args:
        x: input tensor `(batch, H, W, C)`.
        name: block prefix.

    Returns:
        Tensor of the input's shape.
    """
    normed = batch_norm(x, f"{name}_identity_bn")
    gate = _se_gate(normed, x.shape[-1], 1, name)
    return layers.Multiply(name=f"{name}_se_multiply")([normed, gate])


def parnet_block(x, activation="silu", name=None):
    """The ParNet (RepVGG-SSE) block that makes up the streams.

    `act(conv3x3_bn(x) + conv1x1_bn(x) + sse(x))`, channels and size unchanged.

    Args:
        x: input tensor `(batch, H, W, C)`.
        activation: the non-linearity (`"silu"` in the paper).
        name: block prefix.

    Returns:
        Tensor `(batch, H, W, C)`.
    """
    channels = x.shape[-1]
    out = layers.Add(name=f"{name}_add")(
        [
            conv_bn(x, channels, 3, name=f"{name}_dense"),
            _pointwise_branch(x, channels, 1, 1, name),
            sse(x, name),
        ]
    )
    return layers.Activation(activation, name=f"{name}_act")(out)


def downsampling_block(x, filters, strides=2, groups=1, activation="silu", name=None):
    """ParNet downsampling block.

    `act((conv3x3_bn(x) + conv1x1_bn(avgpool(x))) * 2 * sigmoid(conv1x1(GAP(x))))`,
    the gate convolution using the block's groups; a grouped block ends with a
    channel shuffle.

    Args:
        x: input tensor `(batch, H, W, C)`.
        filters: output channels.
        strides: 2 to halve the size (rounding up), 1 to only change channels.
        groups: convolution groups (2 in fusion blocks).
        activation: the non-linearity.
        name: block prefix.

    Returns:
        Tensor `(batch, ceil(H / strides), ceil(W / strides), filters)`.
    """
    if strides == 1 and x.shape[-1] == filters:
        raise ValueError(
            f"downsampling_block '{name}': stride 1 with {filters} input and output "
            "channels is a ParNet block; use parnet_block instead."
        )
    out = layers.Add(name=f"{name}_add")(
        [
            conv_bn(x, filters, 3, strides, groups, name=f"{name}_dense"),
            _pointwise_branch(x, filters, strides, groups, name),
        ]
    )
    gate = layers.Rescaling(2.0, name=f"{name}_se_scale")(
        _se_gate(x, filters, groups, name)
    )
    out = layers.Multiply(name=f"{name}_se_multiply")([out, gate])
    out = layers.Activation(activation, name=f"{name}_act")(out)
    if groups > 1:
        out = ChannelShuffle(groups, name=f"{name}_shuffle")(out)
    return out


def fusion_block(x1, x2, filters, strides=2, activation="silu", name=None):
    """ParNet fusion block: merges a stream with the previous fusion output.

    Each input gets its own BatchNormalization; the two are concatenated with
    their channels interleaved (`x1[0], x2[0], x1[1], ...`) and passed through
    a downsampling block with `groups=2`.

    Args:
        x1: stream output `(batch, H, W, C)`.
        x2: the other branch, same shape as `x1`.
        filters: output channels.
        strides: 2 or 1.
        activation: the non-linearity.
        name: block prefix.

    Returns:
        Tensor `(batch, ceil(H / strides), ceil(W / strides), filters)`.
    """
    x1 = batch_norm(x1, f"{name}_bn1")
    x2 = batch_norm(x2, f"{name}_bn2")
    x = InterleaveChannels(name=f"{name}_interleave")([x1, x2])
    return downsampling_block(x, filters, strides, 2, activation, name)


def stream(x, depth, activation="silu", name=None):
    """A stream: `depth` ParNet blocks at constant width and resolution.

    Blocks are named `<name>_block1` ... `<name>_block<depth>`.
    """
    for index in range(1, depth + 1):
        x = parnet_block(x, activation, name=f"{name}_block{index}")
    return x


def repvgg_block(x, filters, strides, activation="silu", name=None):
    """The official unit as the stem uses it: a ParNet block where it has an
    identity branch (same channels, stride 1), else a downsampling block."""
    if strides == 1 and x.shape[-1] == filters:
        return parnet_block(x, activation, name)
    return downsampling_block(x, filters, strides, 1, activation, name)
