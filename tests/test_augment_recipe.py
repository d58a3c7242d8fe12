"""timm's recipe augmentations with Keras' layers (`make_dataset`'s
randaugment, random_erasing, mixup and cutmix): each checked against the
images written, in numpy, on a folder of one noise image per class (so a
label row names the images an output mixes)."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_parnet import data
from keras_parnet.cli.train import parse_flags, resolve_settings
from keras_parnet.train import DEFAULTS, distributed_datasets, with_class_weight

SIZE = 32
CLASSES = 6
# The affine transform and brightness off: the new augmentations alone.
NO_AFFINE = data.Augmentation(rotation=0, width_shift=0, height_shift=0, shear=0, zoom=0, horizontal_flip=False,
                              brightness=None)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """`(root, originals)`: train/ and test/ with one lossless 32 px image
    per class, pixels 1-254 (noise fills give other values: exactly 0 or 255,
    or not whole numbers), the same images in both splits."""
    root = tmp_path_factory.mktemp("recipe")
    originals = np.random.default_rng(0).integers(1, 255, (CLASSES, SIZE, SIZE, 3), dtype=np.uint8)
    for split in ("train", "test"):
        for label, pixels in enumerate(originals):
            (root / split / f"c{label}").mkdir(parents=True)
            Image.fromarray(pixels).save(root / split / f"c{label}" / "image.png")
    return root, originals.astype("float32")


def batches(root, epochs=3, seed=1, augmentation=NO_AFFINE, **recipe):
    """The training batches of a few epochs, all images in one batch in class order."""
    dataset, _, _ = data.make_dataset(root / "train", SIZE, CLASSES, training=True, shuffle=False,
                                      augmentation=augmentation, seed=seed, **recipe)
    return [(images.numpy(), labels.numpy()) for _ in range(epochs) for images, labels in dataset]


def partner(row, index):
    """The other image a mixed label row names (`index` itself if none)."""
    others = np.delete(row, index)
    return index if others.max() == 0 else int(np.flatnonzero(row == others.max())[0])


def box_around(mask):
    """The smallest rectangle (a boolean mask) holding every True of `mask`."""
    rows, cols = np.nonzero(mask)
    box = np.zeros_like(mask)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    return box


def test_mixup_mixes_each_image_with_the_partner_and_weight_of_its_label(dataset):
    root, originals = dataset
    mixed = 0
    for images, labels in batches(root, mixup=1.0):
        np.testing.assert_allclose(labels.sum(axis=1), 1, atol=1e-6)
        partners = [partner(row, index) for index, row in enumerate(labels)]
        assert sorted(partners) == list(range(CLASSES))  # a permutation of the batch
        for index, (image, row, other) in enumerate(zip(images, labels, partners)):
            lam = row[index] if other != index else 1.0
            expected_row = np.zeros(CLASSES)
            expected_row[index] += lam
            expected_row[other] += 1 - lam
            np.testing.assert_allclose(row, expected_row, atol=1e-6)
            np.testing.assert_allclose(image, lam * originals[index] + (1 - lam) * originals[other], atol=1e-3)
            mixed += other != index and 0.01 < lam < 0.99
    assert mixed  # the check above saw real mixes


def test_cutmix_pastes_a_box_of_the_partner_weighed_by_its_area(dataset):
    root, originals = dataset
    pasted_boxes = 0
    for images, labels in batches(root, cutmix=1.0):
        np.testing.assert_allclose(labels.sum(axis=1), 1, atol=1e-6)
        for index, (image, row) in enumerate(zip(images, labels)):
            other = partner(row, index)
            changed = (image != originals[index]).any(axis=-1)
            if other == index:
                assert not changed.any()
                continue
            box = box_around(changed)
            np.testing.assert_array_equal(changed, box)
            np.testing.assert_array_equal(image[box], originals[other][box])
            np.testing.assert_array_equal(image[~box], originals[index][~box])
            assert row[other] == pytest.approx(box.mean(), abs=1e-6)
            assert row[index] == pytest.approx(1 - box.mean(), abs=1e-6)
            pasted_boxes += 1
    assert pasted_boxes


def test_mixup_and_cutmix_together_give_each_batch_one_of_them(dataset):
    root, originals = dataset
    kinds = set()
    for images, labels in batches(root, epochs=8, mixup=1.0, cutmix=1.0):
        unchanged = [(image == original).all(axis=-1).mean() for image, original in zip(images, originals)]
        # CutMix keeps each image's pixels outside its box; MixUp blends every pixel of a mixed image.
        kinds.add("cutmix" if min(unchanged) > 0 else "mixup")
    assert kinds == {"mixup", "cutmix"}


def test_random_erasing_always_fills_one_rectangle_and_keeps_the_rest(dataset):
    root, originals = dataset
    for images, labels in batches(root, random_erasing=1.0):
        np.testing.assert_array_equal(labels, np.eye(CLASSES))
        for image, original in zip(images, originals):
            erased = (image != original).any(axis=-1)
            assert erased.any()
            box = box_around(erased)
            np.testing.assert_array_equal(erased, box)
            np.testing.assert_array_equal(image[~box], original[~box])
            assert 0 <= image.min() and image.max() <= 255


def test_random_erasing_never_and_no_augmentation_leave_the_images_as_loaded(dataset):
    root, originals = dataset
    for images, labels in batches(root, epochs=1, random_erasing=0.0) + batches(root, epochs=1):
        np.testing.assert_array_equal(images, originals)
        np.testing.assert_array_equal(labels, np.eye(CLASSES))


@pytest.mark.slow
def test_randaugment_changes_images_within_the_pixel_range_repeatably(dataset):
    root, originals = dataset
    first = batches(root, epochs=2, randaugment=9)
    for images, labels in first:
        assert images.shape == originals.shape and images.dtype == np.float32
        assert images.min() >= 0 and images.max() <= 255
        assert any((image != original).any() for image, original in zip(images, originals))
        np.testing.assert_array_equal(labels, np.eye(CLASSES))
    # The same seed draws the same operations again; the next epoch draws others.
    (again, _), = batches(root, epochs=1, randaugment=9)
    np.testing.assert_array_equal(first[0][0], again)
    assert not np.array_equal(first[0][0], first[1][0])


@pytest.mark.slow
def test_with_every_recipe_knob_off_training_applies_exactly_the_affine_transform(dataset):
    """Bit for bit today's pipeline: each batch is `_augment` of the loaded
    images with that batch's seed, and passing the off values changes nothing."""
    root, originals = dataset
    augmentation = data.Augmentation()
    seeds = tf.data.Dataset.random(seed=3, rerandomize_each_iteration=True).batch(2)
    expected = [data._augment(tf.constant(originals), seed, augmentation).numpy() for seed in seeds.take(1)]
    absent = batches(root, epochs=1, seed=3, augmentation=augmentation)
    off = batches(root, epochs=1, seed=3, augmentation=augmentation, randaugment=None, random_erasing=0.0,
                  mixup=0.0, cutmix=0.0)
    for images, labels in (absent[0], off[0]):
        np.testing.assert_array_equal(images, expected[0])
        np.testing.assert_array_equal(labels, np.eye(CLASSES))


