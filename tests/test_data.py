"""The input pipeline against ImageDataGenerator, numpy references and Pillow."""

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error, run_cli
from keras_parnet import data
from keras_parnet.data import Augmentation, DatasetError, ImageError

NO_AUGMENTATION = dict(rotation=0.0, width_shift=0.0, height_shift=0.0, shear=0.0, zoom=0.0,
                       horizontal_flip=False, brightness=None)
DEMO_DIR = Path(__file__).resolve().parents[1] / "dataset" / "demo_faces"


def save(path, image, mode=None, **options):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image), mode)
    image.save(path, **options)
    return str(path)


def random_rgb(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def all_batches(dataset):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


def only(**changes):
    return Augmentation(**{**NO_AUGMENTATION, **changes})


# --- Layout: the same as flow_from_directory -------------------------------------------------


@pytest.fixture
def mixed_split(tmp_path):
    """3 classes (names whose sorted order is not the creation order), a
    nested folder, several extensions and sizes."""
    rng = np.random.default_rng(0)
    split = tmp_path / "train"
    for name, files in {
        "zebra": ["b.jpg", "a.png", "sub/c.JPG", "sub/deeper/d.bmp", "a0.jpeg"],
        "Ant": ["x.png", "y.jpg"],
        "cat10": ["only.jpg"],
        "cat2": ["p.bmp", "q.png", "r.jpg"],
    }.items():
        for index, file in enumerate(files):
            height, width = 20 + 7 * index, 30 + 5 * index
            if file.endswith("png") and index % 2:
                save(split / name / file, rng.integers(0, 256, (height, width), dtype=np.uint8), "L")
            else:
                save(split / name / file, random_rgb(rng, height, width), quality=90)
    (split / "zebra" / "notes.txt").write_text("not an image")
    return split


def test_order_labels_and_pixels_match_flow_from_directory(mixed_split):
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    size = (24, 36)
    generator = ImageDataGenerator().flow_from_directory(
        mixed_split, target_size=size, batch_size=5, shuffle=False)
    paths, labels, class_names = data.scan_split(mixed_split)
    dataset, names, count = data.make_dataset(mixed_split, size, batch_size=5)

    assert class_names == names == sorted(generator.class_indices, key=generator.class_indices.get)
    assert class_names == ["Ant", "cat10", "cat2", "zebra"]
    assert paths == generator.filepaths
    np.testing.assert_array_equal(labels, generator.classes)
    assert count == generator.samples == 11

    images, one_hot = all_batches(dataset)
    expected_images, expected_labels = map(np.concatenate, zip(*(generator[i] for i in range(len(generator)))))
    np.testing.assert_array_equal(one_hot, expected_labels)
    assert one_hot.dtype == images.dtype == np.float32
    assert images.shape == (11, *size, 3) and images.min() >= 0 and images.max() <= 255
    # Same decoders and nearest-neighbour resize: equal pixels, except in rows
    # and columns whose source coordinate is a tie between two pixels (Pillow
    # takes the lower one, TensorFlow the upper).
    for path, image, expected in zip(paths, images, expected_images):
        with Image.open(path) as source:
            width, height = source.size
        tie_rows, tie_cols = ties(height, size[0]), ties(width, size[1])
        differs = np.abs(image - expected).max(axis=-1) > 1e-6
        assert not (differs & ~tie_rows[:, None] & ~tie_cols[None, :]).any(), path
        assert differs.mean() < 0.3, path


def ties(source_length, target_length):
    """Target positions whose source coordinate (pixel centres) is exactly
    between two source pixels."""
    coordinate = (np.arange(target_length) + 0.5) * source_length / target_length
    return np.isclose(coordinate, np.round(coordinate))


def test_hidden_files_and_other_extensions_are_ignored_silently(tmp_path):
    rng = np.random.default_rng(1)
    save(tmp_path / "a" / "1.png", random_rgb(rng, 8, 8))
    save(tmp_path / "a" / ".ipynb_checkpoints" / "2.png", random_rgb(rng, 8, 8))
    save(tmp_path / ".ipynb_checkpoints" / "3.png", random_rgb(rng, 8, 8))
    (tmp_path / "a" / "._1.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "a" / "readme.md").write_text("hello")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths, labels, class_names = data.scan_split(tmp_path)
    assert class_names == ["a"] and paths == [str(tmp_path / "a" / "1.png")]
    np.testing.assert_array_equal(labels, [0])


def test_class_names_argument_sets_label_order(mixed_split):
    paths, labels, class_names = data.scan_split(mixed_split, ["zebra", "Ant"])
    assert class_names == ["zebra", "Ant"]
    assert labels.tolist() == [0] * 5 + [1] * 2
    for path, label in zip(paths, labels):
        assert Path(path).relative_to(mixed_split).parts[0] == class_names[label]


# --- Evaluation and training data --------------------------------------------------------------


def test_evaluation_is_deterministic_unaugmented_and_equals_load_image(mixed_split):
    dataset, _, _ = data.make_dataset(mixed_split, 16, batch_size=4, augmentation=Augmentation())
    first, labels = all_batches(dataset)
    second, _ = all_batches(dataset)
    np.testing.assert_array_equal(first, second)
    paths, scanned_labels, _ = data.scan_split(mixed_split)
    np.testing.assert_array_equal(first, np.stack([data.load_image(path, 16) for path in paths]))
    np.testing.assert_array_equal(labels.argmax(axis=1), scanned_labels)


def test_non_square_size_and_cache(mixed_split):
    plain, _ = all_batches(data.make_dataset(mixed_split, (12, 20), batch_size=3)[0])
    cached_dataset = data.make_dataset(mixed_split, (12, 20), batch_size=3, cache=True)[0]
    for _ in range(2):
        cached, _ = all_batches(cached_dataset)
        np.testing.assert_array_equal(cached, plain)
    assert plain.shape == (11, 12, 20, 3)


@pytest.mark.parametrize("cache", [False, True])
def test_training_reshuffles_each_epoch_and_seed_repeats(mixed_split, cache):
    evaluation, _ = all_batches(data.make_dataset(mixed_split, 8, batch_size=4)[0])

    def epochs(seed):
        dataset = data.make_dataset(mixed_split, 8, batch_size=4, training=True,
                                    augmentation=only(), seed=seed, cache=cache)[0]
        return [all_batches(dataset) for _ in range(3)]

    runs = epochs(seed=3)
    for (images, labels), (again, again_labels) in zip(runs, epochs(seed=3)):
        np.testing.assert_array_equal(images, again)
        np.testing.assert_array_equal(labels, again_labels)
    orders = []
    for images, labels in runs:
        # Every image once per epoch, with its own label.
        order = [int(np.flatnonzero((evaluation == image).all(axis=(1, 2, 3)))[0]) for image in images]
        assert sorted(order) == list(range(len(evaluation)))
        np.testing.assert_array_equal(labels.argmax(1), data.scan_split(mixed_split)[1][order])
        orders.append(order)
    assert len({tuple(order) for order in orders} | {tuple(range(len(evaluation)))}) > 2


def test_training_applies_the_default_augmentation(mixed_split):
    evaluation, _ = all_batches(data.make_dataset(mixed_split, 16, batch_size=4)[0])
    training, _ = all_batches(data.make_dataset(mixed_split, 16, batch_size=4, training=True,
                                                shuffle=False, seed=0)[0])
    assert training.shape == evaluation.shape
    assert not np.isclose(training, evaluation, atol=1e-3).all(axis=(1, 2, 3)).any()
    assert training.min() >= 0 and training.max() <= 255


# --- Each augmentation does what it says --------------------------------------------------------


@pytest.fixture
def copies(tmp_path):
    """16 copies of one random 24x32 image; returns (split dir, float32 image)."""
    image = random_rgb(np.random.default_rng(2), 24, 32)
    for index in range(16):
        save(tmp_path / "only" / f"{index:02d}.png", image)
    return tmp_path, image.astype(np.float32)


def augmented(split, augmentation, size, seed=0):
    return all_batches(data.make_dataset(split, size, batch_size=16, training=True,
                                         augmentation=augmentation, seed=seed)[0])[0]


def test_flip_only_mirrors_about_half(copies):
    split, image = copies
    outputs = augmented(split, only(horizontal_flip=True), (24, 32))
    mirrored = [np.allclose(output, image[:, ::-1], atol=1e-4) for output in outputs]
    unchanged = [np.allclose(output, image, atol=1e-4) for output in outputs]
    assert all(m != u for m, u in zip(mirrored, unchanged))
    assert 2 <= sum(mirrored) <= 14


def test_brightness_only_scales_each_image_within_range(copies):
    split, image = copies
    outputs = augmented(split, only(brightness=(0.7, 1.3)), (24, 32))
    dark = (image > 25) & (image < 178)  # never clipped
    factors = [np.median(output[dark] / image[dark]) for output in outputs]
    for output, factor in zip(outputs, factors):
        assert 0.7 <= factor <= 1.3
        np.testing.assert_allclose(output, np.minimum(image * factor, 255.0), atol=1e-3)
    assert np.ptp(factors) > 0.2


@pytest.fixture
def ramp(tmp_path):
    """A 64x64 image whose red channel is 4 * column and green 4 * row, so
    each output pixel tells the input point it sampled."""
    rows, cols = np.mgrid[0:64, 0:64]
    image = np.stack([cols * 4, rows * 4, np.full_like(rows, 128)], axis=-1).astype(np.uint8)
    for index in range(16):
        save(tmp_path / "ramp" / f"{index:02d}.png", image)
    return tmp_path


def sampled_matrices(outputs):
    """Least-squares affine maps (output x, y, 1) -> sampled input (x, y) over
    the central 21x21 pixels (far from the filled border)."""
    rows, cols = np.mgrid[22:43, 22:43]
    design = np.stack([cols.ravel(), rows.ravel(), np.ones(rows.size)], axis=1)
    matrices = []
    for output in outputs:
        target = output[22:43, 22:43, :2].reshape(-1, 2) / 4
        matrix = np.linalg.lstsq(design, target, rcond=None)[0]
        assert np.abs(design @ matrix - target).max() < 0.01  # bilinear of a ramp is exact
        matrices.append(matrix.T)
    return np.array(matrices)


@pytest.mark.parametrize("name", ["rotation", "shift", "shear", "zoom", "flip"])
def test_each_geometric_augmentation_samples_its_own_matrix(ramp, name):
    center = np.array([31.5, 31.5])
    augmentation = {
        "rotation": only(rotation=50.0),
        "shift": only(width_shift=0.1, height_shift=0.2),
        "shear": only(shear=10.0),
        "zoom": only(zoom=0.1),
        "flip": only(horizontal_flip=True),
    }[name]
    matrices = sampled_matrices(augmented(ramp, augmentation, 64))
    linear, translation = matrices[:, :, :2], matrices[:, :, 2]
    if name == "shift":
        np.testing.assert_allclose(linear, np.broadcast_to(np.eye(2), linear.shape), atol=1e-3)
        assert (np.abs(translation) <= [6.4 + 1e-3, 12.8 + 1e-3]).all()
        assert np.abs(translation[:, 1]).max() > 6.4  # rows move by up to 0.2 * height
        return
    # Every other transform keeps the centre in place.
    np.testing.assert_allclose(np.einsum("bij,j->bi", linear, center) + translation,
                               np.broadcast_to(center, translation.shape), atol=1e-3)
    if name == "rotation":
        angles = np.degrees(np.arctan2(linear[:, 1, 0], linear[:, 0, 0]))
        cos, sin = np.cos(np.radians(angles)), np.sin(np.radians(angles))
        np.testing.assert_allclose(linear, np.stack([[cos, -sin], [sin, cos]]).transpose(2, 0, 1), atol=1e-3)
        assert np.abs(angles).max() <= 50 and np.ptp(angles) > 30
    elif name == "shear":
        angles = np.degrees(np.arcsin(-linear[:, 0, 1]))
        np.testing.assert_allclose(linear[:, 1, 1], np.cos(np.radians(angles)), atol=1e-3)
        np.testing.assert_allclose(linear[:, [0, 1], [0, 0]], np.ones((16, 2)) * [1, 0], atol=1e-3)
        assert np.abs(angles).max() <= 10 and np.ptp(angles) > 5
    elif name == "zoom":
        zooms = linear[:, [0, 1], [0, 1]]
        np.testing.assert_allclose(linear[:, [0, 1], [1, 0]], 0, atol=1e-3)
        assert ((zooms >= 0.9 - 1e-3) & (zooms <= 1.1 + 1e-3)).all()
        assert np.abs(zooms[:, 0] - zooms[:, 1]).max() > 0.02  # each axis its own factor
    else:
        np.testing.assert_allclose(np.abs(linear), np.broadcast_to(np.eye(2), linear.shape), atol=1e-3)
        assert set(np.round(linear[:, 0, 0]).tolist()) == {-1.0, 1.0}


def fused(image, angle=0.0, shift_x=0.0, shift_y=0.0, shear=0.0, zoom_x=1.0, zoom_y=1.0, flip=1.0,
          fill_mode="nearest"):
    import tensorflow as tf

    params = [tf.constant([value], tf.float32) for value in (angle, shift_x, shift_y, shear, zoom_x, zoom_y, flip)]
    matrices = data._affine_matrices(*params, height=image.shape[0], width=image.shape[1])
    return data._resample(tf.constant(image[None], tf.float32), matrices, fill_mode).numpy()[0]


def test_fused_transform_rotates_by_90_and_flips_exactly():
    image = np.random.default_rng(3).random((9, 9, 3)).astype(np.float32)
    np.testing.assert_allclose(fused(image, angle=90), np.rot90(image), atol=1e-5)
    np.testing.assert_allclose(fused(image, flip=-1), image[:, ::-1], atol=1e-6)
    # The flip applies to the transformed image, as in the generator.
    np.testing.assert_allclose(fused(image, angle=90, flip=-1), np.rot90(image)[:, ::-1], atol=1e-5)


@pytest.mark.parametrize("fill_mode, pad_mode", [("nearest", "edge"), ("constant", "constant"),
                                                 ("reflect", "symmetric"), ("wrap", "wrap")])
def test_fill_modes_extend_the_image_like_numpy_pad(fill_mode, pad_mode):
    image = np.random.default_rng(4).random((6, 10, 1)).astype(np.float32)
    for shift in (3, -4, 13):  # 13: beyond a whole width
        padded = np.pad(image, ((0, 0), (14, 14), (0, 0)), mode=pad_mode)
        expected = padded[:, 14 + shift:14 + shift + 10]
        np.testing.assert_allclose(fused(image, shift_x=shift, fill_mode=fill_mode), expected, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Please import `affine_transform`:DeprecationWarning")  # in Keras' generator
def test_fused_transform_matches_image_data_generator():
    pytest.importorskip("scipy")  # the generator's transforms need it (the test extra has it)
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    rng = np.random.default_rng(5)
    image = rng.random((40, 40, 3)).astype(np.float32)
    generator = ImageDataGenerator(fill_mode="nearest")
    for _ in range(4):
        params = dict(theta=rng.uniform(-50, 50), tx=rng.uniform(-4, 4), ty=rng.uniform(-4, 4),
                      shear=rng.uniform(-10, 10), zx=rng.uniform(0.9, 1.1), zy=rng.uniform(0.9, 1.1),
                      flip_horizontal=bool(rng.integers(2)))
        expected = generator.apply_transform(image, params)
        # The generator's tx/zx act on columns (it swaps axes), hence x here.
        ours = fused(image, params["theta"], params["tx"], params["ty"], params["shear"], params["zx"],
                     params["zy"], -1.0 if params["flip_horizontal"] else 1.0)
        np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_augmentation_arguments_are_checked():
    with pytest.raises(ValueError, match="zoom must be a fraction in \\[0, 1\\), got 1.5"):
        Augmentation(zoom=1.5)
    with pytest.raises(ValueError, match="brightness must be a range"):
        Augmentation(brightness=(1.3, 0.7))
    with pytest.raises(ValueError, match="fill_mode must be one of nearest, constant, reflect, wrap"):
        Augmentation(fill_mode="mirror")
    assert only().is_identity() and not Augmentation().is_identity()
    assert Augmentation(brightness=[0.5, 1]).brightness == (0.5, 1.0)


# --- File formats -----------------------------------------------------------------------------


def test_color_modes_and_formats_load_as_rgb(tmp_path):
    rng = np.random.default_rng(6)
    rgb = random_rgb(rng, 12, 16)
    gray = rng.integers(0, 256, (12, 16), dtype=np.uint8)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = rng.integers(0, 256, (12, 16), dtype=np.uint8)

    def paletted(index_image):
        image = Image.fromarray(index_image, "P")
        image.putpalette(palette.ravel().tolist())
        return image

    rgba = np.concatenate([rgb, rng.integers(0, 256, (12, 16, 1), dtype=np.uint8)], axis=-1)
    gray16 = rng.integers(0, 65536, (12, 16), dtype=np.uint16)
    first_frame, second_frame = paletted(indices), paletted(255 - indices)
    first_frame.save(tmp_path / "animated.gif", save_all=True, append_images=[second_frame])
    cases = {
        save(tmp_path / "gray.png", gray, "L"): np.repeat(gray[..., None], 3, -1),
        save(tmp_path / "rgba.png", rgba, "RGBA"): rgb,
        save(tmp_path / "gray_alpha.png", Image.fromarray(rgba[..., 2:], "LA")): np.repeat(rgba[..., 2:3], 3, -1),
        save(tmp_path / "palette.png", paletted(indices)): palette[indices],
        str(tmp_path / "animated.gif"): palette[indices],
        save(tmp_path / "rgb24.bmp", rgb): rgb,
        save(tmp_path / "palette.bmp", paletted(indices)): palette[indices],
        save(tmp_path / "bilevel.bmp", Image.fromarray(gray > 127)): np.repeat((gray > 127)[..., None] * 255, 3, -1),
    }
    for path, expected in cases.items():
        np.testing.assert_allclose(data.load_image(path, (12, 16)), expected, atol=1e-4, err_msg=path)
    # 16-bit PNG: full precision (Pillow's convert("RGB") would saturate it).
    path = save(tmp_path / "gray16.png", Image.fromarray(gray16))
    np.testing.assert_allclose(data.load_image(path, (12, 16)), np.repeat(gray16[..., None], 3, -1) / 257,
                               atol=1e-4)


def test_jpegs_grayscale_cmyk_and_misnamed_equal_pillow(tmp_path):
    rng = np.random.default_rng(7)
    # Flat 8x8 blocks of known colours survive JPEG almost exactly.
    blocks = rng.integers(0, 256, (2, 3, 3), dtype=np.uint8)
    rgb = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))
    paths = [
        save(tmp_path / "rgb.jpg", rgb, quality=100, subsampling=0),
        save(tmp_path / "gray.jpeg", rgb[..., 0], "L", quality=100),
        save(tmp_path / "cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=100),
        save(tmp_path / "really_a_jpeg.png", rgb, format="JPEG", quality=100, subsampling=0),
    ]
    for path in paths:
        name = Path(path).name
        loaded = data.load_image(path, (16, 24))
        with Image.open(path) as image:
            pillow = np.asarray(image.convert("RGB"), np.float32)
        # TF and Pillow share libjpeg's accurate IDCT; CMYK->RGB rounds differently.
        np.testing.assert_allclose(loaded, pillow, atol=1.5 if "cmyk" in name else 0.1, err_msg=name)
        reference = np.repeat(rgb[..., :1], 3, -1) if "gray" in name else rgb
        assert np.abs(loaded - reference).mean() < 3, name


def png_chunk(kind, content):
    return struct.pack(">I", len(content)) + kind + content + struct.pack(">I", zlib.crc32(kind + content))


def write_png(path, header, pixel_data):
    """A PNG from its IHDR fields `(width, height, bit depth, color type)`
    and its raw (filtered) pixel rows."""
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", *header, 0, 0, 0))
                           + png_chunk(b"IDAT", zlib.compress(pixel_data)) + png_chunk(b"IEND", b""))
    return str(path)


def test_more_formats_load_like_pillow(tmp_path):
    rng = np.random.default_rng(12)
    rgb = random_rgb(rng, 12, 16)
    indices = Image.fromarray(rng.integers(0, 4, (12, 16), dtype=np.uint8), "P")
    indices.putpalette(rng.integers(0, 256, 12).tolist())
    paths = [
        save(tmp_path / "progressive.jpg", rgb, quality=95, progressive=True),
        save(tmp_path / "bilevel.png", Image.fromarray(rgb[..., 0] > 127)),
        save(tmp_path / "transparent_palette.png", indices, transparency=0),
        save(tmp_path / "rgba32.bmp", np.concatenate([rgb, rgb[..., :1]], axis=-1), "RGBA"),
        save(tmp_path / "really_a_tiff.png", rgb, format="TIFF"),
        save(tmp_path / "really_a_webp.jpg", rgb, format="WEBP", lossless=True),
    ]
    for path in paths:
        with Image.open(path) as image:
            expected = np.asarray(image.convert("RGB"), np.float32)
        np.testing.assert_allclose(data.load_image(path, (12, 16)), expected, atol=1e-4, err_msg=path)
    rgb16 = rng.integers(0, 65536, (12, 16, 3), dtype=np.uint16)
    path = write_png(tmp_path / "rgb16.png", (16, 12, 16, 2),
                     b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb16))
    np.testing.assert_allclose(data.load_image(path, (12, 16)), rgb16 / 257, atol=1e-4)


