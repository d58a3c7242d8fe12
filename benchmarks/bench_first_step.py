"""Time to the end of the first training steps, with the optimizer built before `fit` or in it.

Keras builds an unbuilt optimizer inside the first trace of the training step;
variables created while a step is traced make TensorFlow trace it twice.
`keras_parnet.train.compiled_model` builds it before `fit`. Each arm runs in a
fresh process, one after the other (same model, data and `fit` call):

  built before fit   compile, then `optimizer.build(trainable_variables)`, then fit
  built in fit       compile, then fit (Keras' default)

It prints each arm's seconds for its first `fit` (2 steps: tracing plus the
steps) and their ratio.

    python benchmarks/bench_first_step.py [--model s] [--size 64] [--batch-size 4]
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ARMS = ("built before fit", "built in fit")


def first_fit_seconds(model_name, size, batch_size, build_first):
    """Seconds of the first `fit` (two steps) of a 2-class ParNet compiled as train.py does."""
    import keras
    import numpy as np

    import keras_parnet

    model = getattr(keras_parnet, f"parnet_{model_name}")(input_shape=(size, size, 3), classes=2)
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    images = np.random.default_rng(0).random((2 * batch_size, size, size, 3), dtype="float32")
    labels = np.eye(2, dtype="float32")[np.arange(2 * batch_size) % 2]
    start = time.perf_counter()
    if build_first:
        model.optimizer.build(model.trainable_variables)
    model.fit(images, labels, batch_size=batch_size, epochs=1, verbose=0)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="s", choices=("s", "m", "l", "xl"))
    parser.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # one arm, in its own process
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(first_fit_seconds(args.model, args.size, args.batch_size, args.arm == ARMS[0])))
        return
    seconds = {}
    for arm in ARMS:
        result = subprocess.run([sys.executable, __file__, "--model", args.model, "--size", str(args.size),
                                 "--batch-size", str(args.batch_size), "--arm", arm],
                                capture_output=True, text=True, check=True)
        seconds[arm] = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"parnet_{args.model}, {args.size} px, first fit of 2 steps, optimizer {arm}: {seconds[arm]:.1f} s")
    print(f"ratio: {seconds[ARMS[1]] / seconds[ARMS[0]]:.2f}x")


if __name__ == "__main__":
    main()
