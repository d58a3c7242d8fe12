"""Train ParNet on a `flow_from_directory` folder: `parnet-train --help`.

    dataset/<name>/train/<class>/*.jpg
    dataset/<name>/val/<class>/*.jpg     optional, else --val-split of train/
    dataset/<name>/test/<class>/*.jpg    for evaluate only

Without a dataset, the embedded demo (`dataset/demo_faces`, faces vs
non-faces) trains with small settings in a few minutes on a CPU. The
training itself: `keras_parnet.train`.
"""

import argparse
import difflib
import json
import sys
from pathlib import Path

from keras_parnet.cli import _common

TOOL = "train"
ARCHITECTURE_FLAGS = {"model": "--model", "widths": "--widths", "image_size": "--image-size",
                      "activation": "--activation",
                      "small_input": "--small-input"}
# A resumed run's backup holds the state of its optimizer (with EMA variables or not).
OPTIMIZER_STATE_FLAGS = {"optimizer": "--optimizer", "ema": "--ema"}
AUGMENTATION_FLAGS = ("rotation", "width_shift", "height_shift", "shear", "zoom", "fill_mode")
# Flags that pick the run folder rather than what trains: config.json leaves
# them out (a run trained again from it gets its own folder), and --resume
# and --config cannot be set in a config file.
RUN_CONTROL_FLAGS = ("resume", "config", "run_name", "tensorboard_dir")
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def build_parser():
    # The library module imports TensorFlow only when it trains.
    from keras_parnet.configs import MIN_INPUT_SIZE
    from keras_parnet.recipes import RECIPES
    from keras_parnet.train import DEFAULT_DATASET, DEFAULTS, DEMO_DATASET, DEMO_SETTINGS, FINE_TUNE_LR_DIVISOR, \
        MAX_IMAGE_SIZE, OPTIMIZERS, RANDAUGMENT_MAGNITUDES, SCHEDULES

    parser = _common.make_parser(
        TOOL, "Train ParNet on dataset/<name>/{train,val,test}/<class>/ images (val/ optional). "
        f"With no arguments and no {DEFAULT_DATASET}, trains on the embedded demo dataset.")
    data = parser.add_argument_group("data")
    _common.add_dataset_argument(data, f"{_common.DATASET_HELP} (default {DEFAULT_DATASET})")
    data.add_argument("--demo", action="store_true",
                      help=f"train on the embedded demo ({DEMO_DATASET}) with the demo settings")
    _common.add_image_size_argument(
        data, f"square input size, pixels, {MIN_INPUT_SIZE} to {MAX_IMAGE_SIZE} "
        f"(default {DEFAULTS['image_size']}, demo {DEMO_SETTINGS['image_size']})")
    _common.add_batch_size_argument(
        data, None, f"images per replica and step (default {DEFAULTS['batch_size']}); a step trains on this "
        "times the number of replicas (GPUs, or workers in a cluster)")
    _common.deprecated(data, "--batch", "--batch-size", type=_common.positive_int, metavar="N")
    data.add_argument("--val-split", type=_common.fraction_below_one, metavar="FRACTION",
                      help="without a val/ folder, hold out this fraction of each class of train/ (at least one "
                      f"image) to select the checkpoint and stop early, drawn with --seed (default "
                      f"{DEFAULTS['val_split']:g}; recorded in run.json, kept by --resume); 0: test/ selects "
                      "the checkpoint (the original recipe, its test accuracy is then optimistic)")
    data.add_argument("--analyze", action="store_true",
                      help="check the dataset first (class counts, image sizes, duplicates across train/val/test, "
                      "unreadable files) and write its plots to <run>/analysis/")
    data.add_argument("--cache", action="store_true", help="cache decoded images in memory")
    data.add_argument("--seed", type=_common.non_negative_int, metavar="N",
                      help="random seed for shuffling, augmentation and the --val-split draw (that one 0 by default)")

    augment = parser.add_argument_group("augmentation (training data only)")
    augment.add_argument("--no-augment", action="store_true",
                         help="switch every augmentation off, --randaugment, --random-erasing, --mixup and "
                         "--cutmix too")
    augment.add_argument("--rotation", type=_common.non_negative_float, metavar="DEGREES",
                         help="max rotation (default 50)")
    augment.add_argument("--width-shift", type=_common.fraction, metavar="FRACTION",
                         help="max shift, fraction of width (default 0.1)")
    augment.add_argument("--height-shift", type=_common.fraction, metavar="FRACTION",
                         help="max shift, fraction of height (default 0.1)")
    augment.add_argument("--shear", type=_common.non_negative_float, metavar="DEGREES",
                         help="max shear (default 10)")
    augment.add_argument("--zoom", type=_common.fraction, metavar="FRACTION",
                         help="zoom range, scale in [1-z, 1+z] (default 0.1)")
    augment.add_argument("--no-flip", action="store_true", help="no random horizontal flip")
    augment.add_argument("--brightness", type=_common.positive_float, nargs=2, metavar=("LOW", "HIGH"),
                         help="brightness factor range (default 0.7 1.3)")
    augment.add_argument("--no-brightness", action="store_true", help="no brightness change")
    augment.add_argument("--fill-mode", choices=("nearest", "constant", "reflect", "wrap"),
                         help="how to fill pixels moved in by the transform (default nearest)")
    augment.add_argument("--randaugment", type=_common.non_negative_float, metavar="M",
                         help=f"keras.layers.RandAugment on each image at timm's magnitude M, 0 to "
                         f"{RANDAUGMENT_MAGNITUDES} (rand-m9: 9): two operations of strength up to M/"
                         f"{RANDAUGMENT_MAGNITUDES} (default off)")
    augment.add_argument("--random-erasing", type=_common.fraction, metavar="PROBABILITY",
                         help="fill a random box of each image with noise at this probability "
                         "(keras.layers.RandomErasing; default 0: off)")
    augment.add_argument("--mixup", type=_common.non_negative_float, metavar="ALPHA",
                         help="blend each image and its label with another of the batch, weights drawn from "
                         "Beta(ALPHA, ALPHA) (keras.layers.MixUp; default 0: off)")
    augment.add_argument("--cutmix", type=_common.non_negative_float, metavar="ALPHA",
                         help="paste a box of another image of the batch into each image, labels weighed by "
                         "area, Beta(ALPHA, ALPHA) with ALPHA at most 1 (keras.layers.CutMix; default 0: off); "
                         "with --mixup, each batch gets one of the two")

    model = parser.add_argument_group("model")
    _common.add_architecture_arguments(model, "s")
    model.add_argument("--dropout", type=_common.fraction, metavar="RATE",
                       help="dropout before the classifier, below 1 (default: the size's)")
    _common.add_activation_argument(model, f"block activation of a new model (default {DEFAULTS['activation']}, "
                                    "as in the paper; a run folder given to --weights brings its own)")
    _common.add_weights_argument(
        model, "start from these weights (.weights.h5, legacy .h5 or .keras), or from a run folder (written by "
        "train or convert), whose architecture and preprocessing the new run takes; every tensor that matches "
        "by name and shape loads, and a classifier of another class count starts afresh")

    recipe = parser.add_argument_group("recipe and config file")
    recipe.add_argument("--recipe", choices=tuple(RECIPES),
                        help="a set of training settings: 'original' (the default: Adam, x0.95 per epoch) or "
                        "'paper' (the official ParNet-S ImageNet command: Nesterov SGD, cosine, label smoothing, "
                        "EMA, RandAugment, random erasing, 120 epochs of 128 images per replica at 224 px); "
                        "the demo's sizes and epochs, --config and flags override it")
    recipe.add_argument("--config", metavar="FILE",
                        help="a .json or .yaml file of flag names with _ for - and their values (e.g. lr: 0.01), "
                        "above --recipe and below flags given; a run's <run>/config.json trains it again")

    fit = parser.add_argument_group("optimisation")
    fit.add_argument("--epochs", type=_common.positive_int, metavar="N",
                     help=f"epochs (default {DEFAULTS['epochs']}, demo {DEMO_SETTINGS['epochs']})")
    fit.add_argument("--optimizer", choices=OPTIMIZERS,
                     help="Keras optimizer: adam, sgd (with --momentum), nesterov (SGD with Nesterov momentum, "
                     f"timm's 'sgd') or adamw (default {DEFAULTS['optimizer']})")
    fit.add_argument("--lr", type=_common.positive_float, metavar="RATE",
                     help=f"learning rate of epoch 1, or of the first after --warmup-epochs (default "
                     f"{DEFAULTS['lr']:g})")
    fit.add_argument("--schedule", choices=SCHEDULES,
                     help="learning rate per epoch: exp multiplies it by --lr-decay each epoch, cosine follows "
                     "half a cosine from --lr towards 0 over the epochs after --warmup-epochs (default "
                     f"{DEFAULTS['schedule']})")
    fit.add_argument("--lr-decay", type=_common.positive_float, metavar="FACTOR",
                     help=f"with --schedule exp, learning rate factor per epoch, at most 1 (default "
                     f"{DEFAULTS['lr_decay']:g})")
    fit.add_argument("--warmup-epochs", type=_common.non_negative_int, metavar="N",
                     help="with --schedule cosine, raise the learning rate linearly over the first N epochs, "
                     "epoch k at --lr * (k+1)/(N+1) (default 0)")
    fit.add_argument("--momentum", type=_common.fraction_below_one, metavar="M",
                     help=f"momentum of --optimizer sgd and nesterov (default {DEFAULTS['momentum']:g})")
    fit.add_argument("--weight-decay", type=_common.non_negative_float, metavar="RATE",
                     help="decoupled weight decay, each step w -= lr * RATE * w, biases and BatchNorm spared "
                     "(default 0)")
    fit.add_argument("--label-smoothing", type=_common.fraction_below_one, metavar="EPSILON",
                     help="train on labels (1 - EPSILON) * one-hot + EPSILON / classes (default 0)")
    fit.add_argument("--ema", type=_common.fraction_below_one, nargs="?", const=0.9999, metavar="DECAY",
                     help="keep an exponential moving average of the weights, each step average = DECAY * "
                     "average + (1 - DECAY) * weights (default DECAY 0.9999, about the last 10,000 steps); "
                     "validation, checkpoints, best.weights.h5 and evaluate use the average")
    fit.add_argument("--patience", type=_common.non_negative_int, metavar="EPOCHS",
                     help=f"early stopping patience on val_loss (default {DEFAULTS['patience']})")
    fit.add_argument("--freeze-epochs", type=_common.non_negative_int, metavar="N",
                     help="train only the classifier for the first N epochs, the backbone frozen (BatchNorm "
                     "in inference mode), then the whole network at --fine-tune-lr (default 0)")
    fit.add_argument("--fine-tune-lr", type=_common.positive_float, metavar="RATE",
                     help="learning rate of the first epoch after --freeze-epochs, following --schedule from "
                     f"there (default --lr / {FINE_TUNE_LR_DIVISOR})")
    fit.add_argument("--class-weight", choices=("balanced",),
                     help="weigh each class's loss by n_images / (n_classes * its images in the training "
                     "split), scikit-learn's 'balanced', for imbalanced folders (default: equal weights)")
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
    scale.add_argument("--no-sync-bn", dest="sync_bn", action="store_false", default=None,
                       help="with several replicas, BatchNorm normalizes each replica's part of the batch with "
                       "its own statistics and keeps its own moving statistics (the chief saves its own), "
                       "instead of the global batch's: no all-reduce per layer and step, which between "
                       "machines costs more than the layer (kept by --resume)")

    run = parser.add_argument_group("run folder")
    _common.add_logs_dir_argument(run, f"{_common.LOGS_DIR_HELP}; new runs go here")
    run.add_argument("--run-name", metavar="NAME", help="run folder name (default <date-time>-<model>)")
    run.add_argument("--tensorboard-dir", metavar="DIR", help="TensorBoard folder (default <run>/tensorboard; "
                     "`tensorboard --logdir logs` shows every run)")
    run.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                     help="continue an interrupted run (default: the newest in --logs-dir)")
    return parser


