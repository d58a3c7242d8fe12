"""Training input pipeline per worker: 1 worker vs 2 local workers with sharded input.

Writes a folder of photo-like JPEGs (2 classes, 500x375) to a temporary
folder (or reads --dataset's class folders), then times the training input
pipeline of keras_parnet.data (decode + resize + augmentation + batching, no
model), side by side in one run:

  1 worker    one process runs the whole pipeline: every global batch.
  2 workers   two processes run at the same time on this machine, each its
              shard (make_dataset(shard=(2, i)), as train.py's workers in a
              cluster): half of every global batch, chosen before decoding.

Each process times its own passes after a warm-up pass, starting together.
It prints every worker's images/s and the epoch time of each case (for 2
workers, the slower worker's); their ratio is the speed-up of the input of a
step. Both workers share this machine's cores, so the ratio is a lower bound
for workers on separate machines. (Before sharding, each worker decoded and
augmented every image and kept its half: its epoch took as long as one
worker's.)

    python benchmarks/bench_input_workers.py [--images 256] [--size 224] [--batch-size 32]
"""

import argparse
import multiprocessing
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_data import write_jpegs  # noqa: E402


def time_worker(folder, size, batch_size, epochs, shard, start, results):
    """Runs in its own process: times `epochs` passes of this worker's
    training pipeline after a warm-up pass and puts `(shard, images, seconds)`
    on `results`."""
    from keras_parnet import data

    dataset, _, _ = data.make_dataset(folder, size, batch_size, training=True, seed=0, shard=shard)
    for _ in dataset:  # traces the pipeline, reads the files once
        pass
    start.wait()
    images, begin = 0, time.perf_counter()
    for _ in range(epochs):
        for batch_images, _ in dataset:
            images += int(batch_images.shape[0])
    results.put((shard, images, time.perf_counter() - begin))


def run_workers(folder, args, shards):
    """Starts one process per shard together; returns their results by shard."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(len(shards)), context.Queue()
    processes = [context.Process(target=time_worker,
                                 args=(folder, args.size, args.batch_size, args.epochs, shard, start, results))
                 for shard in shards]
    for process in processes:
        process.start()
    measured = {}
    for _ in shards:
        shard, images, seconds = results.get()
        measured[shard] = (images, seconds)
    for process in processes:
        process.join()
    return [measured[shard] for shard in shards]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="number of JPEGs written, 500x375 (default 256)")
    parser.add_argument("--dataset", help="a split folder with one subfolder of images per class, instead of "
                        "writing JPEGs (e.g. dataset/demo_faces/train)")
    parser.add_argument("--size", type=int, default=224, help="model input size in pixels (default 224)")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size, even (default 32)")
    parser.add_argument("--epochs", type=int, default=2, help="timed passes after a warm-up pass (default 2)")
    args = parser.parse_args(argv)
    if args.batch_size % 2:
        parser.error(f"argument --batch-size: {args.batch_size} is odd: two workers take half of each batch")

    with tempfile.TemporaryDirectory() as written:
        folder = args.dataset or written
        if not args.dataset:
            write_jpegs(folder, args.images)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"{folder}: {args.size} px, global batch {args.batch_size}, {args.epochs} timed epochs, "
              f"{cores} CPU cores shared by the workers")
        (one,) = run_workers(folder, args, [None])
        two = run_workers(folder, args, [(2, 0), (2, 1)])

    print(f"{'':10s} {'worker':>6s} {'images':>7s} {'seconds':>8s} {'images/s':>9s}")
    print(f"{'1 worker':10s} {0:6d} {one[0]:7d} {one[1]:8.2f} {one[0] / one[1]:9.1f}")
    for index, (images, seconds) in enumerate(two):
        print(f"{'2 workers':10s} {index:6d} {images:7d} {seconds:8.2f} {images / seconds:9.1f}")
    epoch_one, epoch_two = one[1] / args.epochs, max(seconds for _, seconds in two) / args.epochs
    print(f"epoch of the input: {epoch_one:.2f} s with 1 worker, {epoch_two:.2f} s with 2 workers "
          f"(ratio {epoch_one / epoch_two:.2f}); images/s per worker: "
          f"{one[0] / one[1]:.1f} vs {sum(images / seconds for images, seconds in two) / 2:.1f} "
          f"(ratio {sum(images / seconds for images, seconds in two) / 2 / (one[0] / one[1]):.2f})")


if __name__ == "__main__":
    main()
