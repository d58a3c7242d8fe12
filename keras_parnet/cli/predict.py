"""Classify images with a trained ParNet: `parnet-predict --help`.

    parnet-predict                         # prompt `input img_path:`, show each
                                           # photo titled `class:probability`
    parnet-predict photos/ a.jpg "*.png"   # one line per image: path, class, probability
    ls *.jpg | parnet-predict --csv out.csv

The model, its weights, image size, preprocessing and class names come from a
run folder (`--run`, else the newest in `--logs-dir`); flags override them.
`--artifact` classifies with an exported artifact instead. The library API
is `keras_parnet.predict`.
"""

import os
import sys
from pathlib import Path

from keras_parnet.cli import _common

PROMPT = "input img_path:"
QUIT_WORDS = ("q", "quit", "exit")
# Where figures go when no window can open and --out is not given.
DEFAULT_PLOT_DIR = "predictions"


def clean_path(line):
    """A typed or pasted path: whitespace and surrounding quotes stripped, `~` expanded."""
    text = line.strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].strip()
    return os.path.expanduser(text)


def display_available():
    """Whether matplotlib can open a window here."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return False
    import matplotlib

    return matplotlib.get_backend().lower() not in _non_interactive_backends()


def _non_interactive_backends():
    try:
        from matplotlib.backends import BackendFilter, backend_registry
    except ImportError:  # matplotlib < 3.9
        from matplotlib.rcsetup import non_interactive_bk

        return {name.lower() for name in non_interactive_bk}
    return set(backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE))


class PlotWriter:
    """Saves one titled PNG per image in `folder`, names made unique."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.used = set()

    def save(self, figure, image_path):
        from keras_parnet.plots import save_figure

        self.folder.mkdir(parents=True, exist_ok=True)
        stem = Path(image_path).stem or "image"
        name, suffix = f"{stem}.png", 1
        while name in self.used:
            suffix += 1
            name = f"{stem}-{suffix}.png"
        self.used.add(name)
        return save_figure(figure, self.folder / name)


class Reporter:
    """Prints (and writes to CSV / PNG) each prediction."""

    def __init__(self, class_names, top_k, csv_path=None, plot_dir=None, show=False, verbose=False):
        self.class_names = class_names
        self.top_k = top_k
        self.plots = PlotWriter(plot_dir) if plot_dir else None
        self.show = show
        self.verbose = verbose
        self.csv_file = self.csv_writer = None
        if csv_path:
            import csv

            self.csv_file = open(csv_path, "w", newline="")
            self.csv_writer = csv.writer(self.csv_file)
            self.csv_writer.writerow(["path", "class", "probability", *class_names])
        self.failures = 0

    def error(self, message):
        self.failures += 1
        print(f"error: {message}", file=sys.stderr, flush=True)

    def report(self, path, probabilities):
        import numpy as np

        from keras_parnet.plots import display_image, plot_prediction
        from keras_parnet.predict import check_finite, rank

        check_finite(probabilities[np.newaxis], [path])
        ranked = rank(probabilities, self.class_names, self.top_k)
        if self.verbose:
            width = max(len(name) for name, _ in ranked)
            for name, probability in ranked:
                print(f"  {name:<{width}}  {probability:.3f}")
        else:
            print(f"{path}\t{ranked[0][0]}\t{ranked[0][1]:.3f}", flush=True)
        if self.csv_writer:
            self.csv_writer.writerow(
                [path, ranked[0][0], f"{ranked[0][1]:.6f}", *(f"{p:.6f}" for p in probabilities)]
            )
            self.csv_file.flush()
        if self.show:
            self._show(display_image(path), ranked)
        elif self.plots:
            saved = self.plots.save(plot_prediction(display_image(path), ranked), path)
            if self.verbose:
                print(f"  saved {saved}")

    def _show(self, photo, ranked):
        import matplotlib.pyplot as plt

        from keras_parnet.plots import plot_prediction, prediction_figure_size

        figure = plot_prediction(photo, ranked, plt.figure(figsize=prediction_figure_size(photo),
                                                           layout="constrained"))
        plt.show()
        plt.close(figure)

    def close(self):
        if self.csv_file:
            self.csv_file.close()


def predict_arguments(model, config, arguments, reporter, batch_size):
    """Batch mode: every image the arguments name; exit code 2 if any failed."""
    from keras_parnet.predict import expand_paths, predict_paths

    paths, errors = expand_paths(arguments)
    for message in errors:
        reporter.error(message)
    for path, _, probabilities, error in predict_paths(model, paths, config["image_size"],
                                                       config["preprocessing"], batch_size):
        if error:
            reporter.error(error)
        else:
            reporter.report(path, probabilities)
    return 2 if reporter.failures else 0


def predict_lines(model, config, stdin, reporter, interactive):
    """The prompt loop (or, when piped, one path per line); always exits 0.

    Interactive: an empty line, `q`, end of input or Ctrl-C ends it. Piped:
    blank lines are skipped and the input's end ends it.
    """
    from keras_parnet.predict import predict_paths

    try:
        while True:
            if interactive:
                print(PROMPT, end="", flush=True)
            line = stdin.readline()
            if not line:
                if interactive:
                    print()
                break
            path = clean_path(line)
            if interactive and (not path or path.lower() in QUIT_WORDS):
                break
            if not path:
                continue
            for path, _, probabilities, error in predict_paths(model, [path], config["image_size"],
                                                               config["preprocessing"]):
                if error:
                    reporter.error(error)
                else:
                    reporter.report(path, probabilities)
    except KeyboardInterrupt:
        print()
    return 0


