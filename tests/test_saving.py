import h5py
import keras
import numpy as np
import pytest
from conftest import TINY_WIDTHS, infer, randomize_batch_norm

from keras_parnet import ParNet, compat

pytestmark = pytest.mark.usefixtures("shallow_module")  # see conftest.SHALLOW_STREAM_DEPTHS


def fresh_tiny(**kwargs):
    return ParNet(TINY_WIDTHS, classes=3, name="tiny", **kwargs)


@pytest.fixture
def inputs():
    return np.random.default_rng(0).random((2, 64, 96, 3)).astype("float32")


def save_legacy_h5_weights(model, path):
    with h5py.File(path, "w") as f:  # the Keras 2 `save_weights("x.h5")` layout
        compat.save_legacy_h5_weights(model, f)


def load_into_fresh_tiny(path):
    return fresh_tiny(weights=str(path))


SAVE_AND_RELOAD = {  # file name: (save, reload); full models reload without custom_objects
    "model.keras": (keras.Model.save, keras.saving.load_model),
    "tiny.weights.h5": (keras.Model.save_weights, load_into_fresh_tiny),
    "legacy.h5": (save_legacy_h5_weights, load_into_fresh_tiny),
    "legacy_model.h5": (keras.Model.save, keras.saving.load_model),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", SAVE_AND_RELOAD)
def test_every_format_reloads_the_same_model(tiny_model, inputs, tmp_path, name):
    assert tiny_model.get_layer("fusion1_shuffle").__class__.__name__ == "ChannelShuffle"
    save, reload = SAVE_AND_RELOAD[name]
    save(tiny_model, tmp_path / name)
    diff = np.abs(infer(reload(tmp_path / name), inputs) - infer(tiny_model, inputs))
    assert diff.max() < 1e-6


@pytest.mark.slow
def test_class_count_mismatch_is_a_clear_error(tiny_model, tmp_path):
    path = tmp_path / "tiny.weights.h5"
    tiny_model.save_weights(path)
    with pytest.raises(ValueError, match=r"does not fit model 'tiny' \(output shape \(None, 5\)\)"):
        ParNet(TINY_WIDTHS, classes=5, name="tiny", weights=str(path))


def test_wrong_kind_of_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="unsupported weights file"):
        fresh_tiny(weights=str(path))
    corrupt = tmp_path / "corrupt.weights.h5"
    corrupt.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="does not fit model 'tiny'"):
        fresh_tiny(weights=str(corrupt))


def test_every_weight_and_statistic_survives_reload(tmp_path):
    model = randomize_batch_norm(fresh_tiny(dropout=0.2), seed=7)
    path = tmp_path / "trained.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    for layer in model.layers:
        for before, after in zip(layer.get_weights(), reloaded.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(before, after)
