"""Train ParNet on a `flow_from_directory` folder (the command line is
`parnet-train`, `keras_parnet.cli.train`):

    dataset/<name>/train/<class>/*.jpg
    dataset/<name>/val/<class>/*.jpg     optional, else a seeded fraction of train/
    dataset/<name>/test/<class>/*.jpg    left for evaluation

Each run writes `logs/<run-name>/` (see `keras_parnet.runs`). Several GPUs or
machines train one model with a `tf.distribute` strategy (see
`keras_parnet.distribute`); the batch size is per replica. Progress goes to
the `keras_parnet` logger.
"""

# Imports only the standard library at module level: the command line reads
# its defaults from here to answer --help without loading TensorFlow.
import dataclasses
import logging
import math
import shutil
from pathlib import Path

DEFAULT_DATASET = "./dataset/data1_dog_cat"
DEMO_DATASET = "dataset/demo_faces"

# The original recipe: the settings `train` takes, with "dataset".
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
    "val_split": 0.1,
    "activation": "silu",
    "freeze_epochs": 0,
    "fine_tune_lr": None,
    "class_weight": None,
    "optimizer": "adam",
    "weight_decay": 0.0,
    "momentum": 0.9,
    "schedule": "exp",
    "warmup_epochs": 0,
    "label_smoothing": 0.0,
    "ema": None,
    "randaugment": None,
    "random_erasing": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "sync_bn": True,
}
# The embedded demo trains in a few minutes on a CPU.
DEMO_SETTINGS = {
    "widths": [32, 48, 64, 128],
    "small_input": True,
    "image_size": 32,
    "epochs": 15,
}
MAX_IMAGE_SIZE = 2048  # one 2048 px image already takes gigabytes of activations in training
# The seed of the --val-split draw when no --seed is given.
DEFAULT_SPLIT_SEED = 0
# Settings that fix the network's shape: a resumed run keeps its own.
ARCHITECTURE_SETTINGS = ("model", "widths", "image_size", "small_input", "activation")
# With --freeze-epochs and no --fine-tune-lr, the whole network trains at --lr divided by this.
FINE_TUNE_LR_DIVISOR = 10
# "randaugment" is a magnitude on timm's scale, 0 to this (rand-m9: 9).
RANDAUGMENT_MAGNITUDES = 10
# The augmentation settings at their defaults, off (what --no-augment sets).
AUGMENTATION_OFF = {key: DEFAULTS[key] for key in ("randaugment", "random_erasing", "mixup", "cutmix")}
# "optimizer": Keras' Adam, SGD with momentum, SGD with Nesterov momentum (timm's "sgd"), AdamW.
OPTIMIZERS = ("adam", "sgd", "nesterov", "adamw")
# "schedule": `lr_decay` per epoch, or a cosine over the epochs after `warmup_epochs`.
SCHEDULES = ("exp", "cosine")

logger = logging.getLogger(__name__)


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


def model_spec(settings):
    """`(builder name, builder kwargs)` for run.json and `runs.build_model`."""
    from keras_parnet.models import BUILDERS, MODEL_CONFIGS

    name = BUILDERS[settings["model"]].__name__
    kwargs = {"small_input": bool(settings["small_input"]), "activation": settings["activation"]}
    if settings["dropout"] is not None:
        kwargs["dropout"] = settings["dropout"]
    if settings["widths"]:
        kwargs = {"widths": list(settings["widths"]), "dropout": MODEL_CONFIGS[name]["dropout"], **kwargs}
        name = "ParNet"
    return name, kwargs


def start_from(weights):
    """`(weights file, run config or None)` to start a new run from: a
    weights file as given, or a run folder's `best.weights.h5` and its
    run.json (whose architecture `run_architecture` reads and whose
    preprocessing the new run takes).

    Raises:
        TrainError: a folder without run.json or without best.weights.h5.
    """
    from keras_parnet import runs

    path = Path(weights).expanduser()
    if not path.is_dir():
        return path, None
    if not (path / runs.RUN_FILE).is_file():
        raise TrainError(f"{path} is a folder without {runs.RUN_FILE}: pass a run folder (written by train or "
                         "convert) or a weights file.")
    config = runs.read_run(path)
    weights_file = path / runs.BEST_WEIGHTS
    if not weights_file.is_file():
        raise TrainError(f"{weights_file} not found: the run {path} has not finished an epoch; pass one of its "
                         "epoch checkpoints as --weights FILE, or another run folder.")
    return weights_file, config


