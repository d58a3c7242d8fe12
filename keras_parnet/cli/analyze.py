"""Check an image dataset before training: `parnet-analyze --dataset DIR`.

Prints what `keras_parnet.analyze.analyze_dataset` finds (images per class
and split, sizes, warnings) and writes its plots and analysis.json.
"""

import sys
from pathlib import Path

from keras_parnet.cli import _common


def build_parser():
    # The library's defaults; keras_parnet.analyze imports TensorFlow only when it reads images.
    from keras_parnet.analyze import DEFAULT_IMBALANCE, DEFAULT_MIN_SIZE

    parser = _common.make_parser(
        "analyze",
        "Check a dataset before training: images per class and split (train, val, test), image sizes, "
        "and warnings for class imbalance, duplicate files (leakage across the splits), tiny images "
        "and unreadable files. Writes class_counts.png, image_sizes.png and analysis.json.",
    )
    _common.add_deprecated_positional(parser, "dataset_dir", "DATASET")
    _common.add_dataset_argument(parser, f"{_common.DATASET_HELP}, and maybe val/")
    _common.add_run_argument(parser, "a run folder written by train: check its recorded validation split of "
                             "train/ as the val split (and its dataset, without --dataset)")
    _common.add_out_argument(parser, "the folder to write the plots and analysis.json into "
                             "(default analysis/<dataset name>)")
    parser.add_argument("--min-size", type=_common.positive_int, default=DEFAULT_MIN_SIZE, metavar="PX",
                        help=f"warn about images with a side below PX pixels (default {DEFAULT_MIN_SIZE})")
    parser.add_argument("--imbalance", type=_common.positive_float, default=DEFAULT_IMBALANCE, metavar="RATIO",
                        help="warn when a split's largest class has more than RATIO times the images "
                        f"of its smallest (default {DEFAULT_IMBALANCE:g})")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    positional = _common.take_deprecated_positional(args, "dataset_dir", "--dataset DIR", "the positional DATASET")
    if positional is not None and args.dataset is not None:
        parser.error(f"{positional} and --dataset name the same thing: pass only --dataset.")
    dataset = args.dataset or positional
    if dataset is None and args.run is None:
        parser.error("--dataset DIR is required: a folder holding train/ and test/ (or --run RUN_DIR).")
    _common.quiet_tensorflow()
    from keras_parnet.analyze import ANALYSIS_JSON, analyze_dataset, format_analysis
    from keras_parnet.files import DatasetError
    from keras_parnet.evaluate import EvaluateError, resolve_dataset
    from keras_parnet.runs import RunError, read_run

    def analyze():
        validation = None
        dataset_dir = Path(dataset) if dataset else None
        if args.run is not None:
            config = read_run(args.run)
            validation = config.get("validation")
            dataset_dir = dataset_dir or resolve_dataset(config, args.run)
        out_dir = Path(args.out) if args.out else Path("analysis") / dataset_dir.resolve().name
        report = analyze_dataset(dataset_dir, out_dir, args.min_size, args.imbalance, validation)
        print(format_analysis(report), end="")
        print(f"Plots and {ANALYSIS_JSON} in {out_dir}")

    return _common.run_tool(analyze, (DatasetError, RunError, EvaluateError))


if __name__ == "__main__":
    sys.exit(main())
