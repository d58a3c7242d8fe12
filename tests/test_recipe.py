"""The training recipe's knobs (learning rate schedules, label smoothing, EMA,
weight decay), `--recipe`, `--config` and the run's config.json."""

import json
import math

import keras
import numpy as np
import pytest
import yaml
from conftest import TINY_WIDTHS, interrupt_after

from keras_parnet import callbacks, runs
from keras_parnet import train as train_module
from keras_parnet.cli.train import main, parse_flags, resolve_settings, resolved_flags
from keras_parnet.train import DEFAULTS, compiled_model

pytestmark = pytest.mark.usefixtures("shallow_module")  # see conftest.SHALLOW_STREAM_DEPTHS

TINY_CONFIG = runs.run_config("ParNet", {"widths": list(TINY_WIDTHS), "small_input": True, "dropout": 0.0}, 32,
                              ["dark", "bright"])
# keras_parnet/train.py's DEFAULTS at 0890076, before the recipe knobs, and
# the values of the knobs that keep that recipe.
ORIGINAL_RECIPE = {
    "model": "s", "widths": None, "small_input": False, "batch_size": 16, "epochs": 100, "image_size": 256,
    "lr": 1e-3, "lr_decay": 0.95, "patience": 15, "dropout": None, "mixed_precision": False, "val_split": 0.1,
    "activation": "silu", "freeze_epochs": 0, "fine_tune_lr": None, "class_weight": None,
    "optimizer": "adam", "weight_decay": 0.0, "momentum": 0.9, "schedule": "exp", "warmup_epochs": 0,
    "label_smoothing": 0.0, "ema": None, "randaugment": None, "random_erasing": 0.0, "mixup": 0.0, "cutmix": 0.0,
    "sync_bn": True,
}


def settings(**changes):
    return {**DEFAULTS, **changes}


def default_strategy():
    import tensorflow as tf

    return tf.distribute.get_strategy()


def model_with(**changes):
    return compiled_model(TINY_CONFIG, settings(**changes), default_strategy())


def dense_model():
    """A small dense model with BatchNorm, the same weights each time (a
    ParNet's train step takes a minute to trace on a loaded CPU)."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
                             keras.layers.Dense(2, activation="softmax")])


def dense_model_with(**changes):
    """`dense_model` compiled with the optimizer of `settings(**changes)`."""
    model = dense_model()
    model.compile(train_module.make_optimizer(settings(**changes), model.trainable_variables),
                  "categorical_crossentropy")
    return model


def dense_batch(seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(4, 6)).astype("float32"), np.eye(2, dtype="float32")[rng.integers(0, 2, 4)]


def rate_schedule(callback_list):
    return next(c for c in callback_list if isinstance(c, keras.callbacks.LearningRateScheduler)).schedule


def cosine_with_warmup(initial, epochs, warmup, epoch):
    if epoch < warmup:
        return initial * (epoch + 1) / (warmup + 1)
    return initial * (1 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup))) / 2


def test_cosine_learning_rate_with_warmup_at_every_epoch(tmp_path):
    schedule = rate_schedule(callbacks.training_callbacks(tmp_path, 0.1, schedule="cosine", epochs=12,
                                                          warmup_epochs=3))
    expected = [cosine_with_warmup(0.1, 12, 3, epoch) for epoch in range(12)]
    np.testing.assert_allclose([schedule(epoch) for epoch in range(12)], expected, rtol=1e-6)
    assert expected[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1]) and expected[-1] > 0


def test_cosine_phases_with_freeze_epochs(tmp_path):
    schedule = rate_schedule(callbacks.training_callbacks(tmp_path, 0.1, freeze_epochs=4, fine_tune_lr=0.01,
                                                          schedule="cosine", epochs=10, warmup_epochs=1))
    expected = ([cosine_with_warmup(0.1, 4, 1, epoch) for epoch in range(4)]
                + [cosine_with_warmup(0.01, 6, 1, epoch) for epoch in range(6)])
    np.testing.assert_allclose([schedule(epoch) for epoch in range(10)], expected, rtol=1e-6)


def test_exp_schedule_is_unchanged(tmp_path):
    schedule = rate_schedule(callbacks.training_callbacks(tmp_path, 0.1, 0.5, epochs=4))
    assert [schedule(epoch) for epoch in range(4)] == [0.1, 0.05, 0.025, 0.0125]


def test_label_smoothing_loss_is_the_smoothed_cross_entropy():
    loss = model_with(label_smoothing=0.2).loss
    labels = np.eye(3, dtype="float32")[[0, 2, 1, 2]]
    probabilities = np.array([[0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.01, 0.01, 0.98]], "float32")
    smoothed = labels * 0.8 + 0.2 / 3
    expected = np.mean(-np.sum(smoothed * np.log(probabilities), axis=-1))
    assert float(loss(labels, probabilities)) == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(np.mean(-np.sum(labels * np.log(probabilities), axis=-1)), rel=1e-2)


def ema_averages(model):
    """The optimizer's EMA variables, in the order of `model.trainable_variables`."""
    averages = {variable.name: variable for variable in model.optimizer.variables if variable.name.endswith("_average")}
    return [averages[f"{runs_path(variable)}_average"] for variable in model.trainable_variables]


