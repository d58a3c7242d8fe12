"""What every command line shares: the flags of the convention (one
definition each), their types, the class-name reader, deprecated spellings,
quiet TensorFlow start-up, the library's messages on the console, and
one-line errors.

This module imports only the standard library: a tool's `--help` and flag
errors must answer without loading TensorFlow.
"""

import argparse
import importlib.abc
import importlib.util
import logging
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path

from keras_parnet.files import OutputError, describe_os_error, output_dir  # noqa: F401 (the tools' API)

MODEL_SIZES = ("s", "m", "l", "xl")
DEFAULT_LOGS_DIR = "logs"
DEFAULT_TOP_K = 5

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


# The command and its parser ----------------------------------------------------


def command(tool):
    """How to start `tool` the way the running tool was started, for `prog` and
    for hints in messages ("continue with `parnet-train --resume ...`"):
    `python train.py` (the checkout's scripts), `python -m
    keras_parnet.cli.train`, or `parnet-train` (the installed commands, and
    the answer when called in-process)."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    if script.suffix != ".py":
        return f"parnet-{tool}"
    try:
        module = script.resolve().with_suffix("").relative_to(_PACKAGE_DIR.parent).parts
    except ValueError:
        module = ()
    if module[:1] == (_PACKAGE_DIR.name,):
        return f"python -m {'.'.join(module)}" if module[-1] == tool else f"parnet-{tool}"
    sibling = script.with_name(f"{tool}.py")
    return f"python {sibling}" if sibling.is_file() else f"parnet-{tool}"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """A flag mistake in one line, as every other error of the tools."""
        self.exit(2, f"error: {' '.join(message.split())} (see {self.prog} --help)\n")


def make_parser(tool, description, **kwargs):
    """An `ArgumentParser` for `tool` whose `prog` is the invoked command and
    whose flag errors are one `error: ...` line (exit code 2)."""
    return _Parser(prog=command(tool), description=description, **kwargs)


# Types: the same bad value gets the same one-line error in every tool -----------


def _number(convert, name, accept, expected):
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text} is not {expected}")
        return value

    parse.__name__ = name
    return parse


positive_int = _number(int, "positive_int", lambda value: value >= 1, "a whole number of at least 1")
non_negative_int = _number(int, "non_negative_int", lambda value: value >= 0, "a whole number of 0 or more")
positive_float = _number(float, "positive_float", lambda value: math.isfinite(value) and value > 0,
                         "a positive number")
non_negative_float = _number(float, "non_negative_float", lambda value: math.isfinite(value) and value >= 0,
                             "a number of 0 or more")
fraction = _number(float, "fraction", lambda value: 0 <= value <= 1, "a fraction between 0 and 1")
fraction_below_one = _number(float, "fraction_below_one", lambda value: 0 <= value < 1,
                             "a fraction of 0 or more and below 1")


# The shared flags: one definition each --------------------------------------------

RUN_HELP = "a run folder to read (written by train or convert); default: the newest in --logs-dir"
LOGS_DIR_HELP = f"the folder holding run folders (default {DEFAULT_LOGS_DIR})"
WEIGHTS_HELP = ("weights to load (.weights.h5, legacy .h5 or .keras) instead of the run's best.weights.h5; "
                "without --run, the run.json beside FILE is used")
DATASET_HELP = "a dataset folder holding train/ and test/, a folder per class below each"
OUT_HELP = "the folder to write into (created if needed)"


def add_logs_dir_argument(parser_or_group, help=LOGS_DIR_HELP):
    return parser_or_group.add_argument("--logs-dir", default=DEFAULT_LOGS_DIR, metavar="DIR", help=help)


def add_weights_argument(parser_or_group, help=WEIGHTS_HELP):
    return parser_or_group.add_argument("--weights", metavar="FILE", help=help)


def add_run_argument(parser_or_group, help=RUN_HELP):
    return parser_or_group.add_argument("--run", metavar="RUN_DIR", help=help)


def add_run_arguments(parser, weights_help=WEIGHTS_HELP):
    """`--run RUN_DIR`, `--weights FILE` and `--logs-dir DIR`, in one group "run"."""
    group = parser.add_argument_group("run")
    add_run_argument(group)
    add_weights_argument(group, weights_help)
    add_logs_dir_argument(group)
    return group


def add_dataset_argument(parser_or_group, help=DATASET_HELP):
    return parser_or_group.add_argument("--dataset", metavar="DIR", help=help)


def add_out_argument(parser_or_group, help=OUT_HELP):
    return parser_or_group.add_argument("--out", metavar="DIR", help=help)


def add_architecture_arguments(parser_or_group, default_text, small_input=True, model_required=False):
    """`--model`, `--widths` and (with `small_input`) `--small-input`; each is
    `None` when not given, so that a run's or a preset's value can apply.
    `default_text` says what applies then (e.g. "s", "the run's"), or with
    `model_required` what `--model` chooses."""
    parser_or_group.add_argument(
        "--model", choices=MODEL_SIZES, required=model_required,
        help=f"ParNet size, required: {default_text}" if model_required else f"ParNet size (default {default_text})")
    parser_or_group.add_argument("--widths", type=positive_int, nargs=4, metavar=("W0", "W1", "W2", "W3"),
                                 help="stream widths instead of the size's")
    if small_input:
        parser_or_group.add_argument("--small-input", action="store_true", default=None,
                                     help="CIFAR-style stem without stride, for inputs around 32 px")


ACTIVATIONS = ("silu", "relu")


def add_activation_argument(parser_or_group, help):
    """`--activation {silu,relu}`, `None` when not given (`help` says what applies then)."""
    return parser_or_group.add_argument("--activation", choices=ACTIVATIONS, help=help)


def add_image_size_argument(parser_or_group, help="square input size, pixels"):
    return parser_or_group.add_argument("--image-size", type=positive_int, metavar="PX", help=help)


def add_batch_size_argument(parser_or_group, default, help=None):
    return parser_or_group.add_argument(
        "--batch-size", type=positive_int, default=default, metavar="N",
        help=help or f"images per batch (default {default})")


def add_top_k_argument(parser_or_group, help=None):
    return parser_or_group.add_argument(
        "--top-k", type=positive_int, default=DEFAULT_TOP_K, metavar="K",
        help=help or f"how many classes to rank (default {DEFAULT_TOP_K})")


def add_artifact_argument(parser_or_group, help):
    """`--artifact PATH`: an artifact written by parnet-export, used instead of
    the run's weights (`help` says what the tool does with it)."""
    return parser_or_group.add_argument("--artifact", metavar="PATH", help=help)


