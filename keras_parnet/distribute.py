"""Training on several devices and machines with `tf.distribute`.

Strategies (`train.py --strategy`):

    default        one device (TensorFlow's default strategy)
    mirrored       `MirroredStrategy` over this machine's GPUs (else its CPU devices)
    multi-worker   `MultiWorkerMirroredStrategy` over the cluster in `TF_CONFIG`
    auto           multi-worker when `TF_CONFIG` names more than one task,
                   mirrored when more than one GPU is visible, else default

Every replica trains on `batch_size` images per step (`--batch-size` is per
replica), so a step's global batch is `batch_size * num_replicas_in_sync`.

In a cluster the chief (task "chief", else worker 0) writes the run folder;
the other workers write the same files into temporary folders removed at the
end. Every worker shuffles the file list in the same order (a seed shared by
the chief), takes its own contiguous part of each global batch and decodes
and augments only those images (`train.distributed_datasets`), so a step's global
batch holds the images one device would train on with that seed, each image
once per epoch.

BatchNormalization normalizes with the statistics of the global batch
(synchronized across replicas) unless `prepare_model` is told otherwise
(`train.py --no-sync-bn`): per-replica statistics save one all-reduce per
BatchNormalization layer and step, which between machines costs far more
than the layer itself.
"""

import contextlib
import json
import os
import random
import tempfile
from pathlib import Path

import keras
import tensorflow as tf
from keras import tree

from keras_parnet import compat

STRATEGIES = ("auto", "default", "mirrored", "multi-worker")
TASK_TYPES = ("chief", "worker")
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


class DistributeError(ValueError):
    """A distribution setting (strategy name, `TF_CONFIG`) that cannot work."""


def read_tf_config():
    """The `TF_CONFIG` environment variable as a dict, or `None` when unset.

    Raises:
        DistributeError: not JSON, no cluster, task types other than chief and
            worker, or a task that is not in the cluster.
    """
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except ValueError as error:
        raise DistributeError(f"TF_CONFIG is not valid JSON ({error}); expected e.g. {TF_CONFIG_EXAMPLE}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise DistributeError(f"TF_CONFIG has no \"cluster\" of task addresses; expected e.g. {TF_CONFIG_EXAMPLE}")
    other_types = sorted(set(cluster) - set(TASK_TYPES))
    if other_types:
        raise DistributeError(f"TF_CONFIG's cluster has {', '.join(other_types)} tasks: multi-worker training "
                              "uses only \"chief\" and \"worker\" tasks.")
    task = config.get("task") or {}
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise DistributeError(f"TF_CONFIG's task {json.dumps(task)} is not in its cluster: set \"task\" to "
                              "{\"type\": \"worker\", \"index\": i} with i this machine's position in the "
                              "worker list.")
    return config


def choose_strategy(name, gpu_count, tf_config):
    """The strategy `name` stands for: `auto` resolved, the others as given."""
    if name not in STRATEGIES:
        raise DistributeError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}.")
    if name != "auto":
        return name
    if tf_config and sum(len(addresses) for addresses in tf_config["cluster"].values()) > 1:
        return "multi-worker"
    return "mirrored" if gpu_count > 1 else "default"


def make_strategy(name="auto"):
    """Creates the `tf.distribute` strategy `name` stands for.

    Call it before any other TensorFlow op: `MultiWorkerMirroredStrategy`
    configures the runtime for collective ops, which must happen first.
    """
    tf_config = read_tf_config() if name in ("auto", "multi-worker") else None
    name = choose_strategy(name, len(tf.config.list_physical_devices("GPU")), tf_config)
    if name == "multi-worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    return tf.distribute.get_strategy()


def worker_count(strategy):
    """Number of machines (processes) training together."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    return strategy.num_replicas_in_sync // len(strategy.extended.worker_devices)


def is_chief(strategy):
    """Whether this process writes the run folder (always, out of a cluster)."""
    return strategy.extended.should_checkpoint


def describe(strategy):
    """One line naming the strategy, its replicas and, in a cluster, this task."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        name = "MultiWorkerMirroredStrategy"
    elif isinstance(strategy, tf.distribute.MirroredStrategy):
        name = "MirroredStrategy"
    else:
        name = "the default strategy"
    replicas = strategy.num_replicas_in_sync
    text = f"{name}, {replicas} replica{'s' if replicas > 1 else ''}"
    workers = worker_count(strategy)
    if workers > 1:
        resolver = strategy.cluster_resolver
        role = "the chief" if is_chief(strategy) else "not the chief"
        text += f" on {workers} workers (this is {resolver.task_type} {resolver.task_id}, {role})"
    return text


