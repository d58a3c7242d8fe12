"""Time to the end of the first training steps, compiled as train.py does or as Keras does by default.

Keras builds an unbuilt optimizer, and makes the metric "accuracy", inside the
first trace of the training step; variables created while a step is traced make
TensorFlow trace it twice. `keras_parnet.train.compile_for_training` creates
them before `fit`. Each arm runs in a fresh process, one after the other (same
model, optimizer, data and `fit` call, with validation):

  train.py        `compile_for_training(model, Adam(1e-3))`, then fit
  Keras default   `compile(Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])`, then fit

It prints each arm's seconds for its first `fit` (2 training steps and 1
validation step, their tracing included) and their ratio.

    python benchmarks/bench_first_step.py [--model s] [--size 64] [--batch-size 4]
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ARMS = ("train.py", "Keras default")


def first_fit_seconds(model_name, size, batch_size, arm):
    """Seconds from compiling a 2-class ParNet to the end of its first `fit`
    (two training steps and one validation step)."""
    import keras
    import numpy as np

    import keras_parnet
    from keras_parnet.train import compile_for_training

    model = getattr(keras_parnet, f"parnet_{model_name}")(input_shape=(size, size, 3), classes=2)
    images = np.random.default_rng(0).random((2 * batch_size, size, size, 3), dtype="float32")
    labels = np.eye(2, dtype="float32")[np.arange(2 * batch_size) % 2]
    start = time.perf_counter()
    if arm == "train.py":
        compile_for_training(model, keras.optimizers.Adam(1e-3))
    else:
        model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    model.fit(images, labels, batch_size=batch_size, epochs=1, verbose=0,
              validation_data=(images[:batch_size], labels[:batch_size]))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="s", choices=("s", "m", "l", "xl"))
    parser.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # one arm, in its own process
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(first_fit_seconds(args.model, args.size, args.batch_size, args.arm)))
        return
    seconds = {}
    for arm in ARMS:
        result = subprocess.run([sys.executable, __file__, "--model", args.model, "--size", str(args.size),
                                 "--batch-size", str(args.batch_size), "--arm", arm],
                                capture_output=True, text=True, check=True)
        seconds[arm] = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"parnet_{args.model}, {args.size} px, first fit (2 steps + validation), compiled as {arm}: "
              f"{seconds[arm]:.1f} s")
    print(f"ratio: {seconds[ARMS[1]] / seconds[ARMS[0]]:.2f}x")


if __name__ == "__main__":
    main()
