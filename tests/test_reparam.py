import keras
import numpy as np
import pytest
from conftest import TINY_WIDTHS, assert_same_outputs, randomize_batch_norm

from keras_parnet import ParNet, conv_bn
from keras_parnet.reparam import reparameterize

pytestmark = pytest.mark.usefixtures("shallow_module")  # conftest.SHALLOW_STREAM_DEPTHS; ParNet-S: test_models

# Default (stride-32) and small-input (stride-8) networks, headless so that the
# whole feature map is compared, and with every kind of head.
CONFIGS = [
    {"include_top": False},
    {"include_top": False, "small_input": True},
    {"classes": 5, "dropout": 0.1, "classifier_activation": None},
    {"include_top": False, "pooling": "max", "small_input": True},
]
# One square and one odd, non-square size.
SIZES = [(64, 64), (45, 77)]
# BatchNormalization layers that no convolution can absorb (see reparam.py).
KEPT_BN_SUFFIXES = ("_identity_bn", "_bn1", "_bn2")


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", CONFIGS, ids=["features", "small", "top", "small-max-pool"])
def test_fused_model_computes_the_same_at_two_sizes(kwargs):
    original = randomize_batch_norm(ParNet(TINY_WIDTHS, **kwargs))
    fused = reparameterize(original)
    assert_same_outputs(original, fused, SIZES)


def test_fused_blocks_are_one_convolution_each():
    original = ParNet(TINY_WIDTHS, classes=3)
    fused = reparameterize(original)
    names = {layer.name for layer in fused.layers}
    original_bns = [
        layer.name for layer in original.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    fused_bns = [
        layer.name for layer in fused.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert sorted(fused_bns) == sorted(n for n in original_bns if n.endswith(KEPT_BN_SUFFIXES))
    assert len(fused_bns) < len(original_bns)
    assert not [name for name in names if "_1x1_" in name]
    assert len(fused.layers) < len(original.layers)

    dense_convs = [layer for layer in original.layers if layer.name.endswith("_dense_conv")]
    for dense in dense_convs:
        conv = fused.get_layer(dense.name)
        assert conv.use_bias and conv.kernel.shape == dense.kernel.shape
        assert (conv.kernel_size, conv.strides, conv.groups) == (
            dense.kernel_size, dense.strides, dense.groups
        )
    assert {fused.get_layer(f"fusion{i}_dense_conv").groups for i in (1, 2)} == {2}
    fused_convs = [layer for layer in fused.layers if isinstance(layer, keras.layers.Conv2D)]
    se_convs = [layer for layer in original.layers if layer.name.endswith("_se_conv")]
    assert len(fused_convs) == len(dense_convs) + len(se_convs)


def test_original_model_is_left_unchanged(tiny_model):
    before = [weight.copy() for weight in tiny_model.get_weights()]
    layer_count = len(tiny_model.layers)
    reparameterize(tiny_model)
    assert len(tiny_model.layers) == layer_count
    for old, new in zip(before, tiny_model.get_weights()):
        np.testing.assert_array_equal(old, new)


@pytest.mark.slow
@pytest.mark.parametrize("filename", ["model.keras", "model.weights.h5"])
def test_model_loaded_from_a_checkpoint_fuses(tiny_model, tmp_path, filename):
    path = tmp_path / filename
    if filename.endswith(".keras"):
        tiny_model.save(path)
        loaded = keras.saving.load_model(path)
    else:
        tiny_model.save_weights(path)
        loaded = ParNet(TINY_WIDTHS, classes=3, weights=path)
    assert_same_outputs(tiny_model, reparameterize(loaded), [(45, 77)])


def test_any_conv_bn_pair_folds():
    inputs = keras.Input((33, 33, 3))
    x = conv_bn(inputs, 8, 3, strides=2, name="stem")
    x = conv_bn(x, 8, 1, name="head")
    original = randomize_batch_norm(keras.Model(inputs, x), seed=3)
    fused = reparameterize(original)
    assert [type(layer).__name__ for layer in fused.layers] == [
        "InputLayer", "ZeroPadding2D", "Conv2D", "Conv2D"
    ]
    assert_same_outputs(original, fused, [(33, 33)])


def test_models_with_nothing_to_fold_are_refused(tiny_model):
    inputs = keras.Input((8,))
    with pytest.raises(ValueError, match="no convolution"):
        reparameterize(keras.Model(inputs, keras.layers.Dense(2)(inputs)))
    images = keras.Input((16, 16, 3))
    conv = keras.layers.Conv2D(4, 3, use_bias=False)(images)
    with pytest.raises(ValueError, match="no convolution"):  # the conv output is needed as is
        reparameterize(keras.Model(images, [conv, keras.layers.BatchNormalization()(conv)]))
    with pytest.raises(ValueError, match="no convolution"):
        reparameterize(reparameterize(tiny_model))
    with pytest.raises(ValueError, match="functional"):
        reparameterize(keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)]))