@contextlib.contextmanager
def scratch_dir_unless_chief(strategy):
    """`None` on the chief; on other workers a temporary folder for the files
    the chief writes into the run folder, removed on exit."""
    if is_chief(strategy):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="parnet-worker-") as path:
        yield Path(path)


def broadcast_from_chief(strategy, values):
    """The chief's `values` (tensors), on every worker of `strategy`.

    Replica 0 runs on the chief (TensorFlow numbers the chief's devices first):
    every replica adds zeros but replica 0, which adds its values, in one
    all-reduce per dtype of all values of that dtype flattened into one
    vector (a model's weights and optimizer state: hundreds of tensors).
    """

    def chief_values(values):
        context = tf.distribute.get_replica_context()
        from_chief = tf.equal(context.replica_id_in_sync_group, 0)
        sums = [None] * len(values)
        for dtype in {value.dtype for value in values}:
            indices = [index for index, value in enumerate(values) if value.dtype == dtype]
            flat = tf.concat([tf.reshape(values[index], [-1]) for index in indices], axis=0)
            total = context.all_reduce("SUM", tf.where(from_chief, flat, tf.zeros_like(flat)))
            parts = tf.split(total, [values[index].shape.num_elements() for index in indices])
            for index, part in zip(indices, parts):
                sums[index] = tf.reshape(part, values[index].shape)
        return sums

    results = tf.function(lambda values: strategy.run(chief_values, args=(values,)))(list(values))
    return [strategy.experimental_local_results(result)[0] for result in results]


def shared_seed(strategy, seed=None):
    """`seed`, or in a cluster a random seed drawn by the chief.

    The workers must shuffle alike: each takes its part of one common order
    (different orders would repeat some images and skip others within an
    epoch).
    """
    if seed is not None or worker_count(strategy) == 1:
        return seed
    drawn = tf.constant(random.randrange(2**31), tf.int64)
    return int(broadcast_from_chief(strategy, [drawn])[0])


def shard_by_data(dataset):
    """`dataset` set to be split element by element (the images are listed in
    memory, not in files that could be split). Used on one machine, where this
    policy splits a smaller last batch evenly across the replicas (with
    sharding OFF, a 2-image batch reached two replicas as 2 + 0 images, which
    Keras' build from the first batch cannot average)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def mixed_precision_policy():
    """`mixed_float16` with a GPU, else `mixed_bfloat16` (CPUs lack fast float16)."""
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


@contextlib.contextmanager
def dtype_policy(name):
    """Layers created inside use the Keras dtype policy `name` (`None`: unchanged)."""
    previous = keras.config.dtype_policy()
    if name is not None:
        keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class MultiWorkerModel(compat.SymbolicBuildHook):
    """A functional model whose `fit` works under `MultiWorkerMirroredStrategy`.

    Keras 3.15 (and its main branch in August 2026) fails there in two places
    (keras-team/keras#20585): before training it reduces a whole `(x, y)` batch
    with one `strategy.reduce` call, which this strategy rejects, only to learn
    the input shapes; and it averages each step's metrics across workers with
    `strategy.reduce("MEAN", value, axis=0)`, which fails for scalars.
    Weights are stored as in the wrapped model.
    """

    def build_from_batch(self, data_batch):
        # Shapes are all the build needs: this replica's part of the batch has them.
        data_batch = tree.map_structure(
            lambda value: self.distribute_strategy.experimental_local_results(value)[0], data_batch)
        with self.distribute_strategy.scope():
            compat.symbolic_build(self, data_batch)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        results = super().compute_metrics(x, y, y_pred, sample_weight)
        return {name: tf.reshape(value, [1]) for name, value in results.items()}


def prepare_model(model, strategy, sync_bn=True):
    """`model` set up for `fit` under `strategy`; call it in `strategy.scope()`.

    With several replicas and `sync_bn`, BatchNormalization normalizes with the
    statistics of the global batch (`synchronized`), so that training equals
    one device's with the same global batch. Without, each replica normalizes
    with its own part's statistics and updates its own copy of the moving
    statistics (Keras creates them without an aggregation): the copies drift
    apart, each replica validates with its own, and the chief saves its first
    replica's (estimated from that replica's images only). With several
    workers, the model is wrapped in a `MultiWorkerModel`.

    Returns:
        The model to compile and fit (sharing `model`'s layers and weights).
    """
    if sync_bn and strategy.num_replicas_in_sync > 1:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    if worker_count(strategy) > 1:
        model = MultiWorkerModel(model.inputs, model.outputs, name=model.name)
    return model
