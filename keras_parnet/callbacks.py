"""The training callbacks, writing into a run folder.

At the end of each epoch `RunCheckpoint` writes, in this order and each file
under a temporary name then renamed over the old one:

    ep{epoch:03d}-loss...-val_loss....weights.h5   the epoch's weights
    best.weights.h5                                when val_loss improved
    history.csv                                    with the epoch's row
    backup/epoch{epoch:03d}.weights.h5             the state to resume from

The backup is written last: an epoch counts as done once its backup exists.
A run killed at any point resumes from its newest backup, and first removes
what a later, unfinished epoch had written (its history row, its checkpoint,
its best weights), so that every epoch is recorded once. Ctrl-C during these
writes takes effect when they are done.
"""

import contextlib
import csv
import gc
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
from pathlib import Path

import keras

from keras_parnet import compat, distribute
from keras_parnet.files import write_atomically
from keras_parnet.runs import BEST_WEIGHTS, RunError

EPOCH_WEIGHTS = "ep{epoch:03d}-loss{loss:.3f}-val_loss{val_loss:.3f}.weights.h5"
HISTORY_FILE = "history.csv"
BACKUP_DIR = "backup"
BACKUP_WEIGHTS = "epoch{epoch:03d}.weights.h5"
PARTIAL_PREFIX = ".partial-"  # files.write_atomically's temporary names
_EPOCH_WEIGHTS_NAME = re.compile(r"ep(\d+)-.*\.weights\.h5")
_BACKUP_WEIGHTS_NAME = re.compile(r"epoch(\d+)\.weights\.h5")
# Keras' own BackupAndRestore layout, read so that runs it backed up still resume.
_KERAS_BACKUP_WEIGHTS = "latest.weights.h5"
_KERAS_BACKUP_METADATA = "training_metadata.json"


