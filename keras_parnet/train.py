"""Train ParNet on a `flow_from_directory` folder: `python train.py --help`.

    dataset/<name>/train/<class>/*.jpg
    dataset/<name>/test/<class>/*.jpg

Each run writes `logs/<run-name>/` (see `keras_parnet.runs`). Without a
dataset, the embedded demo (`dataset/demo_faces`, faces vs non-faces) trains
with small settings in a few minutes on a CPU. Several GPUs or machines train
one model with `--strategy` (see `keras_parnet.distribute`); `--batch-size` is
per replica.
"""

import argparse
import dataclasses
import math
import os
import shutil
import sys
from pathlib import Path

DEFAULT_DATASET = "./dataset/data1_dog_cat"
DEMO_DATASET = "dataset/demo_faces"
MODEL_CHOICES = ("s", "m", "l", "xl")

# The original recipe; `None` in argparse means "not given", so that the demo
# settings and a resumed run's settings apply unless a flag overrides them.
DEFAULTS = {
    "model": "s",
    "widths": None,
    "small_input": False,
    "batch_size": 16,
    "epochs": 100,
    "image_size": 256,
    "lr": 1e-3,
    "lr_decay": 0.95,
    "patience": 15,
    "dropout": None,
    "mixed_precision": False,
}
DEMO_SETTINGS = {
    "widths": [32, 48, 64, 128],
    "small_input": True,
    "image_size": 32,
    "epochs": 15,
}
MIN_IMAGE_SIZE = 32  # ParNet's five stride-2 stages
MAX_IMAGE_SIZE = 2048  # one 2048 px image already takes gigabytes of activations in training
# Settings that fix the network's shape: a resumed run keeps its own.
ARCHITECTURE_FLAGS = {"model": "--model", "widths": "--widths", "image_size": "--image-size",
                      "small_input": "--small-input"}


class TrainError(ValueError):
    """A training setting that cannot work."""