def add_no_fuse_argument(parser_or_group, help):
    """`--no-fuse`: the model as trained instead of its reparameterized form."""
    return parser_or_group.add_argument("--no-fuse", action="store_true", help=help)


def add_class_names_argument(parser_or_group, help="class names, one per line in label order"):
    return parser_or_group.add_argument("--class-names", metavar="FILE", help=help)


# Class names ----------------------------------------------------------------------


class ClassNamesError(ValueError):
    """A class-name file that cannot be used."""


def read_class_names(path, count=None):
    """Class names from a text file: one per line in label order, blank lines
    ignored; `count`, when given, is how many the model has.

    Raises:
        ClassNamesError: unreadable file, no names, a name twice, or not
            `count` names.
    """
    path = Path(path).expanduser()
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise ClassNamesError(f"cannot read class names from {path}: {reason}") from None
    if not names:
        raise ClassNamesError(f"{path} lists no class names: write one name per line in label order.")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ClassNamesError(f"{path} lists {', '.join(map(repr, repeated))} more than once: "
                              "each class needs its own name.")
    if count is not None and len(names) != count:
        raise ClassNamesError(f"{path} lists {len(names)} class names but the model has {count} classes: "
                              "give one name per line in label order.")
    return names


# Deprecated spellings: they work for one release and say what replaces them ---------


