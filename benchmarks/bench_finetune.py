"""Fine-tuning from pretrained weights vs training from scratch, on few images of new classes.

Needs the bench extra (scikit-learn): pip install -e ".[bench]"

The data are real: scikit-learn's bundled handwritten digits
(`sklearn.datasets.load_digits`, 1797 scans of 8x8 pixels, shipped inside the
wheel, nothing downloaded), upscaled to `--size` px PNGs and written as image
folders in a temporary folder:

    pretrain/{train,val,test}/<digit>/   digits 0-4: --pretrain-per-class images
                                         per class to train on, 10 to validate
                                         on, all the others to test
    finetune/{train,val,test}/<digit>/   digits 5-9: --train-per-class images
                                         per class to train on, --val-per-class
                                         to validate on, all the others to test

The runs go through the tools users run (`keras_parnet.cli.train.main`, then
`keras_parnet.evaluate.evaluate_run` on the test split):

  1. pretrain a tiny ParNet on digits 0-4 (--pretrain-epochs);
  2. from scratch: the same network trained on the few images of 5-9;
  3. fine-tuned: the same training started from the pretrained run
     (`--weights <pretrain run>`: backbone loaded, new classifier), its first
     --freeze-epochs epochs training the classifier alone, then everything at
     --fine-tune-lr.

Arms 2 and 3 get the same images, epochs, augmentation, batch size and seeds
(`--seed`, and Keras's global seed before each run, so the new layers start
alike); early stopping is off (patience = epochs) and each is graded with the
weights of its last epoch, so the test split selects nothing. The table gives
each run's test accuracy and wall time (training, then evaluation).

    python benchmarks/bench_finetune.py [--train-per-class 10] [--epochs 20] [--pretrain-epochs 5]
        [--pretrain-per-class 100]
        [--freeze-epochs 5] [--fine-tune-lr 3e-4] [--size 32] [--widths 32 48 64 128] [--verbose]
"""

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
FINETUNE_CLASSES = (5, 6, 7, 8, 9)
PRETRAIN_VAL_PER_CLASS = 10