def test_validation_data_is_never_augmented_or_mixed(dataset):
    import keras_parnet.distribute as distribute

    root, originals = dataset
    settings = dict(DEFAULTS, batch_size=CLASSES, image_size=SIZE, random_erasing=1.0, mixup=1.0, cutmix=1.0)
    class_names = data.check_dataset(root)
    splits = data.dataset_splits(root, class_names, val_split=0)
    train_data, val_data = distributed_datasets(settings, root, class_names, NO_AFFINE,
                                                distribute.make_strategy("default"), seed=1, splits=splits)
    for _ in range(2):
        for images, labels in val_data:
            order = np.argmax(labels, axis=1)
            np.testing.assert_array_equal(labels, np.eye(CLASSES)[order])
            np.testing.assert_array_equal(images, originals[order])
    train_labels = np.concatenate([labels for _, labels in train_data])
    assert not np.isin(train_labels, (0.0, 1.0)).all()  # while the training labels are mixed


def test_class_weights_of_mixed_labels_mix_like_the_labels():
    class_weight = {0: 0.5, 1: 2.0, 2: 4.0}
    labels = np.array([[1, 0, 0], [0, 0, 1], [0.25, 0.75, 0], [0, 0.4, 0.6]], "float32")
    dataset = tf.data.Dataset.from_tensors((tf.zeros([4, 2, 2, 3]), labels))
    (_, _, weights), = with_class_weight(dataset, class_weight)
    np.testing.assert_allclose(weights, [0.5, 4.0, 0.25 * 0.5 + 0.75 * 2.0, 0.4 * 2.0 + 0.6 * 4.0], rtol=1e-6)