def demo_dataset_dir():
    """The demo dataset: in the working folder, else beside the package source."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base / DEMO_DATASET
        if (candidate / "train").is_dir():
            return candidate
    raise TrainError(
        f"the demo dataset {DEMO_DATASET} is missing: run from a source checkout "
        "or pass --dataset DIR."
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train ParNet on dataset/<name>/{train,test}/<class>/ images. With no "
        f"arguments and no {DEFAULT_DATASET}, trains on the embedded demo dataset.",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", help=f"folder holding train/ and test/ (default {DEFAULT_DATASET})")
    data.add_argument("--demo", action="store_true",
                      help=f"train on the embedded demo ({DEMO_DATASET}) with the demo settings")
    data.add_argument("--image-size", type=int, metavar="PX",
                      help=f"square input size (default {DEFAULTS['image_size']}, demo {DEMO_SETTINGS['image_size']})")
    data.add_argument("--batch-size", "--batch", type=int,
                      help=f"images per replica and step (default {DEFAULTS['batch_size']}); a step trains on "
                      "this times the number of replicas (GPUs, or workers in a cluster)")
    data.add_argument("--analyze", action="store_true",
                      help="check the dataset first (class counts, image sizes, train/test duplicates, "
                      "unreadable files) and write its plots to <run>/analysis/")
    data.add_argument("--cache", action="store_true", help="cache decoded images in memory")
    data.add_argument("--seed", type=int, default=None, help="seed for shuffling and augmentation")

    augment = parser.add_argument_group("augmentation (training data only)")
    augment.add_argument("--no-augment", action="store_true", help="switch every augmentation off")
    augment.add_argument("--rotation", type=float, default=50.0, help="max rotation, degrees (default 50)")
    augment.add_argument("--width-shift", type=float, default=0.1, help="max shift, fraction of width (default 0.1)")
    augment.add_argument("--height-shift", type=float, default=0.1, help="max shift, fraction of height (default 0.1)")
    augment.add_argument("--shear", type=float, default=10.0, help="max shear, degrees (default 10)")
    augment.add_argument("--zoom", type=float, default=0.1, help="zoom range, scale in [1-z, 1+z] (default 0.1)")
    augment.add_argument("--no-flip", action="store_true", help="no random horizontal flip")
    augment.add_argument("--brightness", type=float, nargs=2, default=(0.7, 1.3), metavar=("LOW", "HIGH"),
                         help="brightness factor range (default 0.7 1.3)")
    augment.add_argument("--no-brightness", action="store_true", help="no brightness change")
    augment.add_argument("--fill-mode", default="nearest", choices=("nearest", "constant", "reflect", "wrap"),
                         help="how to fill pixels moved in by the transform (default nearest)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=MODEL_CHOICES, help="ParNet size (default s)")
    model.add_argument("--widths", type=int, nargs=4, metavar=("W0", "W1", "W2", "W3"),
                       help="custom stream widths instead of the size's (demo: 32 48 64 128)")
    model.add_argument("--small-input", action="store_true", default=None,
                       help="CIFAR-style stem without stride, for inputs around 32 px")
    model.add_argument("--dropout", type=float, help="dropout before the classifier (default: the size's)")
    model.add_argument("--weights", help="start from this weights file (.weights.h5, .h5 or .keras)")

    fit = parser.add_argument_group("optimisation")
    fit.add_argument("--epochs", type=int, help=f"epochs (default {DEFAULTS['epochs']}, demo {DEMO_SETTINGS['epochs']})")
    fit.add_argument("--lr", type=float, help=f"Adam learning rate of epoch 1 (default {DEFAULTS['lr']})")
    fit.add_argument("--lr-decay", type=float, help="learning rate factor per epoch (default 0.95)")
    fit.add_argument("--patience", type=int, help="early stopping patience on val_loss (default 15)")
    fit.add_argument("--restore-best-weights", action="store_true",
                     help="end training with the weights of the best epoch")

    scale = parser.add_argument_group("devices and speed")
    scale.add_argument("--strategy", default="auto", metavar="NAME",
                       help="tf.distribute strategy: 'mirrored' trains on every GPU of this machine, "
                       "'multi-worker' on the machines TF_CONFIG lists (the chief writes the run folder), "
                       "'default' on one device; 'auto' (default) is multi-worker when TF_CONFIG names "
                       "more than one task, mirrored with more than one GPU, else default")
    scale.add_argument("--mixed-precision", action="store_true", default=None,
                       help="compute in mixed_float16 on GPU (mixed_bfloat16 on CPU), keeping weights and "
                       "the classifier output in float32")
    scale.add_argument("--jit-compile", action="store_true",
                       help="compile training steps with XLA (faster on GPU, about 4x slower on CPU)")

    run = parser.add_argument_group("run folder")
    run.add_argument("--logs-dir", default="logs", help="where run folders go (default logs)")
    run.add_argument("--run-name", help="run folder name (default <date-time>-<model>)")
    run.add_argument("--tensorboard-dir", help="TensorBoard folder (default <run>/tensorboard; "
                     "`tensorboard --logdir logs` shows every run)")
    run.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                     help="continue an interrupted run (default: the newest in --logs-dir)")
    return parser


def augmentation_from_args(args):
    from keras_parnet.data import Augmentation

    if args.no_augment:
        return Augmentation(rotation=0.0, width_shift=0.0, height_shift=0.0, shear=0.0, zoom=0.0,
                            horizontal_flip=False, brightness=None, fill_mode=args.fill_mode)
    return Augmentation(
        rotation=args.rotation,
        width_shift=args.width_shift,
        height_shift=args.height_shift,
        shear=args.shear,
        zoom=args.zoom,
        horizontal_flip=not args.no_flip,
        brightness=None if args.no_brightness else tuple(args.brightness),
        fill_mode=args.fill_mode,
    )


def check_flags(args):
    """Refuses flag values that cannot train, before any slow work."""
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise TrainError(f"--lr {args.lr} is not a positive learning rate: pass e.g. --lr 1e-3.")
    if args.lr_decay is not None and not 0 < args.lr_decay <= 1:
        raise TrainError(f"--lr-decay {args.lr_decay} is outside (0, 1]: it multiplies the learning rate "
                         "once per epoch; pass e.g. 0.95, or 1 for a constant rate.")
    if args.epochs is not None and args.epochs < 1:
        raise TrainError(f"--epochs {args.epochs}: train at least 1 epoch.")
    if args.batch_size is not None and args.batch_size < 1:
        raise TrainError(f"--batch-size {args.batch_size}: a step needs at least 1 image.")
    if args.patience is not None and args.patience < 0:
        raise TrainError(f"--patience {args.patience} is negative: pass the number of epochs without a "
                         "lower val_loss to wait before stopping (0 or more).")
    if args.image_size is not None and not MIN_IMAGE_SIZE <= args.image_size <= MAX_IMAGE_SIZE:
        raise TrainError(f"--image-size {args.image_size} is outside {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} px "
                         f"(ParNet's minimum, and the largest this tool trains at): pass e.g. 256.")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        raise TrainError(f"--dropout {args.dropout} is outside [0, 1): pass the fraction of features dropped.")


def _as_flag(flag, value):
    if value is True:
        return flag
    if value is None or value is False:
        return f"no {flag}"
    return " ".join([flag, *map(str, value if isinstance(value, list) else [value])])


def resolve_settings(args):
    """Merges, lowest first: the defaults, the demo settings (when training on
    the demo) or a resumed run's settings, then the flags given. A resumed
    run's architecture flags cannot change."""
    from keras_parnet.runs import find_latest_run, read_run

    settings = dict(DEFAULTS)
    run_dir = None
    if args.resume:
        run_dir = find_latest_run(args.logs_dir) if args.resume == "latest" else Path(args.resume)
        settings.update(read_run(run_dir).get("training", {}))
        for key, flag in ARCHITECTURE_FLAGS.items():
            given = getattr(args, key)
            if given is not None and given != settings[key]:
                raise TrainError(f"{run_dir} was trained with {_as_flag(flag, settings[key])}, not "
                                 f"{_as_flag(flag, given)}: drop {flag} to resume it, or start a new run.")
    elif args.demo or (args.dataset is None and not Path(DEFAULT_DATASET).is_dir()):
        if not args.demo:
            print(f"{DEFAULT_DATASET} not found: training on the embedded demo dataset "
                  f"({DEMO_DATASET}, faces vs non-faces) with the demo settings.")
        settings.update(DEMO_SETTINGS, dataset=str(demo_dataset_dir()))
    given = {key: value for key, value in vars(args).items() if value is not None}
    settings.update({key: value for key, value in given.items() if key in DEFAULTS or key == "dataset"})
    settings.setdefault("dataset", DEFAULT_DATASET)
    return settings, run_dir


