"""Inference speed of the fused (reparameterized) vs the trained ParNet, on CPU.

Builds the model at each size, folds it with `keras_parnet.reparam`, checks the
two agree, then times both side by side in one run: each is traced once as a
`tf.function` (no XLA, as on CPU it is slower here), warmed up, and timed in
alternating rounds so that load from other processes hits both alike; images/s
is from the median round. Also prints the trainable parameter counts (the paper
gives 19.2M for fused ParNet-S) and the time of one training step of the
trained (unfused) form.

Needs no extra: the package's own requirements.

    python benchmarks/bench_inference.py [--model s] [--sizes 224 256] [--batch-sizes 1 16]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def trainable_parameters(model):
    return sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)


def compiled_predict(model, batch_shape):
    """`model` in inference mode as a traced, non-XLA `tf.function`."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec(batch_shape, tf.float32)], jit_compile=False)
    def predict(images):
        return model(images, training=False)

    return predict


def time_side_by_side(functions, images, iterations, rounds):
    """Median seconds per call of each function, timed in alternating rounds."""
    for function in functions:  # warm-up: tracing, first-call allocations
        function(images).numpy()
        function(images).numpy()
    rounds_seconds = [[] for _ in functions]
    for _ in range(rounds):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            for _ in range(iterations):
                result = function(images)
            result.numpy()
            rounds_seconds[index].append((time.perf_counter() - start) / iterations)
    return [statistics.median(seconds) for seconds in rounds_seconds]


def training_step_seconds(model, batch_size, size, steps):
    """Median seconds of one `train_on_batch` step (after a traced first step)."""
    import keras

    rng = np.random.default_rng(0)
    images = rng.random((batch_size, size, size, 3), dtype=np.float32)
    labels = keras.utils.to_categorical(rng.integers(0, 2, batch_size), model.output_shape[-1])
    model.compile("adam", "categorical_crossentropy", jit_compile=False)
    model.train_on_batch(images, labels)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(images, labels)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="s", choices=("s", "m", "l", "xl"),
                        help="ParNet size (default s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 256],
                        help="square input sizes in pixels (default 224 256)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16],
                        help="inference batch sizes (default 1 16)")
    parser.add_argument("--classes", type=int, default=1000,
                        help="classifier outputs (default 1000, as the paper counts parameters)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating timed rounds per model (default 5)")
    parser.add_argument("--images-per-round", type=int, default=32,
                        help="images per timed round, at least one batch (default 32)")
    parser.add_argument("--train-batch-size", type=int, default=16,
                        help="batch size of the timed training step, 0 to skip (default 16)")
    parser.add_argument("--train-steps", type=int, default=3,
                        help="timed training steps (default 3)")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from keras_parnet import BUILDERS
    from keras_parnet.reparam import reparameterize

    builder = BUILDERS[args.model]
    print(f"{builder.__name__}, {args.classes} classes, TensorFlow {tf.__version__}, "
          f"{os.cpu_count()} CPU threads")
    print(f"{'size':>5} {'batch':>5} {'trained img/s':>14} {'fused img/s':>12} {'ratio':>6} "
          f"{'max logit diff':>14}")
    for size in args.sizes:
        model = builder(input_shape=(size, size, 3), classes=args.classes, classifier_activation=None)
        fused = reparameterize(model)
        for batch_size in args.batch_sizes:
            images = tf.constant(
                np.random.default_rng(0).random((batch_size, size, size, 3), dtype=np.float32)
            )
            functions = [compiled_predict(m, images.shape) for m in (model, fused)]
            difference = float(np.max(np.abs(functions[0](images) - functions[1](images))))
            iterations = max(1, args.images_per_round // batch_size)
            trained, folded = time_side_by_side(functions, images, iterations, args.rounds)
            print(f"{size:>5} {batch_size:>5} {batch_size / trained:>14.1f} "
                  f"{batch_size / folded:>12.1f} {trained / folded:>5.2f}x {difference:>14.1e}",
                  flush=True)

    print(f"trainable parameters ({args.classes} classes): trained "
          f"{trainable_parameters(model):,}, fused {trainable_parameters(fused):,}")
    if args.train_batch_size:
        size = args.sizes[-1]
        seconds = training_step_seconds(model, args.train_batch_size, size, args.train_steps)
        print(f"one training step (trained form, batch {args.train_batch_size}, {size}x{size}): "
              f"{seconds:.2f} s")


if __name__ == "__main__":
    main()