def check_flags(args, parser):
    """Refuses flag values their types let through but training cannot use."""
    from keras_parnet.configs import MIN_INPUT_SIZE
    from keras_parnet.train import MAX_IMAGE_SIZE, RANDAUGMENT_MAGNITUDES

    if args.lr_decay is not None and args.lr_decay > 1:
        parser.error(f"argument --lr-decay: {args.lr_decay:g} is above 1: it multiplies the learning rate "
                     "once per epoch; pass e.g. 0.95, or 1 for a constant rate")
    if args.image_size is not None and not MIN_INPUT_SIZE <= args.image_size <= MAX_IMAGE_SIZE:
        parser.error(f"argument --image-size: {args.image_size} is outside {MIN_INPUT_SIZE}..{MAX_IMAGE_SIZE} "
                     "px (ParNet's minimum, and the largest this tool trains at): pass e.g. 256")
    if args.fine_tune_lr is not None and not args.freeze_epochs and not args.resume:
        parser.error("argument --fine-tune-lr: it applies after --freeze-epochs: pass --freeze-epochs N too")
    if args.dropout is not None and args.dropout == 1:
        parser.error("argument --dropout: 1 drops every feature: pass a fraction below 1")
    if args.randaugment is not None and args.randaugment > RANDAUGMENT_MAGNITUDES:
        parser.error(f"argument --randaugment: {args.randaugment:g} is above {RANDAUGMENT_MAGNITUDES}, timm's "
                     "largest magnitude: pass e.g. 9 (the paper's)")
    if args.cutmix is not None and args.cutmix > 1:
        parser.error(f"argument --cutmix: {args.cutmix:g} is above 1, the largest alpha keras.layers.CutMix "
                     "takes: pass e.g. 1")
    for flag in ("recipe", "config"):
        if args.resume and getattr(args, flag):
            parser.error(f"argument --{flag}: a resumed run keeps the settings it started with: drop --{flag} "
                         "(flags given with --resume still change single settings)")