def model_spec(settings):
    """`(builder name, builder kwargs)` for run.json and `runs.build_model`."""
    from keras_parnet.models import BUILDERS, MODEL_CONFIGS

    name = BUILDERS[settings["model"]].__name__
    kwargs = {"small_input": bool(settings["small_input"])}
    if settings["dropout"] is not None:
        kwargs["dropout"] = settings["dropout"]
    if settings["widths"]:
        kwargs = {"widths": list(settings["widths"]), "dropout": MODEL_CONFIGS[name]["dropout"], **kwargs}
        name = "ParNet"
    return name, kwargs


def enable_gpu_memory_growth():
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


def distributed_datasets(settings, args, dataset_dir, class_names, augmentation, strategy):
    """`(train, test)` datasets in global batches of `strategy`, set up to be
    split across its replicas."""
    from keras_parnet import data, distribute

    replicas = strategy.num_replicas_in_sync
    global_batch = settings["batch_size"] * replicas
    train_data, _, train_count = data.make_dataset(
        dataset_dir / "train", settings["image_size"], global_batch, class_names, training=True,
        augmentation=augmentation, seed=distribute.shared_seed(strategy, args.seed), cache=args.cache)
    test_data, _, test_count = data.make_dataset(
        dataset_dir / "test", settings["image_size"], global_batch, class_names, cache=args.cache)
    print(f"{train_count} training and {test_count} test images in {len(class_names)} classes: "
          f"{', '.join(class_names)}")
    steps = math.ceil(train_count / global_batch)
    if replicas > 1:
        # Keras gives every replica's mean loss the same weight, so the images of
        # a smaller last batch, split unevenly, would count more than others.
        steps = train_count // global_batch
        if steps == 0:
            raise TrainError(f"{train_count} training images do not fill one step of {global_batch} images "
                             f"({settings['batch_size']} per replica x {replicas} replicas): lower --batch-size.")
        train_data = distribute.shard_by_data(train_data.take(steps))
        test_data = distribute.shard_by_data(test_data)
    print(f"Training on {distribute.describe(strategy)}: batch size {settings['batch_size']} per replica, "
          f"{global_batch} global, {steps} steps per epoch")
    return train_data, test_data


def compiled_model(config, settings, strategy, weights=None, jit_compile=False):
    """The model of a run `config`, built and compiled in `strategy`'s scope
    (in mixed precision if `settings["mixed_precision"]`), starting from the
    `weights` file if given."""
    import keras

    from keras_parnet import distribute, runs
    from keras_parnet.models import load_weights_file

    policy = distribute.mixed_precision_policy() if settings["mixed_precision"] else None
    if policy:
        print(f"Mixed precision: {policy}")
    with strategy.scope():
        with distribute.dtype_policy(policy):
            model = runs.build_model(config)
        if weights:
            load_weights_file(model, weights)
        model = distribute.prepare_model(model, strategy)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=settings["lr"]),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=jit_compile,
        )
    return model


