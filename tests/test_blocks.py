"""The Keras blocks against a numpy reference written from the official
PyTorch code (NCHW thinking, explicit padding), independent of keras_parnet."""

import keras
import numpy as np
import pytest
from conftest import infer, randomize_batch_norm

from keras_parnet import ChannelShuffle, InterleaveChannels, fusion_block, parnet_block

EPS = 1e-5


def np_conv(x, kernel, stride=1, pad=0, groups=1):
    """Cross-correlation, x (H, W, C), kernel (kh, kw, C/groups, O), zero padding."""
    x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    kh, kw, cin_g, out = kernel.shape
    out_g = out // groups
    height = (x.shape[0] - kh) // stride + 1
    width = (x.shape[1] - kw) // stride + 1
    result = np.zeros((height, width, out))
    for g in range(groups):
        xg = x[:, :, g * cin_g:(g + 1) * cin_g]
        kg = kernel[:, :, :, g * out_g:(g + 1) * out_g]
        for i in range(height):
            for j in range(width):
                patch = xg[i * stride:i * stride + kh, j * stride:j * stride + kw]
                result[i, j, g * out_g:(g + 1) * out_g] = np.tensordot(patch, kg, axes=3)
    return result


def np_bn(x, gamma, beta, mean, var):
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta


def np_avgpool2_padded(x):
    """2x2/2 average pooling of x zero-padded to even size (torch AvgPool2d(2, 2)
    on even sizes)."""
    x = np.pad(x, ((0, x.shape[0] % 2), (0, x.shape[1] % 2), (0, 0)))
    return (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def weights_of(model, name):
    return [np.asarray(w, dtype="float64") for w in model.get_layer(name).get_weights()]


def gate(model, name, x, groups):
    pooled = x.mean(axis=(0, 1), keepdims=True)
    return sigmoid(np_conv(pooled, weights_of(model, f"{name}_se_conv")[0], groups=groups))


def np_parnet_block(model, name, x):
    c = x.shape[-1]
    dense = np_bn(np_conv(x, weights_of(model, f"{name}_dense_conv")[0], pad=1),
                  *weights_of(model, f"{name}_dense_bn"))
    one = np_bn(np_conv(x, weights_of(model, f"{name}_1x1_conv")[0]),
                *weights_of(model, f"{name}_1x1_bn"))
    identity = np_bn(x, *weights_of(model, f"{name}_identity_bn"))
    sse = identity * gate(model, name, identity, 1)
    assert dense.shape == one.shape == sse.shape == x.shape[:2] + (c,)
    return silu(dense + one + sse)


def np_fusion_block(model, name, x1, x2, filters, stride):
    a = np_bn(x1, *weights_of(model, f"{name}_bn1"))
    b = np_bn(x2, *weights_of(model, f"{name}_bn2"))
    c = a.shape[-1]
    x = np.empty(a.shape[:2] + (2 * c,))
    x[..., 0::2], x[..., 1::2] = a, b
    dense = np_bn(np_conv(x, weights_of(model, f"{name}_dense_conv")[0], stride=stride, pad=1, groups=2),
                  *weights_of(model, f"{name}_dense_bn"))
    pooled = np_avgpool2_padded(x) if stride == 2 else x
    one = np_bn(np_conv(pooled, weights_of(model, f"{name}_1x1_conv")[0], groups=2),
                *weights_of(model, f"{name}_1x1_bn"))
    out = silu((dense + one) * 2 * gate(model, name, x, 2))
    # torch channel_shuffle: view(groups, C/groups) -> transpose.
    return out.reshape(out.shape[:2] + (2, filters // 2)).swapaxes(-1, -2).reshape(out.shape)


def block_model(build, shapes, seed):
    inputs = [keras.Input(shape) for shape in shapes]
    model = keras.Model(inputs, build(*inputs))
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in model.get_weights()])
    return randomize_batch_norm(model, seed)


@pytest.mark.parametrize("height, width", [(8, 8), (7, 5)])
def test_parnet_block_matches_numpy(height, width):
    model = block_model(lambda x: parnet_block(x, name="b"), [(height, width, 6)], seed=1)
    x = np.random.default_rng(2).normal(size=(1, height, width, 6))
    expected = np_parnet_block(model, "b", x[0])
    actual = infer(model, x)[0]
    np.testing.assert_allclose(actual, expected, atol=1e-4)


@pytest.mark.parametrize("height, width, strides", [(8, 8, 2), (7, 9, 2), (8, 8, 1), (7, 9, 1)])
def test_fusion_block_matches_numpy(height, width, strides):
    filters = 10
    model = block_model(
        lambda a, b: fusion_block(a, b, filters, strides=strides, name="f"),
        [(height, width, 4), (height, width, 4)],
        seed=3,
    )
    rng = np.random.default_rng(4)
    x1, x2 = rng.normal(size=(2, 1, height, width, 4))
    expected = np_fusion_block(model, "f", x1[0], x2[0], filters, strides)
    actual = infer(model, [x1, x2])[0]
    assert actual.shape == expected.shape == (-(-height // strides), -(-width // strides), filters)
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_channel_shuffle_matches_torch_permutation():
    x = np.arange(2 * 3 * 3 * 12, dtype="float32").reshape(2, 3, 3, 12)
    out = keras.ops.convert_to_numpy(ChannelShuffle(3)(x))
    # channel g * 4 + j goes to j * 3 + g
    expected = np.empty_like(x)
    for g in range(3):
        for j in range(4):
            expected[..., j * 3 + g] = x[..., g * 4 + j]
    np.testing.assert_array_equal(out, expected)


def test_interleave_channels_alternates_inputs():
    a = np.random.rand(2, 5, 3, 4).astype("float32")
    b = np.random.rand(2, 5, 3, 4).astype("float32")
    out = keras.ops.convert_to_numpy(InterleaveChannels()([a, b]))
    np.testing.assert_array_equal(out[..., 0::2], a)
    np.testing.assert_array_equal(out[..., 1::2], b)


def test_channel_shuffle_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="cannot be split into 4 groups"):
        ChannelShuffle(4)(keras.Input((8, 8, 6)))