class BackupError(RunError):
    """A run's backup/ that cannot be resumed from."""


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the epoch was not recorded."""


def decayed_learning_rate(initial, decay):
    """Schedule for `LearningRateScheduler`: epoch `k` (0-based) trains at
    `initial * decay**k`. It depends on the epoch only, so a resumed run
    continues the same curve."""

    def schedule(epoch, learning_rate=None):
        return initial * decay**epoch

    return schedule


def cosine_learning_rate(initial, epochs, warmup_epochs=0):
    """Schedule for `LearningRateScheduler` over a phase of `epochs` epochs
    (k from 0): the first `warmup_epochs` rise linearly towards `initial`
    (`initial * (k + 1) / (warmup_epochs + 1)`), then the rate follows half a
    cosine from `initial` towards 0 over the remaining epochs
    (`initial * (1 + cos(pi * (k - warmup_epochs) / (epochs - warmup_epochs))) / 2`).
    Keras' `CosineDecay` with warmup, evaluated once per epoch as timm's
    scheduler steps by default; like `decayed_learning_rate` it depends on
    the epoch only, so a resumed run continues the same curve."""
    curve = keras.optimizers.schedules.CosineDecay(
        initial / (warmup_epochs + 1), max(epochs - warmup_epochs, 1),  # a phase of warmup only never decays
        warmup_target=initial, warmup_steps=warmup_epochs)

    def schedule(epoch, learning_rate=None):
        return float(curve(epoch))

    return schedule


def epoch_learning_rate(schedule, initial, decay, epochs, warmup_epochs=0):
    """The schedule named `schedule` ("exp": `decayed_learning_rate(initial,
    decay)`, "cosine": `cosine_learning_rate(initial, epochs, warmup_epochs)`)."""
    if schedule == "cosine":
        return cosine_learning_rate(initial, epochs, warmup_epochs)
    return decayed_learning_rate(initial, decay)


def phased_learning_rate(head, whole, freeze_epochs):
    """Schedule for `LearningRateScheduler`: the schedule `head` for the first
    `freeze_epochs`, then the schedule `whole` from its own epoch 0 (epoch
    `k >= freeze_epochs` trains at `whole(k - freeze_epochs)`)."""

    def schedule(epoch, learning_rate=None):
        return head(epoch) if epoch < freeze_epochs else whole(epoch - freeze_epochs)

    return schedule


def freeze_backbone(model, frozen):
    """Makes every layer but the classifier (`models.HEAD_LAYER`) untrainable
    (`frozen=True`) or trainable again. Untrainable BatchNormalization layers
    normalize with their moving statistics and do not update them (Keras 3),
    as in the Keras transfer-learning guide."""
    from keras_parnet.models import HEAD_LAYER

    for layer in model.layers:
        if layer.name != HEAD_LAYER:
            layer.trainable = not frozen


class UnfreezeBackbone(keras.callbacks.Callback):
    """Trains the whole network from epoch `freeze_epochs` (0-based) on: at
    the first epoch from then, frozen or resumed, the backbone becomes
    trainable and `fit` gets a new training step (which reads which weights
    train when it is traced)."""

    def __init__(self, freeze_epochs):
        super().__init__()
        self.freeze_epochs = freeze_epochs

    def on_epoch_begin(self, epoch, logs=None):
        if epoch >= self.freeze_epochs and not all(layer.trainable for layer in self.model.layers):
            freeze_backbone(self.model, False)
            self.model.make_train_function(force=True)


def read_history(run_dir):
    """`(field names, rows)` of the run's history.csv (empty if there is none)."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def write_history(run_dir, fieldnames, rows):
    def write(temporary):
        with open(temporary, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(Path(run_dir) / HISTORY_FILE, write)


def _finite(value):
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def best_val_loss(run_dir):
    """Lowest `val_loss` recorded in the run's history, or `None`."""
    losses = [float(row["val_loss"]) for row in read_history(run_dir)[1] if _finite(row.get("val_loss"))]
    return min(losses) if losses else None


def epoch_checkpoints(run_dir):
    """`{epoch (from 1): path}` of the run's per-epoch weights files."""
    checkpoints = {}
    for path in Path(run_dir).glob("ep*.weights.h5"):
        match = _EPOCH_WEIGHTS_NAME.fullmatch(path.name)
        if match:
            checkpoints[int(match.group(1))] = path
    return checkpoints


def _readable(path):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return len(f) > 0
    except OSError:
        return False


def newest_good_checkpoint(run_dir):
    """The per-epoch weights file of the latest epoch that reads, or `None`."""
    checkpoints = epoch_checkpoints(run_dir)
    for epoch in sorted(checkpoints, reverse=True):
        if _readable(checkpoints[epoch]):
            return checkpoints[epoch]
    return None


def damaged_backup(run_dir, reason):
    """The `BackupError` for a backup that cannot be read, naming the newest
    good checkpoint to start again from."""
    backup = Path(run_dir) / BACKUP_DIR
    checkpoint = newest_good_checkpoint(run_dir)
    restart = (f"start a new run from its newest good checkpoint with --weights {checkpoint}"
               if checkpoint else "no epoch checkpoint of the run reads either: start a new run")
    return BackupError(f"{backup} is damaged ({reason}): {restart}, or delete {backup} to close the run as it is.")


def read_backup(run_dir):
    """`(epochs done, weights file)` of the run's backup: `(0, None)` when
    backup/ holds no finished epoch yet.

    Raises:
        BackupError: there is no backup/ (the run finished), or its newest
            state does not read (naming the checkpoint to start again from).
    """
    backup = Path(run_dir) / BACKUP_DIR
    if not backup.is_dir():
        raise BackupError(f"{run_dir} has no {BACKUP_DIR}/ to resume from: that run finished.")
    states = {}
    for path in backup.iterdir():
        match = _BACKUP_WEIGHTS_NAME.fullmatch(path.name)
        if match:
            states[int(match.group(1))] = path
    metadata = backup / _KERAS_BACKUP_METADATA
    if not states and metadata.is_file():
        try:
            states[int(json.loads(metadata.read_text())["epoch"])] = backup / _KERAS_BACKUP_WEIGHTS
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise damaged_backup(run_dir, f"{metadata.name}: {error}") from None
    if not states:
        return 0, None
    epoch = max(states)
    if not _readable(states[epoch]):
        raise damaged_backup(run_dir, f"{states[epoch].name} is missing, truncated or not HDF5")
    return epoch, states[epoch]


def save_weights(model, path):
    """`model.save_weights(path)` under a temporary name renamed to `path`.

    Raises:
        OSError: naming `path`, with the cause's errno (e.g. a full disk).
            h5py's own error names the temporary file, and h5py prints
            tracebacks it cannot raise while the failed file is freed: those
            are kept quiet.
    """
    hooks = sys.unraisablehook, sys.excepthook
    sys.unraisablehook = sys.excepthook = lambda *args: None
    failure = None
    try:
        try:
            write_atomically(path, model.save_weights)
        except OSError as error:
            failure = OSError(error.errno, os.strerror(error.errno) if error.errno else str(error), str(path))
            gc.collect()  # frees the failed file while its noise is kept quiet (a whole collection: only then)
    finally:
        sys.unraisablehook, sys.excepthook = hooks
    if failure:
        raise failure


@contextlib.contextmanager
def interrupts_deferred():
    """Holds Ctrl-C (SIGINT) back until the block is done: stopping between
    an epoch's writes would leave it half recorded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        signal.raise_signal(signal.SIGINT)


def roll_back(run_dir, epochs_done):
    """Removes what epochs after `epochs_done` wrote into the run folder
    before their backup: history rows, per-epoch checkpoints, leftover
    temporary files, and a best checkpoint they replaced (restored from the
    best remaining epoch's checkpoint)."""
    run_dir = Path(run_dir)
    for leftover in [*run_dir.glob(f"{PARTIAL_PREFIX}*"), *run_dir.glob(f"{BACKUP_DIR}/{PARTIAL_PREFIX}*")]:
        leftover.unlink()
    fieldnames, rows = read_history(run_dir)
    kept = [row for row in rows if row.get("epoch", "").isdigit() and int(row["epoch"]) < epochs_done]
    later = [path for epoch, path in epoch_checkpoints(run_dir).items() if epoch > epochs_done]
    if len(kept) == len(rows) and not later:
        return
    if len(kept) != len(rows):
        write_history(run_dir, fieldnames, kept)
    for path in later:
        path.unlink()
    finite = [row for row in kept if _finite(row.get("val_loss"))]
    best = run_dir / BEST_WEIGHTS
    if not finite:
        best.unlink(missing_ok=True)
        return
    best_epoch = int(min(finite, key=lambda row: float(row["val_loss"]))["epoch"]) + 1
    source = epoch_checkpoints(run_dir).get(best_epoch)
    if source:
        write_atomically(best, lambda temporary: shutil.copyfile(source, temporary))


class RunCheckpoint(keras.callbacks.Callback):
    """Resume state, per-epoch and best checkpoints and history.csv, written
    so that a kill at any moment leaves a run that resumes (see the module).

    `on_train_begin` restores the newest backup, if any. In a cluster only the
    chief reads its backup (the other workers write theirs into temporary
    folders); then every worker takes the chief's weights, optimizer state and
    epoch, so the cluster resumes as one, and start weights that only the chief
    loaded reach every worker.

    An epoch whose loss or val_loss is not finite is not recorded: the
    callback raises `TrainingDiverged`, and the backup of the last good epoch
    stays.

    With `ema_swap`, the `keras.callbacks.SwapEMAWeights(swap_on_epoch=True)`
    placed before this callback, every file of an epoch is written with the
    optimizer's EMA weights in the model and the trained weights in the
    optimizer's averages: checkpoints and best.weights.h5 hold the EMA
    weights, and a backup holds both, swapped back into place on restore.
    """

    def __init__(self, run_dir, ema_swap=None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.ema_swap = ema_swap
        self.backup_dir = self.run_dir / BACKUP_DIR
        self.best = None
        self.fieldnames = None
        self.rows = []

    def on_train_begin(self, logs=None):
        strategy = self.model.distribute_strategy
        if distribute.is_chief(strategy):
            self._restore()
        if distribute.worker_count(strategy) > 1:
            self._take_chiefs_state(strategy)

    def _restore(self):
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        epochs_done, path = read_backup(self.run_dir)
        if path is not None:
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            try:
                self.model.load_weights(path)
            except (ValueError, KeyError, OSError) as error:
                raise damaged_backup(self.run_dir, f"{path.name} does not fit the model: {error}") from None
            if self.ema_swap is not None:
                compat.swap_ema_weights(self.ema_swap)
            compat.set_initial_epoch(self.model, epochs_done)
        roll_back(self.run_dir, epochs_done)
        self.fieldnames, self.rows = read_history(self.run_dir)
        self.best = best_val_loss(self.run_dir)

    def _take_chiefs_state(self, strategy):
        state = self.model.weights + self.model.optimizer.variables
        epoch = keras.ops.convert_to_tensor(compat.initial_epoch(self.model) or 0, "int64")
        epoch, *values = distribute.broadcast_from_chief(
            strategy, [epoch, *(keras.ops.convert_to_tensor(variable) for variable in state)])
        for variable, value in zip(state, values):
            variable.assign(value)
        compat.set_initial_epoch(self.model, int(epoch))

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        losses = {key: logs[key] for key in ("loss", "val_loss") if key in logs}
        if not all(map(_finite, losses.values())):
            values = ", ".join(f"{key} {value}" for key, value in losses.items())
            raise TrainingDiverged(f"the loss is not finite in epoch {epoch + 1} ({values})")
        with interrupts_deferred():
            checkpoint = self.run_dir / EPOCH_WEIGHTS.format(epoch=epoch + 1, **logs)
            save_weights(self.model, checkpoint)
            val_loss = logs.get("val_loss")
            if val_loss is not None and (self.best is None or val_loss < self.best):
                write_atomically(self.run_dir / BEST_WEIGHTS, lambda temporary: shutil.copyfile(checkpoint, temporary))
                self.best = val_loss
            self.fieldnames = self.fieldnames or ["epoch", *sorted(logs)]
            self.rows.append({"epoch": epoch, **logs})
            write_history(self.run_dir, self.fieldnames, self.rows)
            self.backup_dir.mkdir(exist_ok=True)
            save_weights(self.model, self.backup_dir / BACKUP_WEIGHTS.format(epoch=epoch + 1))
            for older in self.backup_dir.iterdir():
                if older.name != BACKUP_WEIGHTS.format(epoch=epoch + 1):
                    older.unlink()

    def on_train_end(self, logs=None):
        shutil.rmtree(self.backup_dir, ignore_errors=True)


def training_callbacks(
    run_dir,
    learning_rate=1e-3,
    lr_decay=0.95,
    patience=15,
    restore_best_weights=False,
    tensorboard_dir=None,
    freeze_epochs=0,
    fine_tune_lr=None,
    schedule="exp",
    epochs=None,
    warmup_epochs=0,
    ema=False,
):
    """Checkpoints, LR schedule, early stopping, TensorBoard, CSV and resume.

    Args:
        run_dir: the run folder; everything is written below it.
        learning_rate: learning rate of the first epoch.
        lr_decay: per-epoch factor (`0.95`: epoch k uses `lr * 0.95**k`).
        patience: epochs without a lower `val_loss` before stopping.
        restore_best_weights: end with the best epoch's weights.
        tensorboard_dir: TensorBoard log folder (default `run_dir/tensorboard`).
        freeze_epochs: epochs that train only the classifier (the model
            starts with `freeze_backbone`); then the whole network trains,
            from `fine_tune_lr` on (see `phased_learning_rate`).
        schedule: "exp" (`lr_decay` per epoch) or "cosine" (over `epochs`,
            after `warmup_epochs`: `cosine_learning_rate`). With
            `freeze_epochs`, each phase runs its own schedule over its own
            epochs.
        epochs: the run's epochs (for "cosine").
        ema: the model's optimizer keeps EMA weights (`use_ema`): validation,
            checkpoints and best.weights.h5 use them (see `RunCheckpoint`).

    Returns:
        A list of Keras callbacks. `RunCheckpoint` follows the learning rate
        scheduler, whose rate it records in the history.
    """
    run_dir = Path(run_dir)
    if freeze_epochs:
        phases = [UnfreezeBackbone(freeze_epochs)]
        rate = phased_learning_rate(
            epoch_learning_rate(schedule, learning_rate, lr_decay, freeze_epochs, warmup_epochs),
            epoch_learning_rate(schedule, fine_tune_lr, lr_decay, epochs and epochs - freeze_epochs,
                                warmup_epochs),
            freeze_epochs)
    else:
        phases, rate = [], epoch_learning_rate(schedule, learning_rate, lr_decay, epochs, warmup_epochs)
    ema_swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True) if ema else None
    return [
        keras.callbacks.TerminateOnNaN(),
        *phases,
        keras.callbacks.LearningRateScheduler(rate, verbose=1),
        *([ema_swap] if ema_swap else []),
        RunCheckpoint(run_dir, ema_swap),
        keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=patience,
            restore_best_weights=restore_best_weights,
            verbose=1,
        ),
        keras.callbacks.TensorBoard(str(tensorboard_dir or run_dir / "tensorboard")),
    ]