def runs_path(variable):
    return variable.path.replace("/", "_")


def test_ema_follows_the_formula_over_the_weight_trajectory():
    decay = 0.8
    model = dense_model_with(optimizer="sgd", lr=0.5, ema=decay)
    trajectory = []
    for step in range(4):
        model.train_on_batch(*dense_batch(step))
        trajectory.append([variable.numpy() for variable in model.trainable_variables])
    expected = trajectory[0]  # Keras starts the average at the weights after the first step
    for weights in trajectory[1:]:
        expected = [decay * average + (1 - decay) * weight for average, weight in zip(expected, weights)]
    for average, value in zip(ema_averages(model), expected, strict=True):
        np.testing.assert_allclose(average.numpy(), value, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a.numpy(), w) for a, w in zip(ema_averages(model), trajectory[-1]))


def test_weight_decay_is_decoupled_and_spares_1d_weights():
    lr, decay = 0.1, 0.3
    plain = dense_model_with(optimizer="sgd", lr=lr)
    decayed = dense_model_with(optimizer="sgd", lr=lr, weight_decay=decay)
    decayed.set_weights(plain.get_weights())
    start = [variable.numpy() for variable in plain.trainable_variables]
    plain.train_on_batch(*dense_batch(0))
    decayed.train_on_batch(*dense_batch(0))
    for before, without, with_decay in zip(start, plain.trainable_variables, decayed.trainable_variables):
        expected = -lr * decay * before if before.ndim > 1 else np.zeros_like(before)
        np.testing.assert_allclose(with_decay.numpy() - without.numpy(), expected, atol=1e-6)
    assert any(before.ndim > 1 and np.abs(before).max() > 0 for before in start)


def test_optimizers_are_keras_own():
    variables = dense_model_with().trainable_variables
    sgd = train_module.make_optimizer(settings(optimizer="sgd", momentum=0.5), variables)
    nesterov = train_module.make_optimizer(settings(optimizer="nesterov"), variables)
    adamw = train_module.make_optimizer(settings(optimizer="adamw", weight_decay=0.01), variables)
    assert (type(sgd), sgd.momentum, sgd.nesterov) == (keras.optimizers.SGD, 0.5, False)
    assert (type(nesterov), nesterov.nesterov) == (keras.optimizers.SGD, True)
    assert (type(adamw), adamw.weight_decay) == (keras.optimizers.AdamW, 0.01)


def resolved(argv, dataset):
    args = parse_flags([*argv, "--dataset", str(dataset)])
    return resolved_flags(args, resolve_settings(args)[0])


def test_original_recipe_is_todays_configuration(tmp_path):
    args = parse_flags(["--recipe", "original", "--dataset", str(tmp_path)])
    recipe_settings, _ = resolve_settings(args)
    assert recipe_settings == {**ORIGINAL_RECIPE, "dataset": str(tmp_path)}
    assert resolved(["--recipe", "original"], tmp_path) == resolved([], tmp_path)
    model = compiled_model(TINY_CONFIG, recipe_settings, default_strategy())
    optimizer = model.optimizer
    assert (type(optimizer), optimizer.weight_decay, optimizer.use_ema) == (keras.optimizers.Adam, None, False)
    assert model.loss.get_config()["label_smoothing"] == 0