def warn_deprecated(old, new, note=""):
    """Prints the one deprecation line for `old` on stderr."""
    print(f"warning: {old} is deprecated and will be removed in the next release; use {new}{note}",
          file=sys.stderr)


def deprecated(parser_or_group, old, new, **add_argument_kwargs):
    """Adds the old option string `old`, hidden from `--help`, that behaves as
    `new` (same `dest` unless given) after printing the deprecation line."""
    add_argument_kwargs.setdefault("dest", new.lstrip("-").replace("-", "_"))
    action = parser_or_group.add_argument(old, help=argparse.SUPPRESS, **add_argument_kwargs)
    behave = type(action).__call__

    def call(self, parser, namespace, values, option_string=None):
        warn_deprecated(old, new)
        behave(self, parser, namespace, values, option_string)

    action.__class__ = type(f"Deprecated{type(action).__name__}", (type(action),), {"__call__": call})
    return action


def add_deprecated_positional(parser, dest, metavar):
    """An optional positional argument kept from an older release, hidden
    from `--help`; read it with `take_deprecated_positional`."""
    return parser.add_argument(dest, nargs="?", metavar=metavar, help=argparse.SUPPRESS)


def take_deprecated_positional(args, dest, new, old=None):
    """The value of the deprecated positional `dest` (`None` if not given),
    after printing the deprecation line for `old` (default "the positional
    DEST") pointing at `new`."""
    value = getattr(args, dest)
    if value is not None:
        warn_deprecated(old or f"the positional {dest.upper()}", new)
    return value


# Start-up and console ----------------------------------------------------------------


def quiet_tensorflow():
    """Makes TensorFlow start without its start-up log lines (absl, CUDA
    stubs, cuInit on a machine without GPU) whenever it is first imported, so
    errors found before it is needed come at once. Call after parsing flags;
    a user's `TF_CPP_MIN_LOG_LEVEL` wins. If the import fails, its output is
    shown."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, with a loader that runs its import with file
    descriptor 2 (where TensorFlow's C++ start-up lines go) captured."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                self._loader.exec_module(module)
            except BaseException:
                sys.stderr.flush()
                os.dup2(saved, 2)
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace"))
                raise
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)


class _ConsoleHandler(logging.Handler):
    """INFO as plain lines on stdout, WARNING and above as `warning: ...` on
    stderr; the streams are looked up at each message (so redirections and
    pytest's capture apply)."""

    def emit(self, record):
        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING:
                print(f"warning: {message}", file=sys.stderr, flush=True)
            else:
                print(message, flush=True)
        except Exception:
            self.handleError(record)


def messages_to_console():
    """Shows the library's progress messages (logger `keras_parnet`) as plain
    lines. Calling it again adds no second handler."""
    logger = logging.getLogger("keras_parnet")
    logger.setLevel(logging.INFO)
    if not any(isinstance(handler, _ConsoleHandler) for handler in logger.handlers):
        logger.addHandler(_ConsoleHandler())


def show_warnings_as_lines():
    """Prints each warning as one `warning: <message>` line on stderr, without
    the category and source line Python adds (those are for developers)."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=file or sys.stderr)

    warnings.showwarning = show


def run_tool(body, expected_errors=()):
    """Runs a tool's `body()` with plain warnings, the library's messages on
    the console, and one-line errors.

    `expected_errors` (and `OSError`, `OutputError`, `ClassNamesError`) become
    `error: <message>` on stderr and exit code 2; Ctrl-C becomes exit code 130
    without a traceback.

    Returns:
        The exit code: `body()`'s return value (`None` is 0), or 2 / 130.
    """
    show_warnings_as_lines()
    messages_to_console()
    try:
        return body() or 0
    except (OutputError, ClassNamesError, *expected_errors) as error:
        message = str(error)
    except OSError as error:
        message = describe_os_error(error)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return 2