def test_images_claiming_too_many_pixels_are_skipped_and_named(tmp_path):
    rng = np.random.default_rng(13)
    good = [save(tmp_path / "a" / "good.png", random_rgb(rng, 8, 8))]
    png = write_png(tmp_path / "a" / "bomb.png", (100000, 100000, 8, 2), bytes(100001))
    jpeg = bytearray(Path(save(tmp_path / "a" / "bomb.jpg", random_rgb(rng, 8, 8))).read_bytes())
    struct.pack_into(">HH", jpeg, jpeg.index(b"\xff\xc0") + 5, 65000, 65000)  # height, width
    Path(tmp_path / "a" / "bomb.jpg").write_bytes(bytes(jpeg))
    bmp = bytearray(Path(save(tmp_path / "a" / "bomb.bmp", random_rgb(rng, 8, 8))).read_bytes())
    struct.pack_into("<ii", bmp, 18, 100000, 100000)
    Path(tmp_path / "a" / "bomb.bmp").write_bytes(bytes(bmp))
    gif = bytearray(Path(save(tmp_path / "a" / "bomb.gif", random_rgb(rng, 8, 8))).read_bytes())
    struct.pack_into("<HH", gif, 6, 65535, 65535)  # the logical screen
    Path(tmp_path / "a" / "bomb.gif").write_bytes(bytes(gif))
    good.append(save(tmp_path / "b" / "good.jpg", random_rgb(rng, 8, 8)))
    with pytest.warns(UserWarning) as record:
        paths, _, _ = data.scan_split(tmp_path)
    assert paths == good
    (message,) = [str(warning.message) for warning in record]
    assert message.startswith(f"Skipped 4 unreadable image file(s) in {tmp_path}:")
    limit = f"more than the {Image.MAX_IMAGE_PIXELS} that are decoded"
    assert f"{png} claims 100000x100000 pixels, {limit}" in message
    assert f"{tmp_path / 'a' / 'bomb.jpg'} claims 65000x65000 pixels, {limit}" in message
    assert f"{tmp_path / 'a' / 'bomb.bmp'} claims 100000x100000 pixels, {limit}" in message
    assert f"{tmp_path / 'a' / 'bomb.gif'} is too large to decode" in message