def augmentation_from_args(args):
    from keras_parnet.data import Augmentation

    given = {name: getattr(args, name) for name in AUGMENTATION_FLAGS if getattr(args, name) is not None}
    if args.no_augment:
        return Augmentation(rotation=0.0, width_shift=0.0, height_shift=0.0, shear=0.0, zoom=0.0,
                            horizontal_flip=False, brightness=None, fill_mode=given.get("fill_mode", "nearest"))
    if args.no_flip:
        given["horizontal_flip"] = False
    if args.no_brightness:
        given["brightness"] = None
    elif args.brightness is not None:
        given["brightness"] = tuple(args.brightness)
    return Augmentation(**given)


def _as_flag(flag, value):
    if value is True:
        return flag
    if value is None or value is False:
        return f"no {flag}"
    return " ".join([flag, *map(str, value if isinstance(value, list) else [value])])


def resolve_settings(args):
    """`(settings, run folder to resume or None)`. The settings merge, lowest
    first: the defaults, the --recipe's settings, the demo settings (when
    training on the demo), then the flags given (those of a --config file
    included, see `parse_flags`); a resumed run's settings replace all but the
    flags given. A resumed run's architecture flags, --optimizer, --ema and
    --val-split cannot change."""
    from keras_parnet.recipes import RECIPES
    from keras_parnet.runs import find_latest_run, read_run
    from keras_parnet.train import AUGMENTATION_OFF, DEFAULT_DATASET, DEFAULTS, DEMO_DATASET, DEMO_SETTINGS, \
        TrainError, demo_dataset_dir

    settings = dict(DEFAULTS)
    run_dir = None
    if args.resume:
        run_dir = find_latest_run(args.logs_dir) if args.resume == "latest" else Path(args.resume)
        recorded = read_run(run_dir).get("training", {})
        settings.update(recorded)
        for key, flag in {**ARCHITECTURE_FLAGS, **OPTIMIZER_STATE_FLAGS}.items():
            given = getattr(args, key)
            if given is not None and given != settings[key]:
                raise TrainError(f"{run_dir} was trained with {_as_flag(flag, settings[key])}, not "
                                 f"{_as_flag(flag, given)}: drop {flag} to resume it, or start a new run.")
        if args.val_split is not None and args.val_split != recorded.get("val_split", args.val_split):
            raise TrainError(f"{run_dir} was trained with --val-split {recorded['val_split']:g}, not "
                             f"{args.val_split:g}: its validation images are kept as recorded; drop --val-split "
                             "to resume it.")
    elif args.recipe:
        settings.update(RECIPES[args.recipe])
    if not args.resume and (args.demo or (args.dataset is None and not Path(DEFAULT_DATASET).is_dir())):
        if not args.demo:
            print(f"{DEFAULT_DATASET} not found: training on the embedded demo dataset "
                  f"({DEMO_DATASET}, faces vs non-faces) with the demo settings.")
        settings.update(DEMO_SETTINGS, dataset=str(demo_dataset_dir()))
    if not args.resume and args.weights is not None:
        settings.update(start_architecture(args))
    given = {key: value for key, value in vars(args).items() if value is not None}
    settings.update({key: value for key, value in given.items() if key in DEFAULTS or key == "dataset"})
    if args.no_augment:
        settings.update(AUGMENTATION_OFF)
    if settings["warmup_epochs"] and settings["schedule"] != "cosine":
        raise TrainError(f"--warmup-epochs {settings['warmup_epochs']} warms up the cosine schedule, not "
                         f"--schedule {settings['schedule']}: pass --schedule cosine too, or drop --warmup-epochs.")
    settings.setdefault("dataset", DEFAULT_DATASET)
    return settings, run_dir


