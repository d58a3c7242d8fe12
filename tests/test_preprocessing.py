"""The run's preprocessing inside the model: 0-255 pixels in, the same
predictions as the bare network given numpy-normalised pixels."""

import numpy as np
import pytest
from conftest import TINY_WIDTHS, randomize_batch_norm

from keras_parnet import runs

pytestmark = pytest.mark.usefixtures("shallow_module")  # conftest.SHALLOW_STREAM_DEPTHS; ParNet-S: test_models

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CONVERTED = {"rescale": 1 / 255, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "crop_fraction": 0.875,
             "interpolation": "bilinear"}


def _config(preprocessing=None):
    return runs.run_config("ParNet", {"widths": TINY_WIDTHS}, 32, ["a", "b", "c"], preprocessing, command="test")


def _pixels(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (2, 32, 32, 3)).astype("float32")


def _numpy_normalized(pixels, preprocessing):
    """What the pipeline fed the bare network before preprocessing moved into it."""
    inputs = pixels / 255.0
    if "mean" in preprocessing:
        inputs = (inputs - np.float32(preprocessing["mean"])) / np.float32(preprocessing["std"])
    return inputs.astype("float32")


def _bare_and_preprocessed(config):
    bare = randomize_batch_norm(runs.build_model(config, include_preprocessing=False))
    preprocessed = runs.build_model(config, include_preprocessing=True)
    preprocessed.set_weights(bare.get_weights())
    return bare, preprocessed


@pytest.mark.slow
@pytest.mark.parametrize("preprocessing", [None, CONVERTED], ids=["default", "converted"])
def test_model_on_pixels_equals_bare_network_on_normalized_pixels(preprocessing):
    config = _config(preprocessing)
    bare, preprocessed = _bare_and_preprocessed(config)
    pixels = _pixels()
    expected = np.asarray(bare(_numpy_normalized(pixels, config["preprocessing"]), training=False))
    np.testing.assert_allclose(np.asarray(preprocessed(pixels, training=False)), expected, atol=1e-5)
    first_layers = ["rescaling", "normalization"] if preprocessing else ["rescaling"]
    assert [layer.name for layer in preprocessed.layers[1:]][:len(first_layers)] == first_layers
    assert ("normalization" in {layer.name for layer in preprocessed.layers}) == bool(preprocessing)


@pytest.mark.slow
def test_without_preprocessing_is_the_bare_network_with_the_same_parameters():
    config = _config(CONVERTED)
    bare, preprocessed = _bare_and_preprocessed(config)
    assert bare.count_params() == preprocessed.count_params()
    assert len(bare.weights) == len(preprocessed.weights)
    assert not {"rescaling", "normalization"} & {layer.name for layer in bare.layers}
    assert {"rescaling", "normalization"} <= {layer.name for layer in preprocessed.layers}


@pytest.mark.slow
def test_old_run_folder_loads_with_preprocessing(tmp_path):
    """A run saved before preprocessing moved into the model: weights written
    from the bare network, run.json as convert.py wrote it."""
    config = _config(CONVERTED)
    bare = randomize_batch_norm(runs.build_model(config, include_preprocessing=False), seed=1)
    bare.save_weights(tmp_path / runs.BEST_WEIGHTS)
    runs.save_run(tmp_path, config)
    model, _ = runs.load_run(tmp_path, include_preprocessing=True)
    pixels = _pixels(1)
    expected = np.asarray(bare(_numpy_normalized(pixels, CONVERTED), training=False))
    np.testing.assert_allclose(np.asarray(model(pixels, training=False)), expected, atol=1e-5)


@pytest.mark.slow
def test_fused_model_keeps_the_preprocessing():
    from keras_parnet.reparam import reparameterize

    _, preprocessed = _bare_and_preprocessed(_config(CONVERTED))
    fused = reparameterize(preprocessed)
    assert [layer.name for layer in fused.layers[1:3]] == ["rescaling", "normalization"]
    assert len(fused.layers) < len(preprocessed.layers)
    pixels = _pixels(2)
    np.testing.assert_allclose(np.asarray(fused(pixels, training=False)),
                               np.asarray(preprocessed(pixels, training=False)), atol=1e-4)


@pytest.mark.parametrize("preprocessing, message", [
    ({"rescale": 1.0}, "rescale 1.0 is not supported"),
    ({"rescale": 1 / 255, "interpolation": "bicubic"}, "interpolation 'bicubic' is not supported"),
    ({"rescale": 1 / 255, "mean": [0.5, 0.5]}, "must be 3 values each"),
    ({"rescale": 1 / 255, "gamma": 2.2}, "gamma is not supported"),
])
def test_unsupported_preprocessing_is_refused(tmp_path, preprocessing, message):
    runs.save_run(tmp_path, _config(preprocessing))
    with pytest.raises(runs.RunError, match=message):
        runs.read_run(tmp_path)


def test_builder_refuses_normalization_without_preprocessing():
    from keras_parnet import ParNet

    with pytest.raises(ValueError, match="needs `include_preprocessing=True`"):
        ParNet(TINY_WIDTHS, input_shape=(32, 32, 3), normalization=(IMAGENET_MEAN, IMAGENET_STD))


@pytest.mark.slow
def test_bare_keras_file_saved_before_takes_pixels_through_predict(tmp_path):
    """A full .keras model saved without preprocessing layers (and no run.json)
    takes [0, 1] floats; the predictor puts a Rescaling in front of it."""
    from keras_parnet import ParNet
    from keras_parnet.predict import load_predictor

    bare = randomize_batch_norm(ParNet(TINY_WIDTHS, input_shape=(32, 32, 3), classes=3))
    bare.save(tmp_path / "model.keras")
    model, _ = load_predictor(weights=tmp_path / "model.keras", class_names=["a", "b", "c"], fuse=False)
    pixels = _pixels(3)
    np.testing.assert_allclose(np.asarray(model(pixels, training=False)),
                               np.asarray(bare(pixels / 255, training=False)), atol=1e-5)
