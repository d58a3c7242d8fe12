import math

import keras
import numpy as np
import pytest
from conftest import TINY_WIDTHS, assert_same_outputs, infer, randomize_batch_norm

from keras_parnet import ParNet, convert, parnet_s
from keras_parnet.reparam import reparameterize

# The minimum, ImageNet's 224 and a non-square size (the forward pass adds an odd one).
SIZES = [(32, 32), (64, 64), (224, 224), (200, 320)]


def trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.slow
@pytest.mark.parametrize(
    "size, expected",
    [
        ("s", 20_983_848),
        ("m", 38_953_256),
        ("l", 60_180_008),
        ("xl", 93_176_168),
    ],
)
def test_trainable_parameters_match_official(named_model, size, expected):
    model = named_model(size)  # 1000 classes; the parameter count does not depend on the input size
    assert trainable_params(model) == expected
    # Output stride 32: 7x7 at 224.
    features = keras.Model(model.inputs, model.get_layer("downsample5_act").output)
    assert tuple(features.compute_output_shape((1, 224, 224, 3))[1:3]) == (7, 7)


@pytest.mark.slow
def test_preprocessing_layers_add_no_trainable_parameter():
    model = parnet_s(include_preprocessing=True, normalization=(convert.OFFICIAL_PREPROCESSING["mean"],
                                                                convert.OFFICIAL_PREPROCESSING["std"]))
    assert trainable_params(model) == 20_983_848
    assert {weight.path.rsplit("/", 1)[-1] for weight in model.non_trainable_weights} == {
        "moving_mean", "moving_variance"}


@pytest.mark.slow
def test_fused_parnet_s_has_the_paper_parameter_count():
    original = randomize_batch_norm(parnet_s(input_shape=(32, 32, 3), classes=1000, classifier_activation=None))
    fused = reparameterize(original)
    assert_same_outputs(original, fused, [(32, 32)])
    assert round(trainable_params(fused) / 1e6, 1) == 19.2  # Goyal et al., Table 1 (fused ParNet-S)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["s", "m", "l", "xl"])
def test_named_builders_run_at_any_size(named_model, size):
    model = named_model(size)
    for image_size in (32, 64):
        probabilities = infer(model, np.random.rand(1, image_size, image_size, 3))
        assert probabilities.shape == (1, 1000)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("small_input", [False, True])
def test_forward_pass_at_every_size(small_input):
    """One model of any input size (the builders' default), at each size: its
    shape inference and its output agree on the stride."""
    model = ParNet(TINY_WIDTHS, include_top=False, small_input=small_input)
    stride = 8 if small_input else 32
    for height, width in SIZES + [(33, 47)]:
        expected = (math.ceil(height / stride), math.ceil(width / stride), TINY_WIDTHS[3])
        assert tuple(model.compute_output_shape((2, height, width, 3))[1:]) == expected
        features = infer(model, np.random.rand(2, height, width, 3))
        assert features.shape == (2, *expected)
        assert np.isfinite(features).all()


@pytest.mark.slow
def test_dynamic_input_model_accepts_several_sizes(tiny_model):
    for height, width in SIZES:
        assert infer(tiny_model, np.random.rand(1, height, width, 3)).shape == (1, 3)


@pytest.mark.slow
@pytest.mark.parametrize(
    "pooling, shape",
    [(None, (None, 3, 4, TINY_WIDTHS[3])), ("avg", (None, TINY_WIDTHS[3])), ("max", (None, TINY_WIDTHS[3]))],
)
def test_headless_output_shapes(pooling, shape):
    model = ParNet(TINY_WIDTHS, include_top=False, pooling=pooling, input_shape=(96, 128, 3))
    assert model.output_shape == shape
    assert infer(model, np.random.rand(1, 96, 128, 3)).shape == (1, *shape[1:])


@pytest.mark.slow
def test_max_and_avg_pooling_differ_as_numpy_says():
    inputs = np.random.rand(2, 64, 96, 3).astype("float32")
    features = ParNet(TINY_WIDTHS, include_top=False, input_shape=(64, 96, 3))
    feature_map = infer(features, inputs)
    for pooling, reduce in (("avg", np.mean), ("max", np.max)):
        pooled = ParNet(TINY_WIDTHS, include_top=False, pooling=pooling, input_shape=(64, 96, 3))
        pooled.set_weights(features.get_weights())
        np.testing.assert_allclose(
            infer(pooled, inputs), reduce(feature_map, axis=(1, 2)), atol=1e-5
        )


@pytest.mark.slow
def test_official_structure_and_no_lambda(named_model):
    model = named_model("s")
    names = [layer.name for layer in model.layers]
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    stream_blocks = {name.split("_")[0] + "_" + name.split("_")[1] for name in names if "_block" in name}
    assert sorted(stream_blocks) == sorted(
        [f"stream1_block{i}" for i in range(1, 5)]
        + [f"stream2_block{i}" for i in range(1, 6)]
        + [f"stream3_block{i}" for i in range(1, 6)]
    )
    # Stem widths: 3 -> min(64, w0) -> w0 -> w1 -> w2; fusions use 2 groups.
    assert model.get_layer("downsample1_dense_conv").filters == 64
    assert model.get_layer("downsample4_dense_conv").filters == 384
    assert model.get_layer("fusion1_dense_conv").groups == 2
    assert model.get_layer("fusion2_dense_conv").strides == (1, 1)
    assert model.get_layer("fusion1_dense_conv").strides == (2, 2)
    bn = model.get_layer("stream1_block1_dense_bn")
    assert (bn.momentum, bn.epsilon) == (0.9, 1e-5)
    conv_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert not any(layer.use_bias for layer in conv_layers)


def test_input_tensor_is_used():
    image = keras.Input((64, 64, 3), name="image")
    model = ParNet(TINY_WIDTHS, input_tensor=image, classes=4)
    assert model.inputs[0] is image
    assert model.output_shape == (None, 4)


def test_classifier_activation_none_gives_logits():
    model = ParNet(TINY_WIDTHS, classes=5, classifier_activation=None, input_shape=(32, 32, 3))
    logits = infer(model, np.random.rand(4, 32, 32, 3))
    assert not np.allclose(logits.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classes": 0}, "`classes` must be an integer of at least 1"),
        ({"input_shape": (16, 64, 3)}, "below the 32 px minimum"),
        ({"input_shape": (64, 64, 1)}, "must have 3 (RGB) channels"),
        ({"input_shape": (3, 64, 64)}, "must have 3 (RGB) channels"),
        ({"input_shape": (64, 64)}, "must be (height, width, channels)"),
        ({"include_top": False, "pooling": "mean"}, "`pooling` must be None, 'avg' or 'max'"),
        ({"weights": "imagenet"}, "No ImageNet weights"),
        ({"dropout": 1.0}, "`dropout` must be in [0, 1)"),
    ],
)
def test_impossible_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError) as error:
        parnet_s(**kwargs)
    assert message in str(error.value)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        ParNet(TINY_WIDTHS, weights=str(tmp_path / "nope.weights.h5"))