def start_architecture(args):
    """The architecture settings of the run folder given to --weights (none
    for a weights file); an architecture flag given with another value is an
    error, since the run's weights fit only its own."""
    from keras_parnet.train import TrainError, run_architecture, start_from

    _, config = start_from(args.weights)
    if config is None:
        return {}
    architecture = run_architecture(config)
    for key, flag in ARCHITECTURE_FLAGS.items():
        given = getattr(args, key)
        if key not in architecture or given is None or (key == "model" and architecture["widths"]):
            continue
        if given != architecture[key]:
            raise TrainError(f"{args.weights} holds a model of {_as_flag(flag, architecture[key])}, not "
                             f"{_as_flag(flag, given)}: drop {flag} to start from it (its weights fit only its "
                             "architecture), or pass a weights file to start a new architecture.")
    if args.dropout is not None:
        del architecture["dropout"]
    return architecture


def parse_flags(argv=None):
    """The flags of `argv` (default `sys.argv[1:]`), checked: those given,
    over the values of the --config file, over the parser's defaults."""
    parser = build_parser()
    config_flag = _common.make_parser(TOOL, None, add_help=False)
    config_flag.add_argument("--config")
    config_file = config_flag.parse_known_args(argv)[0].config
    if config_file:
        parser.set_defaults(**read_config(config_file, parser))
    args = parser.parse_args(argv)
    check_flags(args, parser)
    return args