def test_compiled_models_optimizer_holds_its_state_before_fit():
    # Optimizer variables created while fit traces the training step make TensorFlow
    # trace the step twice (a first tiny-ParNet fit took 42 s instead of 22 s).
    model = model_with(optimizer="adam")
    assert model.optimizer.built
    assert len(model.optimizer.variables) > 2 * len(model.trainable_variables)  # Adam's m and v, and its step


def test_compile_for_training_traces_the_first_training_step_once():
    # Variables created while fit traces its step (an unbuilt optimizer, the metric
    # "accuracy") make TensorFlow trace it twice: seconds per run for a ParNet.
    model = train_module.compile_for_training(dense_model(), keras.optimizers.Adam(1e-3))
    traces = []
    train_step = model.train_step
    model.train_step = lambda data: traces.append(data) or train_step(data)
    images, labels = dense_batch(0)
    model.fit(images, labels, batch_size=2, epochs=1, verbose=0)
    assert len(traces) == 1
    accuracy = model.evaluate(images, labels, verbose=0, return_dict=True)["accuracy"]
    assert accuracy == pytest.approx(np.mean(model.predict(images, verbose=0).argmax(1) == labels.argmax(1)))


def test_paper_recipe_is_the_official_command(tmp_path):
    # imankgoyal/NonDeepNetworks imagenet/train_models.sh (ParNet-S) and the defaults of its train.py.
    cited = {"optimizer": "nesterov", "momentum": 0.9, "weight_decay": 1e-4, "lr": 0.001, "schedule": "cosine",
             "warmup_epochs": 0, "epochs": 120, "batch_size": 128, "image_size": 224, "label_smoothing": 0.1,
             "ema": 0.9999, "randaugment": 9, "random_erasing": 0.2, "mixup": 0.0, "cutmix": 0.0,
             "sync_bn": False}
    recipe_settings, _ = resolve_settings(parse_flags(["--recipe", "paper", "--dataset", str(tmp_path)]))
    assert {key: recipe_settings[key] for key in cited} == cited


@pytest.mark.parametrize("suffix, dump", [(".json", json.dumps), (".yaml", yaml.safe_dump)])
@pytest.mark.parametrize("argv", [
    ["--recipe", "paper", "--demo", "--lr", "0.02", "--no-flip", "--widths", "8", "8", "8", "8"],
    ["--no-augment", "--randaugment", "5", "--ema", "--freeze-epochs", "1", "--fine-tune-lr", "0.1"],
])
def test_config_round_trip(tmp_path, suffix, dump, argv):
    first = resolved(argv, tmp_path)
    path = tmp_path / f"config{suffix}"
    path.write_text(dump(first))
    assert resolved(["--config", str(path)], tmp_path) == first
    assert first["lr"] == (0.02 if "--lr" in argv else 1e-3) and first["no_flip"]
    assert (first["optimizer"], first["image_size"]) == (("nesterov", 32) if "paper" in argv else ("adam", 256))


