"""Deployable artifacts of one trained run, side by side: speed, size, accuracy.

For one run (`--run RUN_DIR`; without it the embedded demo is trained first,
`python train.py --demo`, a few minutes on a CPU), this measures in one
process the trained Keras model (unfused, `keras_parnet.runs.load_run`), the
fused Keras model (`keras_parnet.reparam.reparameterize`), and the artifacts
`keras_parnet.export.export_run` writes and checks: SavedModel, TFLite fp32 /
fp16 / dynamic (int8 weights) / int8 (full integer, calibrated on the run's
training images) and ONNX (ONNX Runtime). For each it prints the export time,
the file size (Keras models: the model saved as `.keras`), batch-1 latency
(ms, median round), batch-16 throughput (images/s, median round), the accuracy
on the run's test split and the largest absolute difference of its
probabilities from the trained model's there; then the batch-1 speed-up of
int8 TFLite over the fused Keras model (target: at least 2x at batch 1, within
1 point of its test accuracy) and how far it is from the target. An export
that fails (float artifacts must match the trained model within 1e-4) is
reported in its row and the others go on; the exit code is then 1.

The onnx row needs the export extra (tf2onnx, onnxruntime): pip install -e ".[export]"

The Keras models take float inputs and are timed as a traced `tf.function`
without XLA (as `bench_inference.py`); the artifacts take uint8 RGB images at
the run's size with the run's preprocessing inside. Every timed call is numpy
in, numpy out. TFLite is timed on one interpreter per batch size, its tensors
allocated once, with `--tflite-threads` threads (default: all CPU threads;
TensorFlow and ONNX Runtime use their defaults); test accuracy goes through
`keras_parnet.export.load_artifact`. All formats are warmed up, then timed in
alternating rounds so that load from other processes hits them alike.

Test images: `keras_parnet.data.load_image` (the run's resize, 0-255 floats);
the Keras models (which scale and normalize in their first layers) get them as
they are, the uint8 artifacts get `round(x)`. (For a converted run with a center crop, the
uint8 artifacts get the whole image resized and crop inside, so their
accuracy is not exactly the pipeline's.)

    python benchmarks/bench_export.py [--run logs/<run>] [--formats keras-fused tflite-int8 ...]
        [--rounds 9] [--calibration-images 200] [--logs-dir DIR]

Artifacts go to a temporary folder, deleted at the end.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Row name -> (export format, quantization); `None`: an in-memory Keras model.
FORMATS = {
    "keras-trained": None,
    "keras-fused": None,
    "savedmodel": ("savedmodel", "none"),
    "tflite-fp32": ("tflite", "none"),
    "tflite-fp16": ("tflite", "float16"),
    "tflite-dynamic": ("tflite", "dynamic"),
    "tflite-int8": ("tflite", "int8"),
    "onnx": ("onnx", "none"),
}
BATCH_SIZES = (1, 16)
TARGET_SPEEDUP = 2.0
TARGET_ACCURACY_POINTS = 1.0


def train_demo(logs_dir):
    """Trains the embedded demo into `logs_dir` with train.py; returns the run folder."""
    from keras_parnet.runs import find_latest_run

    command = [sys.executable, str(REPO / "train.py"), "--demo", "--logs-dir", str(logs_dir)]
    print(f"no --run: training the demo ({' '.join(command[1:])}) ...", flush=True)
    start = time.perf_counter()
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                                              os.environ.get("PYTHONPATH")])))
    subprocess.run(command, cwd=REPO, env=environment, check=True, stdout=subprocess.DEVNULL)
    run_dir = find_latest_run(logs_dir)
    print(f"trained {run_dir} in {time.perf_counter() - start:.0f} s", flush=True)
    return run_dir


def size_mb(path):
    path = Path(path)
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) / 1e6
    return path.stat().st_size / 1e6


def keras_runner(model, image_shape):
    """`model` in inference mode as a traced, non-XLA `tf.function`, numpy in, numpy out."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, *image_shape), tf.float32)], jit_compile=False)
    def predict(images):
        return model(images, training=False)

    return lambda batch: predict(batch).numpy()


def tflite_runners(path, batch_sizes, image_shape, threads):
    """`{batch size: run}`: one interpreter per batch size, tensors allocated once."""
    import warnings

    import tensorflow as tf

    runners = {}
    for batch_size in batch_sizes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # TF 2.20+: "use ai_edge_litert"
            interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
        model_input = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(model_input["index"], (batch_size, *image_shape))
        interpreter.allocate_tensors()
        output_index = interpreter.get_output_details()[0]["index"]

        def run(batch, interpreter=interpreter, input_index=model_input["index"], dtype=model_input["dtype"],
                output_index=output_index):
            interpreter.set_tensor(input_index, np.asarray(batch, dtype))
            interpreter.invoke()
            return interpreter.get_tensor(output_index)

        runners[batch_size] = run
    return runners