def read_config(path, parser):
    """`{flag dest: value}` of a --config file: a JSON or YAML mapping of
    train's flag names (`_` for `-`) to values as the flags take them, `null`
    for a flag's default. Anything else is a parser error naming the file and
    the key."""
    import yaml

    path = Path(path)
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        parser.error(f"argument --config: {path} is not a {', '.join(CONFIG_SUFFIXES)} file")
    try:
        text = path.read_text()
    except OSError as error:
        parser.error(f"argument --config: {_common.describe_os_error(error)}")
    try:
        values = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        parser.error(f"argument --config: {path} does not parse: {error}")
    if not isinstance(values, dict):
        parser.error(f"argument --config: {path} holds no mapping of flag names to values")
    actions = {}
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help", "resume", "config"):
            actions.setdefault(action.dest, action)
    config = {}
    for key, value in values.items():
        if key not in actions:
            close = difflib.get_close_matches(str(key), actions, n=1)
            hint = f"did you mean {close[0]}?" if close else "keys are train's flag names with _ for -"
            parser.error(f"{path}: unknown key {key!r}: {hint}")
        try:
            config[key] = flag_value(actions[key], value)
        except ValueError as error:
            parser.error(f"{path}: key {key!r}: {error}")
    return config


def flag_value(action, value):
    """`value` of a config file checked and converted as the flag of
    `action` checks and converts its text on the command line.

    Raises:
        ValueError: saying what the flag takes.
    """
    if value is None:
        return None
    if action.nargs == 0:
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
        return value
    several = action.nargs not in (None, "?")
    items = value if isinstance(value, list) else [value]
    if several != isinstance(value, list) or (isinstance(action.nargs, int) and len(items) != action.nargs):
        raise ValueError(f"{value!r} is not {f'a list of {action.nargs}' if several else 'one value'}")
    converted = []
    for item in items:
        if isinstance(item, (bool, list, dict)):
            raise ValueError(f"{item!r} is not a value of {action.option_strings[0]}")
        try:
            item = action.type(str(item)) if action.type else str(item)
        except (argparse.ArgumentTypeError, ValueError) as error:
            raise ValueError(str(error)) from None
        if action.choices is not None and item not in action.choices:
            raise ValueError(f"{item!r} is not one of {', '.join(map(str, action.choices))}")
        converted.append(item)
    return converted if several else converted[0]