def run_architecture(config):
    """The settings that rebuild a run's network (`model`, `widths`,
    `small_input`, `activation`, `dropout`), from its run.json."""
    from keras_parnet.models import BUILDERS
    from keras_parnet.runs import RunError

    kwargs = config["model_kwargs"]
    sizes = {builder.__name__: size for size, builder in BUILDERS.items()}
    if config["model"] == "ParNet":
        model, widths = DEFAULTS["model"], [int(width) for width in kwargs["widths"]]
    elif config["model"] in sizes:
        model, widths = sizes[config["model"]], None
    else:
        raise RunError(f"unknown model '{config['model']}' in run config: expected ParNet or one of "
                       f"{sorted(sizes)}.")
    return {"model": model, "widths": widths, "small_input": bool(kwargs.get("small_input", False)),
            "activation": kwargs.get("activation", DEFAULTS["activation"]), "dropout": kwargs.get("dropout")}


def balanced_class_weights(train_paths, class_names):
    """`{label: weight}` with scikit-learn's "balanced" formula,
    `n_samples / (n_classes * count of the class)`, over the training images
    (each below `train/<class>/`)."""
    counts = [0] * len(class_names)
    for path in train_paths:
        counts[class_names.index(Path(path).parent.name)] += 1
    return {label: len(train_paths) / (len(class_names) * count) for label, count in enumerate(counts)}


def fine_tune_lr(settings):
    """The learning rate of the first epoch after `freeze_epochs`."""
    return settings["fine_tune_lr"] or settings["lr"] / FINE_TUNE_LR_DIVISOR


def enable_gpu_memory_growth():
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


