"""The classic training callbacks, writing into a run folder."""

import csv
import math
from pathlib import Path

import keras

from keras_parnet import distribute
from keras_parnet.runs import BEST_WEIGHTS

EPOCH_WEIGHTS = "ep{epoch:03d}-loss{loss:.3f}-val_loss{val_loss:.3f}.weights.h5"
HISTORY_FILE = "history.csv"


def decayed_learning_rate(initial, decay):
    """Schedule for `LearningRateScheduler`: epoch `k` (0-based) trains at
    `initial * decay**k`. It depends on the epoch only, so a resumed run
    continues the same curve."""

    def schedule(epoch, learning_rate=None):
        return initial * decay**epoch

    return schedule


def best_val_loss(run_dir):
    """Lowest `val_loss` recorded in the run's history, or `None`."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        losses = [float(row["val_loss"]) for row in csv.DictReader(f) if row.get("val_loss")]
    finite = [loss for loss in losses if math.isfinite(loss)]
    return min(finite) if finite else None


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' `BackupAndRestore`, for a cluster too.

    Keras 3's callback restores every worker from its own `backup_dir`. In a
    cluster only the chief reads its backup (the other workers write theirs
    into their temporary folders); then every worker takes the chief's
    weights, optimizer state and epoch, so the cluster resumes as one, and
    start weights that only the chief loaded reach every worker.
    """

    def on_train_begin(self, logs=None):
        strategy = self.model.distribute_strategy
        if distribute.worker_count(strategy) == 1:
            super().on_train_begin(logs)
            return
        if distribute.is_chief(strategy):
            super().on_train_begin(logs)
        state = self.model.weights + self.model.optimizer.variables
        epoch = keras.ops.convert_to_tensor(self.model._initial_epoch or 0, "int64")
        epoch, *values = distribute.broadcast_from_chief(
            strategy, [epoch, *(keras.ops.convert_to_tensor(variable) for variable in state)])
        for variable, value in zip(state, values):
            variable.assign(value)
        self.model._initial_epoch = int(epoch)


def training_callbacks(
    run_dir,
    learning_rate=1e-3,
    lr_decay=0.95,
    patience=15,
    restore_best_weights=False,
    tensorboard_dir=None,
):
    """Checkpoints, LR decay, early stopping, TensorBoard, CSV and resume.

    Args:
        run_dir: the run folder; everything is written below it.
        learning_rate: learning rate of the first epoch.
        lr_decay: per-epoch factor (`0.95`: epoch k uses `lr * 0.95**k`).
        patience: epochs without a lower `val_loss` before stopping.
        restore_best_weights: end with the best epoch's weights.
        tensorboard_dir: TensorBoard log folder (default `run_dir/tensorboard`).

    Returns:
        A list of Keras callbacks. `BackupAndRestore` (in `run_dir/backup`) comes
        first so that a resumed run restores before the others act, and the best
        checkpoint only improves on what the history already holds.
    """
    run_dir = Path(run_dir)
    return [
        BackupAndRestore(str(run_dir / "backup"), delete_checkpoint=True),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.LearningRateScheduler(
            decayed_learning_rate(learning_rate, lr_decay), verbose=1
        ),
        keras.callbacks.ModelCheckpoint(
            str(run_dir / EPOCH_WEIGHTS), save_weights_only=True, save_freq="epoch"
        ),
        keras.callbacks.ModelCheckpoint(
            str(run_dir / BEST_WEIGHTS),
            monitor="val_loss",
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=best_val_loss(run_dir),
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=patience,
            restore_best_weights=restore_best_weights,
            verbose=1,
        ),
        keras.callbacks.CSVLogger(str(run_dir / HISTORY_FILE), append=True),
        keras.callbacks.TensorBoard(str(tensorboard_dir or run_dir / "tensorboard")),
    ]