def build_parser():
    # keras_parnet.predict imports TensorFlow only when it loads a model or images.
    from keras_parnet.predict import BATCH_SIZE

    parser = _common.make_parser(
        "predict",
        "Classify images with a trained ParNet. Without PATHS and with a terminal, "
        f"prompts '{PROMPT}' and shows each photo titled class:probability (empty line, q, "
        "Ctrl-D or Ctrl-C to quit); with PATHS, or paths piped one per line, prints one "
        "tab-separated line per image: path, class, probability.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="image files, folders (every image below them) or globs")
    run = _common.add_run_arguments(
        parser, "weights to load instead of the run's best.weights.h5: .weights.h5, legacy .h5 or a "
        "full .keras model; without --run, the run.json beside FILE is used (without one, pass the "
        "architecture, --image-size and --class-names)")
    model = parser.add_argument_group("model (default: the run's)")
    _common.add_class_names_argument(model, "class names, one per line in label order (default: the run's)")
    _common.deprecated(model, "--classes", "--class-names", metavar="FILE")
    _common.add_architecture_arguments(model, "the run's")
    _common.add_image_size_argument(model, "square input size (default: the run's)")
    _common.add_no_fuse_argument(
        model, "predict with the trained (unfused) model instead of its folded "
             "inference form; the outputs agree within 1e-4")
    _common.add_artifact_argument(
        run, "classify with an exported artifact (parnet-export): a .keras, .tflite or .onnx "
             "file or a SavedModel folder, instead of the run's weights; the run (--run, else the "
             "artifact's folder when it holds a run.json, else the newest in --logs-dir) gives the "
             "class names and image size, checked against the labels.txt beside the artifact")
    out = parser.add_argument_group("output")
    _common.add_top_k_argument(out, f"classes printed per image at the prompt (default {_common.DEFAULT_TOP_K})")
    _common.add_batch_size_argument(out, BATCH_SIZE)
    out.add_argument("--csv", metavar="FILE",
                     help="also write path, class, probability and every class's probability")
    _common.add_out_argument(out, "write each titled figure as DIR/<image name>.png instead of showing it")
    _common.deprecated(out, "--save-plots", "--out", metavar="DIR")
    out.add_argument("--no-show", action="store_true",
                     help=f"never open a window (the default without a display); at the prompt, "
                     f"figures are saved to --out or {DEFAULT_PLOT_DIR}/")
    return parser


def load(args):
    """`(model, config)` the flags ask for (`keras_parnet.predict`)."""
    from keras_parnet import predict

    class_names = _common.read_class_names(args.class_names) if args.class_names else None
    if args.artifact:
        model_flags = {"--weights": args.weights, "--model": args.model, "--widths": args.widths,
                       "--small-input": args.small_input, "--image-size": args.image_size,
                       "--no-fuse": args.no_fuse}
        given = [flag for flag, value in model_flags.items() if value]
        if given:
            raise predict.PredictError(
                f"--artifact holds the model, its size and its weights: drop {', '.join(given)}.")
        return predict.load_artifact_predictor(args.artifact, args.run, args.logs_dir, class_names)
    return predict.load_predictor(args.run, args.weights, args.logs_dir, fuse=not args.no_fuse,
                                  model=args.model, widths=args.widths, small_input=args.small_input,
                                  image_size=args.image_size, class_names=class_names)


def predict(args, stdin):
    """Runs the mode the arguments and stdin call for; returns the exit code."""
    from keras_parnet.configs import MIN_INPUT_SIZE
    from keras_parnet.predict import PredictError

    if args.image_size is not None and args.image_size < MIN_INPUT_SIZE:
        raise PredictError(f"--image-size {args.image_size} is below ParNet's {MIN_INPUT_SIZE} px "
                           f"minimum: pass at least {MIN_INPUT_SIZE}, or leave it out for the run's size.")
    if args.out:
        _common.output_dir(args.out, "--out")
    model, config = load(args)
    interactive = not args.paths and stdin.isatty()
    show = interactive and not args.no_show and not args.out and display_available()
    plot_dir = args.out
    if interactive and not show and not plot_dir:
        plot_dir = DEFAULT_PLOT_DIR
        reason = "--no-show" if args.no_show else "no display"
        print(f"{reason}: figures are saved to {plot_dir}/.", file=sys.stderr)
    if interactive:
        height, width = config["image_size"]
        if "artifact" in config:
            source = f"{config['artifact']}: {config['artifact_format']} artifact ({config['artifact_input']} input)"
        else:
            source = f"{config['weights']}: {config.get('model', model.name)}"
        print(f"{source} at {height}x{width}, classes {', '.join(config['class_names'])}")
    reporter = Reporter(config["class_names"], args.top_k, args.csv, plot_dir, show, verbose=interactive)
    try:
        if args.paths:
            return predict_arguments(model, config, args.paths, reporter, args.batch_size)
        return predict_lines(model, config, stdin, reporter, interactive)
    finally:
        reporter.close()


def main(argv=None):
    args = build_parser().parse_args(argv)
    _common.quiet_tensorflow()
    from keras_parnet.files import ImageError
    from keras_parnet.export import ExportError
    from keras_parnet.predict import PredictError
    from keras_parnet.runs import RunError

    return _common.run_tool(lambda: predict(args, sys.stdin), (RunError, PredictError, ImageError, ExportError))


if __name__ == "__main__":
    sys.exit(main())
