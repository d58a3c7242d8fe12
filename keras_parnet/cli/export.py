"""Export a trained run's fused model for deployment: `parnet-export --help`.

    parnet-export --run logs/<run> --format onnx
    parnet-export --run logs/<run> --format tflite --quantize int8 --out deploy/

What the artifact takes and how it is checked: `keras_parnet.export`.
"""

import sys
from pathlib import Path

from keras_parnet.cli import _common

TOOL = "export"


def build_parser():
    from keras_parnet import export  # numpy only: the formats and defaults below

    parser = _common.make_parser(
        TOOL,
        "Write a deployable artifact of a trained run's fused (reparameterized) model and check that "
        "it computes what the trained Keras model computes (max abs difference at most "
        f"{export.TOLERANCE:g} on a random batch).",
    )
    _common.add_run_arguments(parser, "weights to export instead of the run's best.weights.h5; without "
                                      "--run, the run.json beside FILE is used")
    _common.add_deprecated_positional(parser, "legacy_path", "WEIGHTS")
    artifact = parser.add_argument_group("artifact")
    artifact.add_argument(
        "--format", choices=export.FORMATS, required=True,
        help="keras: .keras file; savedmodel: TensorFlow SavedModel folder; tflite: TensorFlow Lite file; "
        f"onnx: ONNX file (needs the export extra: {export.EXTRA_HINT})")
    _common.add_out_argument(
        artifact, "the folder to write the artifact and its labels.txt into (created if needed); default: "
        "the folder of the weights. The artifact is named <weights name>_fused[_<quantize>].keras / "
        "_savedmodel / .tflite / .onnx")
    artifact.add_argument(
        "--input", choices=export.INPUTS, default="uint8",
        help="uint8 (default): RGB images at the run's size, the run's preprocessing inside the artifact; "
        "float: what the network takes, for callers that preprocess themselves")
    artifact.add_argument(
        "--quantize", choices=export.QUANTIZATIONS, default="none",
        help="tflite only: float16 weights, dynamic (int8 weights), or int8 (full integer, per channel, "
        "calibrated on training images); default none")
    calibration = parser.add_argument_group("int8 calibration")
    calibration.add_argument(
        "--calibration-images", type=_common.positive_int, default=export.DEFAULT_CALIBRATION_IMAGES,
        metavar="N", help=f"training images that calibrate --quantize int8 "
        f"(default {export.DEFAULT_CALIBRATION_IMAGES})")
    _common.add_dataset_argument(calibration, "a dataset folder whose train/ calibrates int8 (default: the run's)")
    return parser


def _run_and_weights(args, parser):
    """`(run, weights)` from the flags, the deprecated positional WEIGHTS
    read as `--run` (a folder) or `--weights` (a file)."""
    legacy = args.legacy_path
    if legacy is None:
        return args.run, args.weights
    if args.run is not None or args.weights is not None:
        parser.error("the positional WEIGHTS and --run/--weights name the same thing: keep --run or --weights.")
    if Path(legacy).is_dir():
        _common.warn_deprecated("the positional WEIGHTS", "--run RUN_DIR")
        return legacy, None
    _common.warn_deprecated("the positional WEIGHTS", "--weights FILE")
    return None, legacy


def _out_file(out, format):
    """The file `--out` names in its deprecated spelling (a path ending in the
    format's suffix, e.g. model.tflite), else `None`: `--out` is a folder."""
    from keras_parnet.export import SUFFIXES

    if out is not None and out.endswith(SUFFIXES[format]):
        _common.warn_deprecated("--out FILE", "--out DIR")
        return out
    return None


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    run, weights = _run_and_weights(args, parser)
    out_file = _out_file(args.out, args.format)
    _common.quiet_tensorflow()
    import logging

    from keras_parnet import export
    from keras_parnet.files import DatasetError
    from keras_parnet.runs import RunError

    # Eager calls through Keras' per-op XLA grouped convolution warn about retracing.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)

    def export_and_report():
        try:
            out, report = export.export_run(
                run, args.format, out_file, args.logs_dir, args.input, args.quantize, args.calibration_images,
                args.dataset, weights=weights, out_dir=None if out_file else args.out)
        except export.ArtifactMismatchError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        kind = args.format if args.quantize == "none" else f"{args.format}, {args.quantize}"
        print(f"wrote {out} ({kind}, {args.input} input) and {out.parent / export.LABELS_FILE}")
        print(f"max abs difference from the trained model on {export.CHECK_BATCH_SIZE} random images: "
              f"{report['artifact_diff']:.3g} (fused Keras model: {report['fused_diff']:.3g}); "
              f"same top class on {report['top1_agreement']:.0%}")
        if args.quantize != "none":
            print(f"a quantized artifact is judged by its accuracy: {_common.command('evaluate')} --artifact {out}")
        return 0

    return _common.run_tool(export_and_report, (RunError, export.ExportError, DatasetError))


if __name__ == "__main__":
    sys.exit(main())