def test_the_pixel_limit_is_pillows(tmp_path, monkeypatch):
    rng = np.random.default_rng(14)
    small = save(tmp_path / "small.jpg", random_rgb(rng, 8, 8))
    large = save(tmp_path / "large.jpg", random_rgb(rng, 8, 9))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64)
    assert data.check_image(small) == data.JPEG
    with pytest.raises(ImageError, match=f"^{large} claims 9x8 pixels, more than the 64 that are decoded"):
        data.load_image(large, 8)


# --- Bad data: one clear message each -----------------------------------------------------------


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(DatasetError, match=f"^{tmp_path / 'nowhere'} does not exist: expected a folder "
                                           "with one subfolder of images per class"):
        data.make_dataset(tmp_path / "nowhere", 32, 4)
    save(tmp_path / "flat" / "image.png", np.zeros((4, 4), np.uint8), "L")
    with pytest.raises(DatasetError, match=f"^{tmp_path / 'flat'} has no class folders: put the images"):
        data.scan_split(tmp_path / "flat")
    save(tmp_path / "split" / "full" / "image.png", np.zeros((4, 4), np.uint8), "L")
    (tmp_path / "split" / "empty").mkdir()
    with pytest.raises(DatasetError, match=f"^{tmp_path / 'split' / 'empty'} has no readable images: add "
                                           "jpg/jpeg/png/bmp/gif files or remove the folder"):
        data.scan_split(tmp_path / "split")
    with pytest.raises(DatasetError, match="has no folder for the classes gone, lost"):
        data.scan_split(tmp_path / "split", ["full", "gone", "lost"])


