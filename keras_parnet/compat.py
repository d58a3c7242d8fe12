"""The few Keras-private attributes keras_parnet relies on, in one place.

Each function stands for a public behaviour Keras has no public API for and
names the private attribute it uses; `tests/test_compat.py` fails, naming the
Keras version, when one of them is gone or behaves differently. Checked
against the sources of Keras 3.5, 3.6, 3.8, 3.10 and 3.15 (3.3 and 3.4 lack
`Trainer._maybe_symbolic_build`).
"""

import keras


def is_functional(model):
    """Whether `model` is a functional model (a graph of layers that
    `keras.models.clone_model` can rebuild layer by layer), not a subclassed
    or Sequential-only one. Keras exports no `Functional` class; graph models
    are the ones running through `Function._run_through_graph`."""
    return isinstance(model, keras.Model) and hasattr(model, "_run_through_graph")


def call_count(layer):
    """How many times `layer` was called on symbolic inputs: 1 for a layer
    of one place in a functional graph, more for a shared layer
    (`Operation._inbound_nodes`, one node per call)."""
    return len(layer._inbound_nodes)


def swap_ema_weights(callback):
    """Exchanges the model's trainable weights with its optimizer's EMA
    weights, as the `keras.callbacks.SwapEMAWeights` `callback` does before
    evaluation (`SwapEMAWeights._swap_variables`, which works under a
    distribution strategy), without changing what the callback believes is
    in the model."""
    callback._swap_variables()


def initial_epoch(model):
    """The epoch `fit` will start from as set by `set_initial_epoch`, or `None`."""
    return model._initial_epoch


def set_initial_epoch(model, epoch):
    """Makes the running `fit` continue after `epoch` completed epochs, what
    `keras.callbacks.BackupAndRestore` does in `on_train_begin`: `fit` reads
    `Trainer._initial_epoch` after the callbacks' `on_train_begin`."""
    model._initial_epoch = epoch


class SymbolicBuildHook(keras.Model):
    """A model whose subclasses choose how `fit`/`evaluate` build it before
    the first step under a distribution strategy.

    Keras calls `Trainer._maybe_symbolic_build(iterator=..., data_batch=...)`
    there; this forwards to `build_from_batch(data_batch)`, with `data_batch`
    the first batch of `iterator` when one is given (still distributed: one
    value per replica). Subclasses implement `build_from_batch` and may call
    `symbolic_build(model, data_batch)`.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            # (step, batches) up to Keras 3.10, (first step, last step, batches) since.
            for *_, batches in iterator.enumerate_epoch():
                data_batch = next(batches)
                break
        self.build_from_batch(data_batch)

    def build_from_batch(self, data_batch):
        raise NotImplementedError


def symbolic_build(model, data_batch):
    """Builds `model`'s metrics, loss and optimizer variables from one
    (undistributed) `(x, y, sample_weight)` batch, as `fit` does before its
    first step (`Trainer._symbolic_build`)."""
    model._symbolic_build(data_batch=data_batch)


def save_legacy_h5_weights(model, file):
    """Writes `model`'s weights into an open `h5py.File` in the Keras 2
    `model.save_weights("x.h5")` layout (Keras 3 writes it only through
    `keras.src.legacy.saving.legacy_h5_format`), for testing that such
    files still load."""
    from keras.src.legacy.saving import legacy_h5_format

    legacy_h5_format.save_weights_to_hdf5_group(file, model)


def weights_file_keys(model):
    """`{layer name: its group below "layers/" in a Keras 3 weights file}`.
    Keras names each layer's group after its class, numbered in
    `model.layers` order (`conv2d`, `conv2d_1`, ...), not after the layer's
    name (`saving_lib._save_container_state` with `_get_unique_name` and
    `naming.to_snake_case`), so the keys of two ParNets of other widths agree."""
    from keras.src.utils.naming import to_snake_case

    used, keys = {}, {}
    for layer in model.layers:
        base = to_snake_case(layer.__class__.__name__)
        if base in used:
            used[base] += 1
            keys[layer.name] = f"{base}_{used[base]}"
        else:
            used[base] = 0
            keys[layer.name] = base
    return keys