def load_digits():
    """`(images, labels)`: the 1797 digits as uint8 8x8 arrays (ink bright)."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        sys.exit('error: bench_finetune.py needs scikit-learn for its dataset: pip install -e ".[bench]"')
    digits = sklearn_digits()
    return np.round(digits.images * (255 / 16)).astype(np.uint8), digits.target


def write_split(folder, images, labels, size):
    """Writes `images` as `folder/<label>/<index>.png`, upscaled to `size` px."""
    for index, (image, label) in enumerate(zip(images, labels)):
        class_dir = folder / str(label)
        class_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((size, size), Image.BILINEAR).save(class_dir / f"{index:04d}.png")


def split_by_class(labels, classes, counts, rng):
    """`{split: indices}`: each class's indices shuffled by `rng` and cut into
    `counts` (`{split: count}` in order; a count of `None` takes the rest)."""
    splits = {name: [] for name in counts}
    for label in classes:
        indices = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for name, count in counts.items():
            end = len(indices) if count is None else start + count
            splits[name].extend(indices[start:end])
            start = end
    return {name: np.array(indices) for name, indices in splits.items()}


def write_datasets(root, pretrain_per_class, train_per_class, val_per_class, size, seed):
    """Writes root/pretrain and root/finetune; returns their paths and
    `{dataset: {split: image count}}`."""
    images, labels = load_digits()
    rng = np.random.default_rng(seed)
    for classes, flag, count, val_count in ((PRETRAIN_CLASSES, "--pretrain-per-class", pretrain_per_class,
                                             PRETRAIN_VAL_PER_CLASS),
                                            (FINETUNE_CLASSES, "--train-per-class", train_per_class, val_per_class)):
        smallest = min(np.sum(labels == label) for label in classes)
        if count + val_count >= smallest:
            sys.exit(f"error: {flag} {count} plus {val_count} validation images leave no test images (the "
                     f"smallest class of {classes[0]}-{classes[-1]} has {smallest}): pass a smaller count.")
    datasets = {
        "pretrain": split_by_class(labels, PRETRAIN_CLASSES, {"train": pretrain_per_class,
                                                              "val": PRETRAIN_VAL_PER_CLASS, "test": None}, rng),
        "finetune": split_by_class(labels, FINETUNE_CLASSES,
                                   {"train": train_per_class, "val": val_per_class, "test": None}, rng),
    }
    for name, splits in datasets.items():
        for split, indices in splits.items():
            write_split(root / name / split, images[indices], labels[indices], size)
    counts = {name: {split: len(indices) for split, indices in splits.items()} for name, splits in datasets.items()}
    return root / "pretrain", root / "finetune", counts


def train_run(args, dataset, logs_dir, name, epochs, extra_flags=()):
    """Trains one run with the train command line in this process; returns
    `(run folder, wall seconds)`. Its output goes to <logs_dir>/<name>.log
    (printed if it fails) unless --verbose."""
    import keras

    from keras_parnet.cli.train import main as train_main

    argv = ["--dataset", str(dataset), "--logs-dir", str(logs_dir), "--run-name", name,
            "--widths", *map(str, args.widths), "--small-input", "--image-size", str(args.size),
            "--batch-size", str(args.batch_size), "--epochs", str(epochs), "--patience", str(epochs),
            "--lr", str(args.lr), "--seed", str(args.seed),
            # Digits are not mirror images of themselves, nor upright after 50 degrees.
            "--no-flip", "--rotation", "10", *extra_flags]
    keras.utils.set_random_seed(args.seed)
    output = io.StringIO()
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if not args.verbose:
            stack.enter_context(contextlib.redirect_stdout(output))
            stack.enter_context(contextlib.redirect_stderr(output))
        code = train_main(argv)
    seconds = time.perf_counter() - start
    (Path(logs_dir) / f"{name}.log").write_text(output.getvalue())
    if code:
        print(output.getvalue(), file=sys.stderr)
        sys.exit(f"error: training {name} failed (exit {code}): train.py {' '.join(argv)}")
    return Path(logs_dir) / name, seconds


def last_epoch_weights(run_dir, epochs):
    """The weights file the run wrote after its last epoch."""
    matches = sorted(run_dir.glob(f"ep{epochs:03d}-*.weights.h5"))
    if len(matches) != 1:
        sys.exit(f"error: {run_dir} has {len(matches)} weights files of epoch {epochs}, expected 1.")
    return matches[0]


def test_accuracy(run_dir, epochs):
    """`(test accuracy of the run's last-epoch weights, wall seconds)`."""
    from keras_parnet.evaluate import evaluate_run

    start = time.perf_counter()
    report = evaluate_run(run_dir, weights=last_epoch_weights(run_dir, epochs), worst=0,
                          out_dir=run_dir / "evaluation")
    return report["accuracy"], time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-per-class", type=int, default=10,
                        help="training images per new class (default 10)")
    parser.add_argument("--val-per-class", type=int, default=5,
                        help="validation images per new class (default 5); the rest of 5-9 is the test split")
    parser.add_argument("--epochs", type=int, default=20,
                        help="epochs of each arm on the new classes (default 20)")
    parser.add_argument("--pretrain-per-class", type=int, default=100,
                        help="pretraining images per class of 0-4 (default 100)")
    parser.add_argument("--pretrain-epochs", type=int, default=5, help="epochs of pretraining on 0-4 (default 5)")
    parser.add_argument("--freeze-epochs", type=int, default=5,
                        help="fine-tuned arm: first epochs training only the new classifier (default 5)")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="learning rate of pretraining, from scratch and the frozen epochs (default 1e-3)")
    parser.add_argument("--fine-tune-lr", type=float, default=3e-4,
                        help="fine-tuned arm: learning rate once everything trains (default 3e-4)")
    parser.add_argument("--size", type=int, default=32, help="image size in pixels (default 32)")
    parser.add_argument("--widths", type=int, nargs=4, default=[32, 48, 64, 128], metavar="W",
                        help="ParNet widths (default 32 48 64 128)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits, shuffling, augmentation and "
                        "new layers (default 0)")
    parser.add_argument("--verbose", action="store_true", help="show the training output")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        start = time.perf_counter()
        pretrain, finetune, counts = write_datasets(root / "dataset", args.pretrain_per_class, args.train_per_class,
                                                    args.val_per_class, args.size, args.seed)
        print(f"digits written as {args.size} px PNGs in {time.perf_counter() - start:.1f} s: " + "; ".join(
            f"{name} " + ", ".join(f"{split} {count}" for split, count in splits.items())
            for name, splits in counts.items()))
        logs = root / "logs"

        from keras_parnet.callbacks import HISTORY_FILE
        from keras_parnet.evaluate import read_history

        pretrained, pretrain_seconds = train_run(args, pretrain, logs, "pretrain", args.pretrain_epochs)
        pretrain_accuracy = read_history(pretrained / HISTORY_FILE)["val_accuracy"][-1]
        print(f"pretrained on 0-4: validation accuracy {pretrain_accuracy:.3f} after {args.pretrain_epochs} "
              f"epochs ({pretrain_seconds:.0f} s)")

        rows = []
        arms = (
            ("from scratch", ()),
            ("fine-tuned", ("--weights", str(pretrained), "--freeze-epochs", str(args.freeze_epochs),
                            "--fine-tune-lr", str(args.fine_tune_lr))),
        )
        for label, flags in arms:
            run_dir, seconds = train_run(args, finetune, logs, label.replace(" ", "-"), args.epochs, flags)
            accuracy, eval_seconds = test_accuracy(run_dir, args.epochs)
            rows.append((label, accuracy, seconds, eval_seconds))
            print(f"{label}: test accuracy {accuracy:.3f} ({seconds:.0f} s)")

    test_count = counts["finetune"]["test"]
    print(f"\ndigits 5-9, {args.train_per_class} training images per class, {args.epochs} epochs, "
          f"test accuracy on {test_count} images (last epoch's weights):\n")
    print(f"| {'arm':<13}| test accuracy | training s | evaluation s |")
    print(f"|{'-' * 14}|{'-' * 15}|{'-' * 12}|{'-' * 14}|")
    for label, accuracy, seconds, eval_seconds in rows:
        print(f"| {label:<13}| {accuracy:>13.3f} | {seconds:>10.0f} | {eval_seconds:>12.1f} |")
    print(f"\npretraining (digits 0-4, {counts['pretrain']['train']} images, {args.pretrain_epochs} epochs): "
          f"{pretrain_seconds:.0f} s, validation accuracy {pretrain_accuracy:.3f}")
    print(f"total {time.perf_counter() - start:.0f} s on {os.cpu_count()} CPU threads, "
          f"load average {os.getloadavg()[0]:.2f} at the end (other jobs slow every arm alike)")


if __name__ == "__main__":
    main()