def test_check_dataset_names_missing_splits_and_class_differences(tmp_path):
    with pytest.raises(DatasetError, match=f"dataset folder {tmp_path / 'none'} does not exist"):
        data.check_dataset(tmp_path / "none")
    for split, names in (("train", ["cat", "dog", "emu"]), ("test", ["cat", "dog", "fox"])):
        for name in names:
            save(tmp_path / "set" / split / name / "1.png", np.zeros((4, 4), np.uint8), "L")
    with pytest.raises(DatasetError, match=r"train and test have different class folders "
                                           r"\(only in train: emu; only in test: fox\)"):
        data.check_dataset(tmp_path / "set")
    save(tmp_path / "ok" / "train" / "b" / "1.png", np.zeros((4, 4), np.uint8), "L")
    save(tmp_path / "ok" / "train" / "a" / "1.png", np.zeros((4, 4), np.uint8), "L")
    with pytest.raises(DatasetError, match=f"{tmp_path / 'ok' / 'test'} does not exist"):
        data.check_dataset(tmp_path / "ok")
    for name in ("a", "b"):
        save(tmp_path / "ok" / "test" / name / "1.png", np.zeros((4, 4), np.uint8), "L")
    assert data.check_dataset(tmp_path / "ok") == ["a", "b"]


@pytest.fixture
def damaged(tmp_path):
    """A split with 3 good images and 4 damaged files in class `a`, and a
    class `b` whose only file is damaged."""
    rng = np.random.default_rng(8)
    good = [save(tmp_path / "a" / f"good{index}.jpg", random_rgb(rng, 16, 16)) for index in range(3)]
    jpeg = Path(good[0]).read_bytes()
    png = Path(save(tmp_path / "spare.png", random_rgb(rng, 16, 16))).read_bytes()
    bad = {
        tmp_path / "a" / "text.jpg": b"this is text",
        tmp_path / "a" / "empty.png": b"",
        tmp_path / "a" / "truncated.jpg": jpeg[: len(jpeg) // 2],
        tmp_path / "a" / "truncated.png": png[:-40],
    }
    for path, content in bad.items():
        path.write_bytes(content)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "half.jpg").write_bytes(jpeg[:100])
    (tmp_path / "spare.png").unlink()
    return tmp_path, good, sorted(str(path) for path in bad)