def distributed_datasets(settings, dataset_dir, class_names, augmentation, strategy, seed=None, cache=False,
                         splits=None, crop_fraction=None, class_weight=None):
    """`(train, validation)` datasets for `fit` under `strategy`, over the
    `(train paths, validation paths, record)` of `data.dataset_splits`, decoded
    with the run's `crop_fraction` (converted runs' center crop), each training
    image's loss weighed by `class_weight[label]` when given.

    A step's global batch is `batch_size` images per replica. In a cluster
    every worker takes its own contiguous part of each global batch from the
    common shuffled file list and decodes only those images
    (`data.make_dataset(shard=...)`), batched per replica by
    `distribute_datasets_from_function` (no auto-sharding). Every worker
    validates on every validation image: Keras sums the metrics' totals and
    counts across workers, so the loss and accuracy are those of the
    validation split; sharded, a split that does not divide evenly would give
    the workers different numbers of steps, and each step all-reduces.
    """
    import tensorflow as tf

    from keras_parnet import data, distribute

    train_files, val_files, record = splits
    replicas = strategy.num_replicas_in_sync
    global_batch = settings["batch_size"] * replicas
    # Keras gives every replica's mean loss the same weight, so the images of a
    # smaller last batch, split unevenly across replicas, would count more than others.
    drop_remainder = replicas > 1
    train_seed = distribute.shared_seed(strategy, seed)
    counts = {}

    def train_dataset(shard=None):
        dataset, _, counts["train"] = data.make_dataset(
            dataset_dir / "train", settings["image_size"], global_batch, class_names, training=True,
            augmentation=augmentation, seed=train_seed, cache=cache, files=train_files,
            crop_fraction=crop_fraction, shard=shard, drop_remainder=drop_remainder,
            randaugment=settings["randaugment"], random_erasing=settings["random_erasing"],
            mixup=settings["mixup"], cutmix=settings["cutmix"])
        return with_class_weight(dataset, class_weight) if class_weight else dataset

    def val_dataset(batch_size=global_batch):
        dataset, _, counts["val"] = data.make_dataset(
            dataset_dir / record["folder"], settings["image_size"], batch_size, class_names, cache=cache,
            files=val_files, crop_fraction=crop_fraction)
        return dataset

    def worker_train_dataset(context):
        dataset = train_dataset(shard=(context.num_input_pipelines, context.input_pipeline_id))
        worker_replicas = replicas // context.num_input_pipelines
        # Rebatching forgets the number of batches, which Keras counts the steps from.
        return dataset.rebatch(context.get_per_replica_batch_size(global_batch), drop_remainder=True).apply(
            tf.data.experimental.assert_cardinality(counts["train"] // global_batch * worker_replicas))

    if distribute.worker_count(strategy) > 1:
        train_data = strategy.distribute_datasets_from_function(worker_train_dataset)
        val_data = strategy.distribute_datasets_from_function(
            lambda context: val_dataset(context.get_per_replica_batch_size(global_batch)))
    else:
        train_data, val_data = train_dataset(), val_dataset()
        if replicas > 1:
            train_data, val_data = distribute.shard_by_data(train_data), distribute.shard_by_data(val_data)
    logger.info("%d training and %d validation images (%s) in %d classes: %s", counts["train"], counts["val"],
                describe_validation(record), len(class_names), ", ".join(class_names))
    steps = counts["train"] // global_batch if drop_remainder else math.ceil(counts["train"] / global_batch)
    if steps == 0:
        raise TrainError(f"{counts['train']} training images do not fill one step of {global_batch} images "
                         f"({settings['batch_size']} per replica x {replicas} replicas): lower --batch-size.")
    logger.info("Training on %s: batch size %d per replica, %d global, %d steps per epoch",
                distribute.describe(strategy), settings["batch_size"], global_batch, steps)
    return train_data, val_data


def with_class_weight(dataset, class_weight):
    """`dataset`'s `(images, one-hot labels)` batches with a third element, the
    sample weights `class_weight[label]`, as `fit(class_weight=...)` adds them
    (which `fit` cannot do to a dataset already distributed across workers).
    Labels mixed by MixUp or CutMix weigh alike: `lam * class_weight[i] +
    (1 - lam) * class_weight[j]`."""
    import tensorflow as tf

    weights = tf.constant([class_weight[label] for label in range(len(class_weight))], tf.float32)
    return dataset.map(lambda images, labels: (images, labels, tf.linalg.matvec(labels, weights)))


def describe_validation(record):
    """Where a run's validation images come from, from its `validation` record."""
    if record["folder"] == "train":
        return f"{record['fraction']:g} of train/, seed {record['seed']}"
    if record["folder"] == "test":
        return "test/, which then also selects the checkpoint"
    return f"{record['folder']}/"


def make_optimizer(settings, variables):
    """The Keras optimizer `settings` name ("optimizer", "lr", "momentum",
    "weight_decay", "ema"). Weight decay is Keras' decoupled one
    (`w -= lr * weight_decay * w` each step) and, as in timm, spares the 1-D
    weights among `variables` (biases, BatchNorm's scale and offset). With
    "ema", the optimizer also keeps an exponential moving average of the
    weights (`use_ema`, `ema_momentum` the decay)."""
    import keras

    decay = settings["weight_decay"]
    ema = {"use_ema": True, "ema_momentum": settings["ema"]} if settings["ema"] is not None else {}
    name = settings["optimizer"]
    if name in ("sgd", "nesterov"):
        optimizer = keras.optimizers.SGD(settings["lr"], momentum=settings["momentum"], nesterov=name == "nesterov",
                                         weight_decay=decay or None, **ema)
    elif name == "adamw":
        optimizer = keras.optimizers.AdamW(settings["lr"], weight_decay=decay, **ema)
    else:
        optimizer = keras.optimizers.Adam(settings["lr"], weight_decay=decay or None, **ema)
    if decay:
        optimizer.exclude_from_weight_decay(var_list=[variable for variable in variables if len(variable.shape) <= 1])
    return optimizer


def compile_for_training(model, optimizer, label_smoothing=0.0, jit_compile=False):
    """Compiles `model` for one-hot labels as train.py does (cross-entropy
    with `label_smoothing`, accuracy) and creates the optimizer's and the
    metric's variables now, on every trainable weight: variables created while
    `fit` traces the first training step make TensorFlow trace it twice (Keras
    builds an unbuilt optimizer there, and makes the metric "accuracy" there
    once it has seen the labels). Measured by benchmarks/bench_first_step.py.
    Built on every weight, the optimizer's state also has one layout before and
    after --freeze-epochs' switch, so that a backup of any epoch resumes."""
    import keras

    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )
    model.optimizer.build(model.trainable_variables)
    return model


def compiled_model(config, settings, strategy, weights=None, jit_compile=False):
    """The model of a run `config`, built and compiled in `strategy`'s scope
    (in mixed precision if `settings["mixed_precision"]`), starting from the
    tensors of the `weights` file that match (`models.load_matching_weights`)
    if given, with the optimizer of `make_optimizer`, compiled by
    `compile_for_training` with `settings["label_smoothing"]`; with
    `settings["freeze_epochs"]` the backbone starts frozen
    (`callbacks.freeze_backbone`)."""
    from keras_parnet import distribute, runs
    from keras_parnet.callbacks import freeze_backbone
    from keras_parnet.models import load_matching_weights

    policy = distribute.mixed_precision_policy() if settings["mixed_precision"] else None
    if policy:
        logger.info("Mixed precision: %s", policy)
    with strategy.scope():
        with distribute.dtype_policy(policy):
            model = runs.build_model(config)
        if weights:
            load_matching_weights(model, weights)
        model = distribute.prepare_model(model, strategy, settings["sync_bn"])
        compile_for_training(model, make_optimizer(settings, model.trainable_variables),
                             settings["label_smoothing"], jit_compile)
        if settings["freeze_epochs"]:
            freeze_backbone(model, True)
    return model


def train(settings, logs_dir="logs", run_name=None, resume_dir=None, augmentation=None, weights=None,
          strategy="auto", seed=None, cache=False, analyze=False, restore_best_weights=False,
          tensorboard_dir=None, jit_compile=False, command_config=None):
    """Runs one training; returns `(run folder, trained model)`. A worker of a
    cluster that is not the chief returns `None` as its run folder.

    Args:
        settings: every key of `DEFAULTS`, and "dataset" (a folder holding
            train/, test/ and maybe val/); a resumed run's come from its
            run.json. Validation images (early stopping, best.weights.h5) are
            val/, else the "val_split" fraction of train/ (drawn with `seed`,
            recorded in run.json's `validation`, and kept when resumed), else
            (0) test/; see `keras_parnet.data.dataset_splits`.
        logs_dir: where a new run folder goes.
        run_name: the new run folder's name (default `<date-time>-<model>`).
        resume_dir: a run folder to continue instead of starting a new one.
        augmentation: a `keras_parnet.data.Augmentation` for the training
            images (default: `Augmentation()`).
        weights: a weights file to start from, or a run folder (its
            best.weights.h5; the new run takes its preprocessing, and
            `settings` must hold its architecture: `run_architecture`).
            Every tensor that matches by name and shape is loaded; a
            classifier of another class count starts afresh.
        strategy: a `keras_parnet.distribute.make_strategy` name.
        seed: seed for shuffling, augmentation and the validation split
            (that one `DEFAULT_SPLIT_SEED` when `None`).
        cache: cache decoded images in memory.
        analyze: check the dataset first and write its plots to
            `<run>/analysis/`.
        restore_best_weights: end with the weights of the best epoch.
        tensorboard_dir: TensorBoard folder (default `<run>/tensorboard`).
        jit_compile: compile the training steps with XLA.
        command_config: the command line's resolved flags, written to a new
            run's config.json (`runs.CONFIG_FILE`).

    A run that fails or is interrupted before its first epoch is recorded
    leaves no run folder behind. The exception that stops training carries
    `resume_dir`: the run folder keeping the completed epochs, or `None`
    when nothing was kept.
    """
    from keras_parnet import data, distribute, runs
    from keras_parnet.callbacks import HISTORY_FILE, read_backup, training_callbacks
    from keras_parnet.files import output_dir

    run_dir = Path(resume_dir) if resume_dir is not None else None
    augmentation = augmentation or data.Augmentation()
    enable_gpu_memory_growth()
    strategy = distribute.make_strategy(strategy)  # before any other TensorFlow op
    chief = distribute.is_chief(strategy)
    if run_dir is not None and chief:
        epochs_done, _ = read_backup(run_dir)
        if settings["epochs"] <= epochs_done:
            raise TrainError(f"nothing to do: the run {run_dir} has {epochs_done} epochs done; "
                             f"pass a larger --epochs than {settings['epochs']}.")
    dataset_dir = Path(settings["dataset"])
    class_names = data.check_dataset(dataset_dir)
    # A resumed run keeps its validation images; runs from before val splits validated on test/.
    recorded = runs.read_run(run_dir).get("validation", {"folder": "test"}) if run_dir is not None else None
    splits = data.dataset_splits(dataset_dir, class_names, settings["val_split"],
                                 DEFAULT_SPLIT_SEED if seed is None else seed, recorded)
    start_config = None
    if weights is not None:
        weights, start_config = start_from(weights)
    if run_dir is not None:
        preprocessing = runs.read_run(run_dir)["preprocessing"]
    else:
        preprocessing = dict((start_config or {}).get("preprocessing", runs.DEFAULT_PREPROCESSING))
    class_weight = None
    if settings["class_weight"] == "balanced":
        class_weight = balanced_class_weights(splits[0], class_names)
        logger.info("Class weights (balanced): %s", ", ".join(
            f"{name} {class_weight[label]:.3f}" for label, name in enumerate(class_names)))
    train_data, val_data = distributed_datasets(settings, dataset_dir, class_names, augmentation, strategy,
                                                seed, cache, splits, preprocessing.get("crop_fraction"),
                                                class_weight)
    if run_dir is None and chief:  # after the dataset's checks: a bad dataset leaves no logs folder
        output_dir(logs_dir, "--logs-dir")

    model_name, model_kwargs = model_spec(settings)
    with distribute.scratch_dir_unless_chief(strategy) as scratch:
        new_run = run_dir is None
        if new_run:
            run_dir = scratch or (Path(logs_dir) / run_name if run_name
                                  else runs.new_run_dir(logs_dir, model_name))
            if (run_dir / runs.RUN_FILE).exists():
                raise TrainError(f"{run_dir} holds a run already: pass --resume {run_dir} or another --run-name.")
            training = {**settings, "augmentation": dataclasses.asdict(augmentation)}
            if settings["freeze_epochs"]:
                training["fine_tune_lr"] = fine_tune_lr(settings)
            started = {"start_weights": str(weights)} if weights is not None else {}
            config = runs.run_config(model_name, model_kwargs, settings["image_size"], class_names,
                                     preprocessing, training=training, validation=splits[2], **started)
        else:
            config = runs.read_run(run_dir)
            if config["class_names"] != class_names:
                raise TrainError(f"{dataset_dir} has other classes than the run {run_dir} being resumed.")
        created = new_run and not run_dir.exists()
        try:
            if analyze and chief:
                from keras_parnet.analyze import analyze_dataset, format_analysis

                analysis = analyze_dataset(dataset_dir, out_dir=run_dir / "analysis", validation=splits[2])
                logger.info(format_analysis(analysis).rstrip())
            # Start weights are read by the chief only: they reach every worker when training starts.
            model = compiled_model(config, settings, strategy, weights if chief else None, jit_compile)
            if new_run:
                runs.save_run(run_dir, config)
                if command_config is not None:
                    runs.write_json(run_dir / runs.CONFIG_FILE, command_config)
            callbacks = training_callbacks(
                scratch or run_dir, settings["lr"], settings["lr_decay"], settings["patience"],
                restore_best_weights, tensorboard_dir if chief else None, settings["freeze_epochs"],
                fine_tune_lr(settings), settings["schedule"], settings["epochs"], settings["warmup_epochs"],
                settings["ema"] is not None)
            if chief:
                logger.info("Run folder: %s", run_dir)
            else:
                logger.info("The chief writes the run folder; this worker writes to %s (removed at the end).",
                            scratch)
            # The datasets shuffle themselves; fit's own shuffle does not apply to them.
            history = model.fit(train_data, validation_data=val_data, epochs=settings["epochs"],
                                callbacks=callbacks, shuffle=False)
        except BaseException as error:
            kept = not created or (run_dir / HISTORY_FILE).exists()
            if not kept:
                shutil.rmtree(run_dir, ignore_errors=True)
            error.resume_dir = (run_dir if chief else "<the chief's run folder>") if kept else None
            raise
    if not chief:
        return None, model
    summarize(history.history, run_dir)
    return run_dir, model


def summarize(history, run_dir):
    """Logs the best validation accuracy of a finished training."""
    from keras_parnet.runs import BEST_WEIGHTS

    accuracies = history.get("val_accuracy") or []
    if not accuracies:
        logger.info("Done. Weights in %s.", run_dir)
        return
    best = max(range(len(accuracies)), key=accuracies.__getitem__)
    logger.info("Done: best val_accuracy %.4f (epoch %d of this session); best val_loss weights: %s",
                accuracies[best], best + 1, Path(run_dir) / BEST_WEIGHTS)