def test_flags_beat_the_config_file_which_beats_the_recipe(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("lr: 0.05\nepochs: 7\n")
    chosen = resolved(["--recipe", "paper", "--config", str(path), "--lr", "0.2"], tmp_path)
    assert (chosen["lr"], chosen["epochs"], chosen["optimizer"], chosen["batch_size"]) == (0.2, 7, "nesterov", 128)


@pytest.mark.parametrize("text, words", [
    ("lr: 0.1\nlearning_rate: 0.1\n", ["unknown key 'learning_rate'"]),
    ("optimizer: rmsprop\n", ["key 'optimizer'", "rmsprop"]),
    ("widths: [8, 8]\n", ["key 'widths'", "list of 4"]),
    ("resume: true\n", ["unknown key 'resume'"]),
])
def test_bad_config_is_one_line_error(tmp_path, capsys, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(path)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1 and error.startswith("error: ")
    assert str(path) in error and all(word in error for word in words)


@pytest.mark.parametrize("flags, words", [(["--optimizer", "sgd"], ["--optimizer adam", "not --optimizer sgd"]),
                                          (["--ema"], ["no --ema", "not --ema 0.9999"])])
def test_resume_keeps_the_optimizer_its_backup_holds(tmp_path, flags, words):
    run_dir = tmp_path / "run"
    runs.save_run(run_dir, {**TINY_CONFIG, "training": {**DEFAULTS, "dataset": str(tmp_path)}})
    with pytest.raises(train_module.TrainError) as error:
        resolve_settings(parse_flags(["--resume", str(run_dir), *flags]))
    assert all(word in str(error.value) for word in words) and f"drop {flags[0]}" in str(error.value)


def test_warmup_without_the_cosine_schedule_is_an_error(tmp_path):
    with pytest.raises(train_module.TrainError, match="--warmup-epochs 2 warms up the cosine schedule"):
        resolve_settings(parse_flags(["--warmup-epochs", "2", "--dataset", str(tmp_path)]))
    assert resolve_settings(parse_flags(["--warmup-epochs", "2", "--recipe", "paper", "--dataset", str(tmp_path)]))


class EMARecorder(keras.callbacks.Callback):
    """Before any other callback ends an epoch: the trained and EMA weights."""

    def __init__(self):
        super().__init__()
        self.trained, self.averages = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.trained.append([variable.numpy() for variable in self.model.trainable_variables])
        self.averages.append([variable.numpy() for variable in ema_averages(self.model)])


def fit_with_ema(run_dir, *extra_callbacks):
    """Two epochs of `dense_model_with` with EMA through `training_callbacks`
    (cosine after one warmup epoch); returns its `EMARecorder`."""
    model = dense_model_with(optimizer="nesterov", lr=0.5, ema=0.5, weight_decay=0.01)
    recorder = EMARecorder()
    images, labels = dense_batch(0)
    images, labels = np.concatenate([images, dense_batch(1)[0]]), np.concatenate([labels, dense_batch(1)[1]])
    model.fit(images, labels, batch_size=4, epochs=2, shuffle=False, verbose=0, validation_data=dense_batch(2),
              callbacks=[recorder, *callbacks.training_callbacks(run_dir, 0.5, schedule="cosine", epochs=2,
                                                                 warmup_epochs=1, ema=True), *extra_callbacks])
    return recorder


@pytest.mark.slow
def test_ema_weights_are_checkpointed_and_a_resumed_run_continues_exactly(tmp_path):
    whole = fit_with_ema(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        fit_with_ema(tmp_path / "resumed", interrupt_after(1))
    rows = callbacks.read_history(tmp_path / "resumed")[1]
    assert [float(row["learning_rate"]) for row in rows] == pytest.approx([0.25], rel=1e-6)  # warmup: lr / 2

    # Checkpoints hold the EMA weights (validated on), not the trained ones.
    best = dense_model()
    best.load_weights(tmp_path / "resumed" / runs.BEST_WEIGHTS)
    for variable, average in zip(best.trainable_variables, whole.averages[0], strict=True):
        np.testing.assert_allclose(variable.numpy(), average, rtol=1e-6)
    assert not all(np.allclose(a, t) for a, t in zip(whole.averages[0], whole.trained[0]))

    resumed = fit_with_ema(tmp_path / "resumed")  # restores epoch 1's backup, trains epoch 2
    assert len(resumed.trained) == 1
    for name, after_resume, uninterrupted in (("trained", resumed.trained[0], whole.trained[1]),
                                              ("EMA", resumed.averages[0], whole.averages[1])):
        for value, expected in zip(after_resume, uninterrupted, strict=True):
            np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-7, err_msg=name)
    best.load_weights(tmp_path / "whole" / runs.BEST_WEIGHTS)
    best_epoch = min(callbacks.read_history(tmp_path / "whole")[1], key=lambda row: float(row["val_loss"]))["epoch"]
    for variable, average in zip(best.trainable_variables, whole.averages[int(best_epoch)], strict=True):
        np.testing.assert_allclose(variable.numpy(), average, rtol=1e-6)