def time_side_by_side(calls, iterations, rounds):
    """Median seconds of each `(function, batch)` call, in alternating rounds."""
    for function, batch in calls:  # warm-up: tracing, first-call allocations
        function(batch)
        function(batch)
    seconds = [[] for _ in calls]
    for _ in range(rounds):
        for index, (function, batch) in enumerate(calls):
            start = time.perf_counter()
            for _ in range(iterations):
                function(batch)
            seconds[index].append((time.perf_counter() - start) / iterations)
    return [statistics.median(values) for values in seconds]


def load_test_split(config, run_dir):
    from keras_parnet.data import load_image, scan_split
    from keras_parnet.evaluate import resolve_dataset

    dataset = resolve_dataset(config, run_dir)
    paths, labels, _ = scan_split(dataset / "test", config["class_names"])
    images = np.stack([load_image(path, config["image_size"]) for path in paths])
    return dataset, images, np.asarray(labels)


def predict_all(run, images, batch_size=32):
    """`run` over `images` in batches -> `(N, classes)` probabilities."""
    return np.concatenate([np.asarray(run(images[start:start + batch_size]), np.float64)
                           for start in range(0, len(images), batch_size)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", metavar="RUN_DIR",
                        help="trained run folder (default: train the embedded demo first)")
    parser.add_argument("--logs-dir", metavar="DIR",
                        help="without --run: where the demo trains and stays (default: a temporary "
                        "folder, deleted at the end)")
    parser.add_argument("--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS),
                        metavar="FORMAT", help=f"what to measure (default all: {' '.join(FORMATS)})")
    parser.add_argument("--rounds", type=int, default=9, help="alternating timed rounds (default 9)")
    parser.add_argument("--images-per-round", type=int, default=64,
                        help="images per timed round and format, at least one batch (default 64)")
    parser.add_argument("--calibration-images", type=int, default=200, metavar="N",
                        help="training images that calibrate int8 (default 200)")
    parser.add_argument("--tflite-threads", type=int, default=os.cpu_count(),
                        help="TFLite interpreter threads (default: all CPU threads)")
    args = parser.parse_args(argv)
    formats = [name for name in FORMATS if name in args.formats]  # table order
    if "onnx" in formats:
        try:
            import onnxruntime  # noqa: F401
            import tf2onnx  # noqa: F401
        except ImportError as error:
            sys.exit(f"error: the onnx row needs the export extra ({error.name} is missing): "
                     'pip install -e ".[export]", or pass --formats without onnx')

    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    import tensorflow as tf

    from keras_parnet import export
    from keras_parnet.reparam import reparameterize
    from keras_parnet.runs import load_run

    with tempfile.TemporaryDirectory(prefix="bench_export_") as work:
        work = Path(work)
        run_dir = args.run or train_demo(args.logs_dir or work / "logs")
        model, config = load_run(run_dir)
        fused = reparameterize(model)
        image_shape = (*config["image_size"], 3)
        dataset, test_images, test_labels = load_test_split(config, config["run_dir"])
        test_uint8 = np.round(test_images).astype(np.uint8)
        test_float = test_images.astype(np.float32)
        versions = f"TensorFlow {tf.__version__}"
        try:
            import onnxruntime
            import tf2onnx

            versions += f", tf2onnx {tf2onnx.__version__}, ONNX Runtime {onnxruntime.__version__}"
        except ImportError:
            pass
        print(f"run {config['run_dir']}: {config['model']} {config.get('model_kwargs', {})}, "
              f"{image_shape[0]}x{image_shape[1]}, {len(config['class_names'])} classes; "
              f"{model.count_params():,} parameters trained, {fused.count_params():,} fused; "
              f"test split {dataset / 'test'}: {len(test_labels)} images")
        print(f"{versions}; {os.cpu_count()} CPU threads, TFLite {args.tflite_threads}; "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)

        reference = predict_all(keras_runner(model, image_shape), test_float)  # the trained model's
        rows, runners, failures = {}, {}, {}
        for name in formats:
            start = time.perf_counter()
            try:
                if FORMATS[name] is None:
                    keras_model = model if name == "keras-trained" else fused
                    file = work / f"{name}.keras"
                    keras_model.save(file)
                    run = keras_runner(keras_model, image_shape)
                    runners[name] = {batch_size: run for batch_size in BATCH_SIZES}
                    rows[name] = {"file": file, "outputs": predict_all(run, test_float)}
                else:
                    format, quantize = FORMATS[name]
                    file = work / f"{name}{export.SUFFIXES[format]}"
                    # Raises ArtifactMismatchError for a float artifact off by more than 1e-4.
                    file, _ = export.export_run(run_dir, format, file, input="uint8", quantize=quantize,
                                                     calibration_count=args.calibration_images)
                    seconds = time.perf_counter() - start
                    artifact = export.load_artifact(file, format)
                    if format == "tflite":
                        runners[name] = tflite_runners(file, BATCH_SIZES, image_shape, args.tflite_threads)
                    else:
                        runners[name] = {batch_size: artifact for batch_size in BATCH_SIZES}
                    rows[name] = {"file": file, "export_seconds": seconds,
                                  "outputs": predict_all(artifact, test_uint8)}
                rows[name]["accuracy"] = float(np.mean(np.argmax(rows[name]["outputs"], -1) == test_labels))
                rows[name]["diff"] = float(np.max(np.abs(rows[name]["outputs"] - reference)))
            except Exception as error:  # noqa: BLE001 - a benchmark reports every failure and goes on
                failures[name] = f"{type(error).__name__}: {error}"
                print(f"{name} failed: {failures[name]}", flush=True)
                continue
            print(f"{name}: ready in {time.perf_counter() - start:.1f} s", flush=True)

        measured = [name for name in formats if name in runners]
        for batch_size in BATCH_SIZES:
            rng = np.random.default_rng(0)
            uint8_batch = test_uint8[rng.integers(0, len(test_uint8), batch_size)]
            float_batch = uint8_batch.astype(np.float32)
            iterations = max(1, args.images_per_round // batch_size)
            # Floats for the Keras models, uint8 for the artifacts.
            calls = [(runners[name][batch_size], float_batch if FORMATS[name] is None else uint8_batch)
                     for name in measured]
            for name, seconds in zip(measured, time_side_by_side(calls, iterations, args.rounds)):
                rows[name][batch_size] = seconds

        print(f"\nload average after timing: {os.getloadavg()[0]:.2f}; median of {args.rounds} alternating "
              "rounds")
        header = (f"{'format':<15} {'export s':>8} {'size MB':>8} {'b1 ms':>8} {'b16 img/s':>10} "
                  f"{'test acc':>8} {'max diff':>9}")
        print(header)
        print("-" * len(header))
        for name in formats:
            if name in failures:
                print(f"{name:<15} FAILED: {failures[name]}")
                continue
            row = rows[name]
            export_seconds = f"{row['export_seconds']:.1f}" if "export_seconds" in row else "-"
            print(f"{name:<15} {export_seconds:>8} {size_mb(row['file']):>8.3f} {row[1] * 1000:>8.2f} "
                  f"{16 / row[16]:>10.0f} {row['accuracy']:>8.1%} {row['diff']:>9.1e}")
        print("(keras-*: in-memory model, float input, size of its .keras file; max diff: largest absolute "
              "difference of the probabilities from the trained model's on the test split)")

        if "tflite-int8" in rows and "keras-fused" in rows:
            int8, keras_fused = rows["tflite-int8"], rows["keras-fused"]
            speedup = keras_fused[1] / int8[1]
            change = round((int8["accuracy"] - keras_fused["accuracy"]) * 100, 6) + 0.0  # + 0.0: no "-0.0"
            speed_verdict = (f"met, {speedup - TARGET_SPEEDUP:.2f}x to spare" if speedup >= TARGET_SPEEDUP
                             else f"missed: int8 needs {keras_fused[1] / TARGET_SPEEDUP * 1000:.2f} ms or less, "
                             f"{(int8[1] - keras_fused[1] / TARGET_SPEEDUP) * 1000:.2f} ms less than now")
            accuracy_verdict = ("met" if -change <= TARGET_ACCURACY_POINTS
                                else f"missed by {-change - TARGET_ACCURACY_POINTS:.1f} points")
            print(f"\nint8 TFLite vs fused Keras, batch 1: {int8[1] * 1000:.2f} vs "
                  f"{keras_fused[1] * 1000:.2f} ms, {speedup:.2f}x faster (target >= {TARGET_SPEEDUP:g}x: "
                  f"{speed_verdict})")
            print(f"int8 TFLite vs fused Keras, test accuracy: {int8['accuracy']:.1%} vs "
                  f"{keras_fused['accuracy']:.1%}, {change:+.1f} points (target within "
                  f"{TARGET_ACCURACY_POINTS:g}: {accuracy_verdict}; one test image is "
                  f"{100 / len(test_labels):.1f} points)")
        if failures:
            print(f"\nfailed: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
