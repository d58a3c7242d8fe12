"""Convert an official PyTorch ParNet checkpoint to a run folder: `parnet-convert --help`.

    parnet-convert planes_92_192_384_1280_num_blocks_5_6_6_1_sebv_13.pth.tar --model s \\
        --out logs/parnet_s_imagenet

The configurations, the mapping and the preprocessing: `keras_parnet.convert`.
"""

import sys
from pathlib import Path

from keras_parnet.cli import _common

TOOL = "convert"
WEIGHTS_SUFFIX = ".weights.h5"


def build_parser():
    parser = _common.make_parser(
        TOOL, "Convert an official PyTorch ParNet checkpoint (imankgoyal/NonDeepNetworks) into a run folder "
        "that predict, evaluate and export read: DIR/best.weights.h5 and DIR/run.json with the official "
        "preprocessing. The released configurations: python -c \"import keras_parnet.convert as c; "
        "help(c)\".")
    parser.add_argument("checkpoint", help="official PyTorch checkpoint (.pth/.pth.tar): a state_dict or a "
                        "training checkpoint holding one")
    model = parser.add_argument_group("model")
    _common.add_architecture_arguments(model, "the released configuration, giving widths and dropout",
                                       small_input=False, model_required=True)
    _common.add_activation_argument(
        model, "block activation (default relu, what the released checkpoints were trained with: their yaml "
        "nests 'swish' in a list, so the official code built ReLU; silu for checkpoints trained with "
        "'additional_branches: [swish]')")
    model.add_argument("--classes", type=_common.positive_int, default=1000, metavar="N",
                       help="classifier outputs of the checkpoint (default 1000)")
    model.add_argument("--ema", action="store_true",
                       help="use the EMA weights (state_dict_ema) of a timm training checkpoint instead of "
                       "state_dict")
    run = parser.add_argument_group("run folder")
    _common.add_out_argument(run, "the run folder to write (created if needed): DIR/best.weights.h5 and "
                                  "DIR/run.json")
    _common.deprecated(run, "--run-dir", "--out", dest="legacy_run_dir", metavar="DIR")
    _common.add_class_names_argument(run, "class names, one per line in label order (default class_0, "
                                          "class_1, ...)")
    _common.add_image_size_argument(run, "square input size, pixels, recorded in run.json (default 224, the "
                                         "official evaluation crop; 352 for the 352 px ParNet-XL fine-tune)")
    return parser


def _outputs(args, parser):
    """`(run folder or None, weights file or None)` the flags ask for; the
    deprecated `--out FILE.weights.h5` writes just that weights file."""
    weights_file = None
    run_dir = args.out
    if run_dir is not None and run_dir.endswith(WEIGHTS_SUFFIX):
        _common.warn_deprecated(f"--out FILE{WEIGHTS_SUFFIX}", "--out DIR",
                                " (a run folder, which predict, evaluate and export read)")
        weights_file, run_dir = run_dir, None
    if args.legacy_run_dir is not None:
        if run_dir is not None:
            parser.error("--run-dir and --out both name the run folder: keep --out DIR")
        run_dir = args.legacy_run_dir
    if run_dir is None and weights_file is None:
        parser.error("nothing to write: pass --out DIR")
    if args.class_names is not None and run_dir is None:
        parser.error("--class-names is recorded in a run folder: pass --out DIR")
    return run_dir, weights_file


def _convert(args, run_dir, weights_file):
    from keras_parnet import convert
    from keras_parnet.files import write_atomically

    if args.class_names is not None:  # read before the slow conversion
        class_names = _common.read_class_names(args.class_names, args.classes)
    else:
        class_names = [f"class_{index}" for index in range(args.classes)]
    activation = args.activation or convert.OFFICIAL_ACTIVATION
    widths = tuple(args.widths or convert.official_config(args.model)["widths"])
    model = convert.convert_checkpoint(args.checkpoint, args.model, widths, activation, args.classes, args.ema)
    if weights_file is not None:
        Path(weights_file).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(weights_file, model.save_weights)
        print(f"wrote {weights_file}")
        options = [repr(args.model)]
        if args.widths:
            options.append(f"widths={widths}")
        if activation != convert.OFFICIAL_ACTIVATION:
            options.append(f"activation={activation!r}")
        if args.classes != 1000:
            options.append(f"classes={args.classes}")
        print(f"load with keras_parnet.convert.build_official({', '.join(options)}, weights=...)")
    if run_dir is not None:
        convert.write_run(run_dir, model, args.model, widths, activation,
                          args.image_size or convert.OFFICIAL_IMAGE_SIZE, class_names, args.checkpoint)
        print(f"wrote run folder {run_dir}: {_common.command('predict')} --run {run_dir} IMAGE")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    run_dir, weights_file = _outputs(args, parser)
    _common.quiet_tensorflow()
    from keras_parnet.convert import ConversionError

    return _common.run_tool(lambda: _convert(args, run_dir, weights_file), (ConversionError, ImportError))


if __name__ == "__main__":
    sys.exit(main())
