"""Training input pipeline throughput: keras_parnet.data vs ImageDataGenerator.

Writes a folder of photo-like JPEGs (2 classes) to a temporary folder, then
times, side by side in one run, the images per second of
`make_dataset(training=True)` and of the original
`ImageDataGenerator(...).flow_from_directory(...)` with the same augmentation
(rotation 50, shifts 0.1, shear 10, zoom 0.1, horizontal flip, brightness
0.7-1.3, fill "nearest") and the same size and batch, and prints the ratio.

Needs the bench extra (scipy, which ImageDataGenerator's transforms use): pip install -e ".[bench]"

    python benchmarks/bench_data.py [--images 200] [--size 256] [--batch-size 16]
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def write_jpegs(folder, count, width=500, height=375, seed=0):
    """`count` smooth-plus-noise RGB JPEGs split over classes a/ and b/."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    for index in range(count):
        phase = rng.uniform(0, 2 * np.pi, 3)
        scale = rng.uniform(10, 60, 3)
        channels = [127 + 90 * np.sin(cols / scale[c] + phase[c]) * np.cos(rows / scale[2 - c]) for c in range(3)]
        pixels = np.stack(channels, axis=-1) + rng.normal(0, 12, (height, width, 3))
        class_dir = os.path.join(folder, "ab"[index % 2])
        os.makedirs(class_dir, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(class_dir, f"{index:04d}.jpg"), quality=90)


def throughput(batches, epochs):
    """Iterates `epochs` passes of `batches()` (an iterable of (x, y) per
    pass) after one warm-up pass; returns (images per second, CPU
    milliseconds per image over all threads of this process)."""
    for _ in batches():
        pass
    images, start, cpu_start = 0, time.perf_counter(), time.process_time()
    for _ in range(epochs):
        for x, _ in batches():
            images += len(x)
    return images / (time.perf_counter() - start), (time.process_time() - cpu_start) * 1000 / images


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="number of JPEGs, 500x375 (default 200)")
    parser.add_argument("--size", type=int, default=256, help="model input size in pixels (default 256)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    parser.add_argument("--epochs", type=int, default=2, help="timed passes over the folder after a warm-up "
                        "pass (default 2)")
    args = parser.parse_args(argv)

    try:
        import scipy  # noqa: F401
    except ImportError:
        sys.exit('error: bench_data.py needs scipy for ImageDataGenerator\'s transforms: pip install -e ".[bench]"')
    # Keras 3 keeps the legacy generator only under the tf.keras name.
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    from keras_parnet.data import make_dataset

    with tempfile.TemporaryDirectory() as folder:
        write_jpegs(folder, args.images)
        size = (args.size, args.size)

        start = time.perf_counter()
        dataset, _, count = make_dataset(folder, size, args.batch_size, training=True, seed=0)
        print(f"make_dataset (scan of {count} files, graph building): {time.perf_counter() - start:.2f} s")
        ours, ours_cpu = throughput(lambda: dataset, args.epochs)

        generator = ImageDataGenerator(
            rotation_range=50, width_shift_range=0.1, height_shift_range=0.1, rescale=1 / 255,
            shear_range=10, zoom_range=0.1, horizontal_flip=True, brightness_range=(0.7, 1.3),
            fill_mode="nearest",
        ).flow_from_directory(folder, target_size=size, batch_size=args.batch_size, seed=0)
        theirs, theirs_cpu = throughput(lambda: (generator[i] for i in range(len(generator))), args.epochs)

    print(f"{args.images} JPEGs 500x375 -> {args.size}x{args.size}, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, training augmentation")
    print(f"  keras_parnet.data.make_dataset:     {ours:7.1f} images/s  {ours_cpu:5.2f} CPU ms/image")
    print(f"  ImageDataGenerator.flow_from_dir.:  {theirs:7.1f} images/s  {theirs_cpu:5.2f} CPU ms/image")
    print(f"  ratio: {ours / theirs:.1f}x images/s, {theirs_cpu / ours_cpu:.1f}x less CPU per image")


if __name__ == "__main__":
    main()
