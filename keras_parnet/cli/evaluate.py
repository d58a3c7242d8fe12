"""Evaluate a trained run on its test split: `parnet-evaluate --help`.

Prints the report `keras_parnet.evaluate.evaluate_run` writes (report.json,
report.txt and the plots, into the run folder or `--out DIR`).
"""

import sys
from pathlib import Path

from keras_parnet.cli import _common


def build_parser():
    # keras_parnet.evaluate imports TensorFlow only when it evaluates.
    from keras_parnet.evaluate import ARTIFACT_REPORTS, BATCH_SIZE, WORST

    parser = _common.make_parser(
        "evaluate",
        "Evaluate a trained run (or, with --artifact, an artifact exported from it) on "
        "the test split of its dataset: accuracy, top-k accuracy, per-class precision/recall/F1, "
        "confusion matrix, training curves and the worst misclassified images, written into the "
        "run folder (report.json, report.txt, *.png) or --out; an artifact's report goes to "
        f"<run>/{ARTIFACT_REPORTS}/<artifact name>/.",
    )
    _common.add_deprecated_positional(parser, "run_dir", "RUN_DIR")
    run = _common.add_run_arguments(parser, "weights to evaluate instead of the run's best.weights.h5; "
                                    "without --run, the run.json beside FILE is used")
    _common.add_artifact_argument(
        run, "evaluate an artifact written by parnet-export (.keras, .tflite or .onnx file or "
             "SavedModel folder) with its own runtime instead of the run's Keras model, on the run's "
             "test split; the run is --run, else the artifact's folder when it holds a run.json, "
             "else the newest in --logs-dir")
    _common.add_no_fuse_argument(run, "evaluate the model as trained instead of its reparameterized (fused) form")
    _common.add_dataset_argument(parser, "a dataset folder holding test/<class>/ (default: the run's)")
    _common.add_top_k_argument(parser, "k of the top-k accuracy (default 5; left out when not below the "
                               "class count)")
    _common.add_batch_size_argument(parser, BATCH_SIZE)
    parser.add_argument("--worst", type=_common.non_negative_int, default=WORST, metavar="N",
                        help=f"misclassified images to show in worst_predictions.png (default {WORST}, 0: none)")
    _common.add_out_argument(parser, "the folder to write the report and plots into (default: the run folder; "
                             f"with --artifact, <run>/{ARTIFACT_REPORTS}/<artifact name>/, so the run's own "
                             "report is kept)")
    return parser


def take_positional_run(args, parser):
    """Moves the deprecated positional RUN_DIR into `--run` (a folder) or
    `--weights` (a weights file beside its run.json), with the deprecation line."""
    if args.run_dir is None:
        return
    flag, metavar = ("--weights", "FILE") if Path(args.run_dir).expanduser().is_file() else ("--run", "RUN_DIR")
    value = _common.take_deprecated_positional(args, "run_dir", f"{flag} {metavar}", "the positional RUN_DIR")
    dest = flag[2:]
    if getattr(args, dest) is not None:
        parser.error(f"{value} and {flag} name the same thing: pass only {flag}.")
    setattr(args, dest, value)


def evaluate(args):
    from keras_parnet.evaluate import REPORT_JSON, REPORT_TEXT, evaluate_run
    from keras_parnet.metrics import format_report

    report = evaluate_run(args.run, args.weights, args.dataset, args.top_k, args.batch_size, args.worst,
                          fuse=not args.no_fuse, logs_dir=args.logs_dir, out_dir=args.out,
                          artifact=args.artifact)
    print(format_report(report), end="")
    print(f"Report and plots in {report['out_dir']}: {REPORT_JSON}, {REPORT_TEXT}, "
          f"{', '.join(report['plots'].values())}")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    take_positional_run(args, parser)
    _common.quiet_tensorflow()
    from keras_parnet.files import DatasetError, ImageError
    from keras_parnet.evaluate import EvaluateError
    from keras_parnet.export import ExportError
    from keras_parnet.predict import PredictError
    from keras_parnet.runs import RunError

    return _common.run_tool(lambda: evaluate(args),
                            (DatasetError, ImageError, RunError, EvaluateError, PredictError, ExportError))


if __name__ == "__main__":
    sys.exit(main())