def test_unreadable_files_are_skipped_with_one_warning(damaged):
    split, good, bad = damaged
    with pytest.warns(UserWarning) as record:
        paths, labels, _ = data.scan_split(split, ["a"])
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith(f"Skipped 4 unreadable image file(s) in {split}:")
    for path in bad:
        assert path in message
    assert f"{split / 'a' / 'text.jpg'} is not an image file" in message
    assert f"{split / 'a' / 'truncated.jpg'} is truncated or corrupt" in message
    assert paths == good and labels.tolist() == [0, 0, 0]
    with pytest.warns(UserWarning, match="Skipped 4"):
        dataset, _, count = data.make_dataset(split, 8, 2, class_names=["a"], training=True)
    assert count == 3 and len(all_batches(dataset)[0]) == 3
    with pytest.warns(UserWarning, match="Skipped 5"), \
            pytest.raises(DatasetError, match=f"{split / 'b'} has no readable images: its 1 image file"):
        data.scan_split(split)


def damage_inside(path):
    """Damages an image file behind a sound header and end, the way a bad disk
    or copy does: a JPEG gets bytes no decoder accepts in the middle of its
    image data, a PNG loses the second half of its data but keeps its end
    chunk. Checks with Pillow that the file no longer decodes."""
    content = bytearray(Path(path).read_bytes())
    if content.startswith(b"\xff\xd8"):
        scan = content.index(b"\xff\xda")
        middle = (scan + len(content)) // 2
        content[middle:middle + 16] = b"\xff\x81" * 8  # an undefined marker
    else:
        content = content[:len(content) // 2] + content[-12:]  # IEND
    Path(path).write_bytes(bytes(content))
    with pytest.raises(Exception):
        with Image.open(path) as image:
            image.convert("RGB")
    return str(path)


def test_a_class_whose_files_all_fail_to_decode_stops_the_scan(tmp_path):
    rng = np.random.default_rng(9)
    for folder in ("train/a", "test/a", "test/b"):
        for index in range(2):
            save(tmp_path / folder / f"{index}.jpg", random_rgb(rng, 32, 32))
    damaged = [damage_inside(save(tmp_path / "train" / "b" / "0.jpg", random_rgb(rng, 32, 32))),
               damage_inside(save(tmp_path / "train" / "b" / "1.png", random_rgb(rng, 32, 32)))]
    assert Path(damaged[0]).read_bytes().endswith(b"\xff\xd9")
    assert data.check_dataset(tmp_path) == ["a", "b"]  # the folders are fine
    with pytest.warns(UserWarning) as record, pytest.raises(DatasetError) as error:
        data.make_dataset(tmp_path / "train", 16, 2, ["a", "b"], training=True)
    assert str(error.value) == (f"{tmp_path / 'train' / 'b'} has no readable images: its 2 image file(s) "
                                "cannot be decoded (named in the warning); replace them or remove the folder.")
    (message,) = [str(warning.message) for warning in record]
    for path in damaged:
        assert f"{path} is truncated or corrupt" in message


def test_a_file_damaged_inside_is_named_and_training_uses_the_rest(tmp_path):
    rng = np.random.default_rng(10)
    good = [save(tmp_path / "a" / f"{index}.jpg", random_rgb(rng, 16, 16)) for index in range(3)]
    damaged = damage_inside(save(tmp_path / "a" / "3.jpg", random_rgb(rng, 16, 16)))
    good += [save(tmp_path / "b" / f"{index}.png", random_rgb(rng, 16, 16)) for index in range(3)]
    with pytest.warns(UserWarning) as record:
        dataset, _, count = data.make_dataset(tmp_path, 16, batch_size=4, training=True,
                                              augmentation=only(), seed=0)
    (message,) = [str(warning.message) for warning in record]
    assert message.startswith(f"Skipped 1 unreadable image file(s) in {tmp_path}:")
    assert f"{damaged} is truncated or corrupt (" in message
    with pytest.raises(ImageError, match=f"^{damaged} is truncated or corrupt"):
        data.load_image(damaged, 16)
    assert count == len(good) == 6
    expected = {data.load_image(path, 16).tobytes(): int("/b/" in path) for path in good}
    for _ in range(2):  # each epoch: every good image once, with its label
        images, labels = all_batches(dataset)
        assert sorted(image.tobytes() for image in images) == sorted(expected)
        assert [expected[image.tobytes()] for image in images] == labels.argmax(axis=1).tolist()


def test_the_scan_names_exactly_the_damaged_files_among_many(tmp_path):
    """Enough files that the scan decodes several per TensorFlow call."""
    rng = np.random.default_rng(15)
    files = [save(tmp_path / name / f"{index:02d}{suffix}", random_rgb(rng, 8, 8))
             for name in ("a", "b") for index in range(32) for suffix in [(".png", ".jpg")[index % 2]]]
    damaged = [damage_inside(files[index]) for index in (1, 2, 30, 33, 63)]
    with pytest.warns(UserWarning) as record:
        paths, labels, _ = data.scan_split(tmp_path)
    assert paths == [path for path in files if path not in damaged]
    assert labels.tolist() == [0] * 29 + [1] * 30
    (message,) = [str(warning.message) for warning in record]
    named = [line.split(" is truncated or corrupt (")[0].strip() for line in message.splitlines()[1:]]
    assert named == damaged


def test_a_single_class_is_refused(tmp_path):
    for split in ("train", "test"):
        save(tmp_path / "one" / split / "cats" / "1.png", np.zeros((4, 4), np.uint8), "L")
    with pytest.raises(DatasetError, match=f"^{tmp_path / 'one' / 'train'}: found 1 class folder \\(cats\\): "
                                           "a classifier needs at least 2; add a folder of images per class"):
        data.check_dataset(tmp_path / "one")
    save(tmp_path / "one" / "test" / "dogs" / "1.png", np.zeros((4, 4), np.uint8), "L")
    with pytest.raises(DatasetError, match="found 1 class folder \\(cats\\)"):
        data.check_dataset(tmp_path / "one")


@pytest.mark.slow
def test_train_names_the_damaged_files_and_stops_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)  # as a user starts it
    rng = np.random.default_rng(11)
    for split in ("train", "test"):
        for name in ("a", "b"):
            save(tmp_path / "data" / split / name / "0.png", random_rgb(rng, 32, 32))
    damaged = damage_inside(tmp_path / "data" / "train" / "b" / "0.png")
    result = run_cli("keras_parnet.cli.train", "--dataset", tmp_path / "data", "--logs-dir", tmp_path / "logs",
                     "--epochs", "1", "--image-size", "32", "--val-split", "0")
    assert_one_line_error(result, str(tmp_path / "data" / "train" / "b"), "has no readable images")
    assert f"{damaged} is truncated or corrupt" in result.stderr
    # The tool's lines only: TensorFlow started (it decoded the images) and printed none of its start-up lines.
    assert [line.split(":")[0] for line in result.stderr.splitlines() if not line.startswith("  ")] == [
        "warning", "error"], result.stderr


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match=f"^{tmp_path / 'missing.jpg'} does not exist.$"):
        data.load_image(tmp_path / "missing.jpg", 32)
    with pytest.raises(ImageError, match=f"^{tmp_path} is a folder, not an image file.$"):
        data.load_image(tmp_path, 32)
    (tmp_path / "notes.jpg").write_text("just some text\n")
    with pytest.raises(ImageError, match=f"^{tmp_path / 'notes.jpg'} is not an image file "
                                         r"\(expected jpg/jpeg/png/bmp/gif\).$"):
        data.load_image(tmp_path / "notes.jpg", 32)
    jpeg = Path(save(tmp_path / "whole.jpg", random_rgb(np.random.default_rng(10), 32, 32))).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[:-300])
    with pytest.raises(ImageError, match=f"^{tmp_path / 'cut.jpg'} is truncated or corrupt"):
        data.load_image(tmp_path / "cut.jpg", 32)
    # Data after the end marker is fine (cameras append such trailers).
    (tmp_path / "trailer.jpg").write_bytes(jpeg + os.urandom(5000))
    np.testing.assert_array_equal(data.load_image(tmp_path / "trailer.jpg", 32),
                                  data.load_image(tmp_path / "whole.jpg", 32))