@pytest.mark.parametrize("recipe, problem", [
    ({"randaugment": 11}, "randaugment must be a magnitude in [0, 10]"),
    ({"random_erasing": 1.5}, "random_erasing must be a probability"),
    ({"mixup": -0.2}, "mixup must be a Beta distribution alpha"),
    ({"cutmix": 2.0}, "cutmix must be a Beta distribution alpha in [0, 1]"),
])
def test_out_of_range_recipe_values_are_refused(dataset, recipe, problem):
    root, _ = dataset
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        data.make_dataset(root / "train", SIZE, CLASSES, training=True, **recipe)


@pytest.mark.parametrize("flags, expected", [
    ([], {"randaugment": None, "random_erasing": 0.0, "mixup": 0.0, "cutmix": 0.0}),
    (["--randaugment", "9", "--random-erasing", "0.25", "--mixup", "0.2", "--cutmix", "1"],
     {"randaugment": 9.0, "random_erasing": 0.25, "mixup": 0.2, "cutmix": 1.0}),
    (["--recipe", "paper", "--mixup", "0.2", "--no-augment"],
     {"randaugment": None, "random_erasing": 0.0, "mixup": 0.0, "cutmix": 0.0}),
])
def test_augmentation_flags_set_the_settings_and_no_augment_switches_them_off(tmp_path, flags, expected):
    settings, _ = resolve_settings(parse_flags(["--dataset", str(tmp_path), *flags]))
    assert {key: settings[key] for key in expected} == expected


@pytest.mark.parametrize("flags, words", [
    (["--randaugment", "11"], ("above 10",)),
    (["--cutmix", "2"], ("above 1", "keras.layers.CutMix")),
    (["--random-erasing", "1.5"], ("fraction",)),
    (["--mixup", "-1"], ("0 or more",)),
])
def test_out_of_range_augmentation_flags_are_one_line_errors(capsys, flags, words):
    with pytest.raises(SystemExit) as stopped:
        parse_flags(flags)
    assert stopped.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: argument {flags[0]}: ") and all(word in last for word in words), last


@pytest.mark.slow
def test_randaugment_per_image_gives_the_pixels_of_the_keras_layer_called_on_each_image(dataset):
    """`_randaugment` computes only the operations picked; the layer computes
    all and keeps those: the same pixels for the same seeds."""
    import keras

    _, originals = dataset
    layer = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.9, dtype="float32")
    seed = tf.constant([5, 6], tf.int64)
    fast = data._randaugment(tf.constant(originals), seed, layer).numpy()
    for image, original, image_seed in zip(fast, originals, tf.random.experimental.stateless_split(seed, CLASSES)):
        with data._seeded(layer, image_seed):
            np.testing.assert_array_equal(image, layer(original).numpy())


def test_randaugment_geometry_has_timms_ranges():
    """At magnitude 9, rotation, shear and translation are drawn from timm's
    ranges at 9/10 (+-27 degrees, +-0.27 shear, +-40.5% of the size) with
    both signs, not Keras' (a factor 0.9 of a whole turn and of the size)."""
    size = 16
    layer = data._randaugment_layer(9)
    transforms = layer.get_random_transformation(np.zeros((512, size, size, 3), "float32"))["transforms"]
    for values, limit in ((transforms["random_rotation"]["angle"], 27.0),
                          (transforms["random_shear"]["shear_factor"], 0.27),
                          (transforms["random_translation"]["translations"], 0.405 * size)):
        values = np.asarray(values)
        assert np.abs(values).max() <= limit + 1e-4
        assert values.max() > 0.8 * limit and values.min() < -0.8 * limit
