"""Each `keras_parnet.compat` function on a tiny model: these fail, naming the
Keras version, when a private Keras attribute they use is gone or changed."""

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_parnet import compat


def _tiny_functional():
    inputs = keras.Input((4,))
    shared = keras.layers.Dense(4, name="shared")
    outputs = keras.layers.Dense(2, name="head")(shared(shared(inputs)))
    return keras.Model(inputs, outputs), shared


def _fail(what, error):
    pytest.fail(f"keras {keras.__version__}: {what} ({type(error).__name__}: {error}); "
                "update keras_parnet/compat.py")


def test_is_functional_tells_graph_models_from_subclassed_ones():
    class Subclassed(keras.Model):
        def call(self, inputs):
            return inputs

    model, _ = _tiny_functional()
    try:
        verdicts = compat.is_functional(model), compat.is_functional(Subclassed())
    except AttributeError as error:
        _fail("Functional._run_through_graph is gone", error)
    if verdicts != (True, False):
        pytest.fail(f"keras {keras.__version__}: Functional._run_through_graph no longer tells functional "
                    f"from subclassed models (got {verdicts}, expected (True, False))")


def test_call_count_counts_the_calls_of_a_layer():
    model, shared = _tiny_functional()
    try:
        counts = compat.call_count(shared), compat.call_count(model.get_layer("head"))
    except AttributeError as error:
        _fail("Operation._inbound_nodes is gone", error)
    if counts != (2, 1):
        pytest.fail(f"keras {keras.__version__}: Operation._inbound_nodes no longer holds one node per call "
                    f"(got {counts} for a layer called twice and one called once)")


class _ResumeAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch
        self.epochs_seen = []

    def on_train_begin(self, logs=None):
        compat.set_initial_epoch(self.model, self.epoch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs_seen.append(epoch)


def test_set_initial_epoch_in_on_train_begin_makes_fit_skip_epochs():
    model, _ = _tiny_functional()
    model.compile("sgd", "mse")
    resume = _ResumeAt(2)
    try:
        model.fit(np.zeros((4, 4)), np.zeros((4, 2)), epochs=4, verbose=0, callbacks=[resume])
        stored = compat.initial_epoch(model)
    except AttributeError as error:
        _fail("Trainer._initial_epoch is gone", error)
    if resume.epochs_seen != [2, 3] or stored != 2:
        pytest.fail(f"keras {keras.__version__}: fit no longer starts at Trainer._initial_epoch set in "
                    f"on_train_begin (ran epochs {resume.epochs_seen}, stored {stored}; expected [2, 3], 2)")


def test_swap_ema_weights_exchanges_the_weights_and_their_averages():
    model, _ = _tiny_functional()
    model.compile(keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5), "mse")
    for _ in range(2):  # not fit, which ends by copying the averages into the weights
        model.train_on_batch(np.ones((4, 4)), np.ones((4, 2)))
    optimizer = model.optimizer
    averages = [variable for variable in optimizer.variables if variable.name.endswith("_average")]
    before = [variable.numpy() for variable in model.trainable_variables], [a.numpy() for a in averages]
    assert not all(np.allclose(weight, average) for weight, average in zip(*before))
    callback = keras.callbacks.SwapEMAWeights()
    callback.set_model(model)
    try:
        compat.swap_ema_weights(callback)
    except AttributeError as error:
        _fail("SwapEMAWeights._swap_variables is gone", error)
    after = [variable.numpy() for variable in model.trainable_variables], [a.numpy() for a in averages]
    if not all(np.allclose(a, b) for a, b in zip(after[0], before[1], strict=True)) or not all(
            np.allclose(a, b) for a, b in zip(after[1], before[0], strict=True)):
        pytest.fail(f"keras {keras.__version__}: SwapEMAWeights._swap_variables no longer exchanges the model's "
                    "weights with the optimizer's averages")


def test_symbolic_build_hook_is_called_by_fit_under_a_strategy():
    """The hook MultiWorkerModel uses; the default strategy is enough for Keras
    to build symbolically before the first step."""
    batches = []

    class Recording(compat.SymbolicBuildHook):
        def build_from_batch(self, data_batch):
            batches.append(data_batch)
            compat.symbolic_build(self, data_batch)

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model, _ = _tiny_functional()
        model = Recording(model.inputs, model.outputs)
        model.compile("sgd", "mse")
    try:
        model.fit(np.ones((4, 4), "float32"), np.zeros((4, 2), "float32"), batch_size=2, epochs=1, verbose=0)
    except (AttributeError, TypeError) as error:
        _fail("Trainer._maybe_symbolic_build or Trainer._symbolic_build changed", error)
    if len(batches) != 1 or tuple(batches[0][0].shape) != (2, 4):
        pytest.fail(f"keras {keras.__version__}: fit no longer calls Trainer._maybe_symbolic_build once with "
                    f"the first (x, y) batch (got {len(batches)} calls)")
    if not model.optimizer.built:
        pytest.fail(f"keras {keras.__version__}: Trainer._symbolic_build no longer builds the optimizer")


def test_legacy_h5_weights_load_back(tmp_path):
    model, _ = _tiny_functional()
    path = tmp_path / "legacy.h5"
    try:
        with h5py.File(path, "w") as file:
            compat.save_legacy_h5_weights(model, file)
    except (ImportError, AttributeError) as error:
        _fail("keras.src.legacy.saving.legacy_h5_format.save_weights_to_hdf5_group is gone", error)
    reloaded, _ = _tiny_functional()
    reloaded.load_weights(path)
    for expected, loaded in zip(model.get_weights(), reloaded.get_weights()):
        np.testing.assert_array_equal(loaded, expected)


def test_weights_file_keys_are_the_groups_keras_writes(tmp_path):
    model, _ = _tiny_functional()
    path = tmp_path / "tiny.weights.h5"
    model.save_weights(path)
    with h5py.File(path, "r") as file:
        written = set(file["layers"])
    try:
        keys = compat.weights_file_keys(model)
    except ImportError as error:
        _fail("keras.src.utils.naming.to_snake_case is gone", error)
    if set(keys.values()) != written or len(keys) != len(model.layers):
        pytest.fail(f"keras {keras.__version__}: weights files no longer name layer groups by class "
                    f"(written {sorted(written)}, compat expects {sorted(keys.values())})")