# --- The embedded demo dataset ------------------------------------------------------------------


def test_demo_dataset_layout():
    assert data.check_dataset(DEMO_DIR) == ["face", "nonface"]
    for split, per_class in (("train", 70), ("test", 30)):
        paths, labels, _ = data.scan_split(DEMO_DIR / split)
        assert np.bincount(labels).tolist() == [per_class, per_class]
        for path in paths[:: len(paths) - 1]:
            with Image.open(path) as image:
                assert (image.size, image.mode) == ((25, 25), "L")
    names = [Path(path).name for split in ("train", "test") for path in data.scan_split(DEMO_DIR / split)[0]]
    assert len(set(names)) == 200  # no image in both splits
    assert sum(path.stat().st_size for path in DEMO_DIR.rglob("*")) < 1_000_000


def test_make_demo_reproduces_the_committed_files(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_demo", DEMO_DIR.parent / "make_demo.py")
    make_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_demo)
    assert make_demo.write_demo(tmp_path) == (200, 0, 0)
    (tmp_path / "train" / "face" / "stray.png").write_bytes(b"x")
    assert make_demo.write_demo(tmp_path) == (0, 200, 1)
    faces = skimage_data.lfw_subset()
    for path in sorted(tmp_path.rglob("*.png")):
        committed = DEMO_DIR / path.relative_to(tmp_path)
        assert committed.read_bytes() == path.read_bytes(), committed
        index = int(path.stem.split("_")[1])
        assert (index < 100) == (path.parent.name == "face")
        np.testing.assert_allclose(np.asarray(Image.open(path)) / 255, faces[index], atol=0.5 / 255 + 1e-9)


