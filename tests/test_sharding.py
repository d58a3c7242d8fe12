"""Input sharded per worker before decoding (in a real cluster: test_distribute's
two-worker resume), and per-replica BatchNorm (--no-sync-bn)."""

import itertools
import json
import types

import keras
import numpy as np
import pytest
from conftest import TINY_WIDTHS, write_dark_bright_dataset

from keras_parnet import ParNet, data, distribute
from keras_parnet.cli.train import build_parser, resolve_settings

pytestmark = pytest.mark.usefixtures("shallow_module")  # see conftest.SHALLOW_STREAM_DEPTHS

BATCH = 4  # a global batch of 2 workers x 2 images
EPOCHS = 3


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    """13 images: 3 full batches of 4 and a last batch of 1."""
    return write_dark_bright_dataset(tmp_path_factory.mktemp("data"), (7, 6), (1, 1), ".png") / "train"


def batches_of_files(dataset, pixels_to_file, epochs=EPOCHS):
    """Per epoch, the batches of `dataset` as lists of (file, label) pairs,
    the files found by their decoded pixels."""
    return [[[(pixels_to_file[image.tobytes()], int(np.argmax(label))) for image, label in zip(*batch)]
             for batch in dataset.as_numpy_iterator()] for _ in range(epochs)]


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("drop_remainder", [True, False], ids=["training", "validation"])
def test_two_shards_split_every_batch_of_one_worker(split_dir, cache, drop_remainder):
    paths, labels, class_names = data.scan_split(split_dir)
    pixels_to_file = {data.load_image(path, 32).tobytes(): path for path in paths}
    assert len(pixels_to_file) == len(paths) == 13
    label_of = dict(zip(paths, labels.tolist()))

    def epochs(shard=None):
        dataset, _, count = data.make_dataset(split_dir, 32, BATCH, shuffle=True, seed=7, cache=cache,
                                              shard=shard, drop_remainder=drop_remainder)
        assert count == 13
        batches = batches_of_files(dataset, pixels_to_file)
        assert {len(epoch) for epoch in batches} == {int(dataset.cardinality())}  # Keras counts steps from it
        return batches

    one_worker, worker0, worker1 = epochs(), epochs((2, 0)), epochs((2, 1))
    kept = 12 if drop_remainder else 13
    for single, first, second in zip(one_worker, worker0, worker1):
        # Worker 0 takes the first half of each batch, worker 1 the second half.
        for batch, part0, part1 in itertools.zip_longest(single, first, second, fillvalue=[]):
            assert len(batch) in (BATCH, 13 % BATCH) and batch == part0 + part1
            assert len(part0) == min(len(batch), BATCH // 2)
        files0 = [file for batch in first for file, _ in batch]
        files1 = [file for batch in second for file, _ in batch]
        assert not set(files0) & set(files1)
        assert len(set(files0)) + len(set(files1)) == len(files0) + len(files1) == kept
        assert set(files0) | set(files1) <= set(paths)
        assert all(label == label_of[file] for batch in first + second for file, label in batch)
    # Each epoch its own order.
    orders = [[file for batch in single for file, _ in batch] for single in one_worker]
    assert len({tuple(order) for order in orders}) == EPOCHS


def test_shards_draw_their_own_augmentation(split_dir):
    """Brightness alone multiplies each image by its random factor: the two
    shards' first batches get other factors than each other."""
    paths, _, _ = data.scan_split(split_dir)
    darker = data.Augmentation(rotation=0, width_shift=0, height_shift=0, shear=0, zoom=0, horizontal_flip=False,
                               brightness=(0.2, 1.0))
    factors = []
    for index in (0, 1):
        dataset, _, _ = data.make_dataset(split_dir, 32, BATCH, training=True, augmentation=darker, seed=3,
                                          shuffle=False, shard=(2, index), drop_remainder=True)
        augmented = next(dataset.as_numpy_iterator())[0]
        originals = np.stack([data.load_image(path, 32) for path in paths[2 * index:2 * index + 2]])
        ratios = augmented / np.maximum(originals, 1)
        factors.append(np.median(ratios.reshape(2, -1), axis=1))
        assert np.allclose(augmented, originals * factors[-1][:, None, None, None], atol=1e-3)
    assert np.all((0.2 <= np.concatenate(factors)) & (np.concatenate(factors) <= 1.0))
    assert not np.allclose(factors[0], factors[1], atol=1e-3)


@pytest.mark.parametrize("shard", [(2, 2), (3, 0), (0, 0)])
def test_a_shard_that_does_not_split_the_batch_is_refused(split_dir, shard):
    with pytest.raises(ValueError, match="is not \\(num_shards, index\\)"):
        data.make_dataset(split_dir, 32, BATCH, shard=shard)


def batch_norm_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.slow
@pytest.mark.parametrize("sync_bn", [True, False])
def test_sync_bn_synchronizes_batch_norm_of_several_replicas_only(sync_bn):
    replicas = types.SimpleNamespace(num_replicas_in_sync=2)  # one worker, two replicas
    model = distribute.prepare_model(ParNet(TINY_WIDTHS, input_shape=(32, 32, 3), classes=2), replicas, sync_bn)
    layers = batch_norm_layers(model)
    assert len(layers) > 10 and {layer.synchronized for layer in layers} == {sync_bn}
    one_device = distribute.prepare_model(ParNet(TINY_WIDTHS, input_shape=(32, 32, 3), classes=2),
                                          types.SimpleNamespace(num_replicas_in_sync=1))
    assert not any(layer.synchronized for layer in batch_norm_layers(one_device))


@pytest.mark.parametrize("flags, expected", [([], True), (["--no-sync-bn"], False)])
def test_no_sync_bn_flag_sets_the_setting(tmp_path, flags, expected):
    settings, _ = resolve_settings(build_parser().parse_args(["--dataset", str(tmp_path), *flags]))
    assert settings["sync_bn"] is expected
    assert json.loads(json.dumps(settings))["sync_bn"] is expected  # as run.json records it