def train(args):
    """Runs one training; returns `(run folder, trained model)`. A worker of a
    cluster that is not the chief returns `None` as its run folder.

    A run that fails or is interrupted before its first epoch is recorded
    leaves no run folder behind."""
    check_flags(args)
    settings, run_dir = resolve_settings(args)
    from keras_parnet import _cli, data, distribute, runs
    from keras_parnet.callbacks import HISTORY_FILE, read_backup, training_callbacks

    enable_gpu_memory_growth()
    strategy = distribute.make_strategy(args.strategy)  # before any other TensorFlow op
    chief = distribute.is_chief(strategy)
    if run_dir is not None and chief:
        epochs_done, _ = read_backup(run_dir)
        if settings["epochs"] <= epochs_done:
            raise TrainError(f"nothing to do: the run {run_dir} has {epochs_done} epochs done; "
                             f"pass a larger --epochs than {settings['epochs']}.")
    dataset_dir = Path(settings["dataset"])
    class_names = data.check_dataset(dataset_dir)
    augmentation = augmentation_from_args(args)
    train_data, test_data = distributed_datasets(settings, args, dataset_dir, class_names, augmentation, strategy)
    if run_dir is None and chief:  # after the dataset's checks: a bad dataset leaves no logs folder
        _cli.output_dir(args.logs_dir, "--logs-dir")

    model_name, model_kwargs = model_spec(settings)
    with distribute.scratch_dir_unless_chief(strategy) as scratch:
        new_run = run_dir is None
        if new_run:
            run_dir = scratch or (Path(args.logs_dir) / args.run_name if args.run_name
                                  else runs.new_run_dir(args.logs_dir, model_name))
            if (run_dir / runs.RUN_FILE).exists():
                raise TrainError(f"{run_dir} holds a run already: pass --resume {run_dir} or another --run-name.")
            training = {**settings, "augmentation": dataclasses.asdict(augmentation)}
            config = runs.run_config(model_name, model_kwargs, settings["image_size"], class_names,
                                     training=training)
        else:
            config = runs.read_run(run_dir)
            if config["class_names"] != class_names:
                raise TrainError(f"{dataset_dir} has other classes than the run {run_dir} being resumed.")
        created = new_run and not run_dir.exists()
        try:
            if args.analyze and chief:
                from keras_parnet.analyze import analyze_dataset, format_analysis

                print(format_analysis(analyze_dataset(dataset_dir, out_dir=run_dir / "analysis")), end="")
            # Start weights are read by the chief only: they reach every worker when training starts.
            model = compiled_model(config, settings, strategy, args.weights if chief else None,
                                   args.jit_compile)
            if new_run:
                runs.save_run(run_dir, config)
            callbacks = training_callbacks(
                scratch or run_dir, settings["lr"], settings["lr_decay"], settings["patience"],
                args.restore_best_weights, args.tensorboard_dir if chief else None)
            print(f"Run folder: {run_dir}" if chief else
                  f"The chief writes the run folder; this worker writes to {scratch} (removed at the end).")
            # The datasets shuffle themselves; fit's own shuffle does not apply to them.
            history = model.fit(train_data, validation_data=test_data, epochs=settings["epochs"],
                                callbacks=callbacks, shuffle=False)
        except BaseException as error:
            kept = not created or (run_dir / HISTORY_FILE).exists()
            if not kept:
                shutil.rmtree(run_dir, ignore_errors=True)
            resume_dir = (run_dir if chief else "<the chief's run folder>") if kept else None
            raise stopped_training(error, resume_dir, settings) from None
    if not chief:
        return None, model
    summarize(history.history, run_dir)
    return run_dir, model


def stopped_training(error, run_dir, settings):
    """What to raise when training stopped on `error`: a message saying what
    the run folder `run_dir` kept (`None`: nothing kept) and how to continue."""
    from keras_parnet._cli import describe_os_error
    from keras_parnet.callbacks import TrainingDiverged

    resume = f"python train.py --resume {run_dir}"
    if isinstance(error, KeyboardInterrupt):
        print("\nInterrupted. " + (f"Completed epochs are saved; continue with:\n  {resume}" if run_dir else
                                   "No epoch was completed: nothing is saved."), file=sys.stderr)
        return SystemExit(130)
    if isinstance(error, TrainingDiverged):
        lower = f"--lr {settings['lr'] / 10:g}"
        if run_dir:
            return TrainError(f"{error}: training stopped and the epoch was not recorded. Continue from the last "
                              f"good epoch with a lower learning rate: {resume} {lower}")
        return TrainError(f"{error}: training stopped and nothing is saved; try a lower learning rate ({lower}).")
    if isinstance(error, OSError) and run_dir:
        return TrainError(f"{describe_os_error(error)} Completed epochs are saved; continue with: {resume}")
    return error


def summarize(history, run_dir):
    from keras_parnet.runs import BEST_WEIGHTS

    accuracies = history.get("val_accuracy") or []
    if not accuracies:
        print(f"Done. Weights in {run_dir}.")
        return
    best = max(range(len(accuracies)), key=accuracies.__getitem__)
    print(f"Done: best val_accuracy {accuracies[best]:.4f} (epoch {best + 1} of this session); "
          f"best val_loss weights: {Path(run_dir) / BEST_WEIGHTS}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_parnet._cli import run_tool
    from keras_parnet.data import DatasetError
    from keras_parnet.runs import RunError

    def body():
        train(args)

    return run_tool(body, (DatasetError, RunError, TrainError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