def test_official_center_crop_matches_pillow_reference(tmp_path):
    """crop_fraction 0.875 at 224: shorter side to floor(224 / 0.875) = 256 with
    bilinear resampling, then the centered 224 x 224 (timm's evaluation)."""
    rows, cols = np.mgrid[0:300, 0:450].astype(np.float32)
    pixels = np.stack([rows / 300 * 255, cols / 450 * 255, (rows + cols) / 750 * 255], axis=-1)
    path = tmp_path / "wide.png"
    Image.fromarray(pixels.round().astype(np.uint8)).save(path)

    resized = Image.open(path).resize((384, 256), Image.BILINEAR)  # 450 * 256 / 300 = 384
    left, top = (384 - 224) // 2, (256 - 224) // 2
    expected = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32)
    cropped = data.load_image(path, 224, crop_fraction=0.875)
    assert cropped.shape == (224, 224, 3)
    np.testing.assert_allclose(cropped, expected, atol=2)
    # Without a crop the whole image is squeezed into 224 x 224 instead.
    assert np.abs(data.load_image(path, 224) - expected).max() > 0.05 * 255

    split = tmp_path / "split"
    (split / "a").mkdir(parents=True)
    path.rename(split / "a" / "wide.png")
    dataset, _, _ = data.make_dataset(split, 224, 1, crop_fraction=0.875)
    images, _ = next(iter(dataset))
    np.testing.assert_allclose(images[0], cropped, atol=1e-4)