def resolved_flags(args, settings):
    """The config.json of a new run: every flag's dest and the value it
    trains with (the resolved settings, the augmentation, the other flags as
    given), but the `RUN_CONTROL_FLAGS`."""
    augmentation = augmentation_from_args(args)
    config = {key: settings.get(key, value) for key, value in vars(args).items() if key not in RUN_CONTROL_FLAGS}
    config.update({key: getattr(augmentation, key) for key in AUGMENTATION_FLAGS},
                  brightness=list(augmentation.brightness) if augmentation.brightness else None,
                  no_brightness=augmentation.brightness is None, no_flip=not augmentation.horizontal_flip,
                  recipe=args.recipe or "original")
    return config


def train_with_flags(args):
    """Runs the training the parsed flags describe; returns what
    `keras_parnet.train.train` returns."""
    from keras_parnet import train

    settings, run_dir = resolve_settings(args)
    try:
        return train.train(
            settings, args.logs_dir, args.run_name, run_dir, augmentation_from_args(args), args.weights,
            args.strategy, args.seed, args.cache, args.analyze, args.restore_best_weights,
            args.tensorboard_dir, args.jit_compile, None if run_dir else resolved_flags(args, settings))
    except BaseException as error:
        raise stopped_training(error, settings) from None


def stopped_training(error, settings):
    """What to raise when training stopped on `error`: a message saying what
    the run folder kept and how to continue."""
    from keras_parnet.callbacks import TrainingDiverged
    from keras_parnet.train import TrainError

    run_dir = getattr(error, "resume_dir", None)
    resume = f"{_common.command(TOOL)} --resume {run_dir}"
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
        return TrainError(f"{_common.describe_os_error(error)} Completed epochs are saved; continue with: {resume}")
    return error


def main(argv=None):
    args = parse_flags(argv)
    _common.quiet_tensorflow()
    from keras_parnet.files import DatasetError
    from keras_parnet.runs import RunError
    from keras_parnet.train import TrainError

    def body():
        train_with_flags(args)

    return _common.run_tool(body, (DatasetError, RunError, TrainError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
