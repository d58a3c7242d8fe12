"""Image folders in the `flow_from_directory` layout as `tf.data` pipelines.

    <split_dir>/<class name>/**/<image>.{jpg,jpeg,png,bmp,gif}

Class names are the sorted subfolder names, files are taken in
`ImageDataGenerator.flow_from_directory` order (sorted, recursive, symbolic
links below a class folder not followed) and labels are one-hot. Hidden files
and folders (names starting with ".", e.g. `.ipynb_checkpoints`) are ignored.

The path of one image, shared by training, evaluation and prediction:

    file -> decode to RGB (first frame; grayscale, RGBA, CMYK, palette and
    16-bit files too) -> resize to the model size with nearest-neighbour
    sampling (ImageDataGenerator's default) -> float32 pixels in [0, 255]
    -> [training only: one fused geometric transform, then brightness; if
    asked, RandAugment and random erasing per image, MixUp or CutMix per batch]
    -> the model, whose first layers scale (and normalize) them

JPEG, PNG and 24/32-bit BMP files are decoded by TensorFlow (JPEG with the
accurate integer IDCT, so pixels equal Pillow's); GIF, palette or compressed
BMP and files whose content is another format Pillow reads go through Pillow.
Every file is decoded once when a split is scanned (before training), so
unreadable files, also those damaged inside behind a sound header and end, are
named in one warning and left out; a class left without images stops the scan.

The roles of a dataset folder (`dataset_splits`): train/ trains; val/, or
when there is none a stratified, seeded fraction of train/ (`split_train_val`),
selects the checkpoint; test/ is left for evaluation.
"""

import concurrent.futures
import dataclasses
import functools
import math
import os
import re
import struct
import warnings
from typing import Optional

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from keras_parnet.files import DatasetError, ImageError  # noqa: F401 (raised here; part of this API)
from keras_parnet.preprocessing import resize_like_run
from keras_parnet.runs import image_size_pair
from keras_parnet.train import RANDAUGMENT_MAGNITUDES

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
FILL_MODES = ("nearest", "constant", "reflect", "wrap")

# Decoder indices that the scan finds for each file.
JPEG, PNG, BMP, PILLOW = range(4)
# The optional validation folder beside train/ and test/.
VAL_SPLIT = "val"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _reason(error):
    """The gist of a TensorFlow op error: its last line, without node and op
    names (a graph's error starts with where the op was defined)."""
    text = re.sub(r"\[\[.*?\]\]|\{\{.*?\}\}|\[Op:.*", "", error.message)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].rstrip(".") if lines else type(error).__name__


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random training augmentation; the defaults are the original recipe.

    Attributes:
        rotation: maximum rotation in degrees, uniform in `[-rotation, rotation]`.
        width_shift: maximum horizontal shift as a fraction of the width.
        height_shift: maximum vertical shift as a fraction of the height.
        shear: maximum shear angle in degrees.
        zoom: each axis is scaled by a factor uniform in `[1 - zoom, 1 + zoom]`
            (above 1 zooms out, as in `ImageDataGenerator`).
        horizontal_flip: mirror half of the images left to right.
        brightness: `(low, high)` range of a factor multiplying the pixels
            (clipped to [0, 255]), or `None`.
        fill_mode: how points outside the image are filled: "nearest",
            "constant" (black), "reflect" or "wrap".
    """

    rotation: float = 50.0
    width_shift: float = 0.1
    height_shift: float = 0.1
    shear: float = 10.0
    zoom: float = 0.1
    horizontal_flip: bool = True
    brightness: Optional[tuple] = (0.7, 1.3)
    fill_mode: str = "nearest"

    def __post_init__(self):
        for name in ("rotation", "shear"):
            if not 0 <= getattr(self, name) <= 180:
                raise ValueError(f"{name} must be an angle in degrees in [0, 180], got {getattr(self, name)}.")
        for name in ("width_shift", "height_shift", "zoom"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be a fraction in [0, 1), got {getattr(self, name)}.")
        if self.brightness is not None:
            low, high = self.brightness
            if not 0 <= low <= high:
                raise ValueError(f"brightness must be a range (low, high) with 0 <= low <= high, "
                                 f"got {self.brightness}.")
            object.__setattr__(self, "brightness", (float(low), float(high)))
        if self.fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode must be one of {', '.join(FILL_MODES)}, got {self.fill_mode!r}.")

    def _is_geometric_identity(self):
        return not (self.rotation or self.width_shift or self.height_shift or self.shear
                    or self.zoom or self.horizontal_flip)

    def is_identity(self):
        return self._is_geometric_identity() and self.brightness in (None, (1.0, 1.0))


# --- Folders --------------------------------------------------------------------------------


def _visible(name):
    return not name.startswith(".")


def find_classes(split_dir):
    """Sorted names of the class subfolders of `split_dir`."""
    split_dir = os.fspath(split_dir)
    if not os.path.isdir(split_dir):
        raise DatasetError(f"{split_dir} does not exist: expected a folder with one subfolder of "
                           f"images per class ({os.path.join(split_dir, '<class>', '*.jpg')}).")
    names = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and _visible(entry.name))
    if not names:
        raise DatasetError(f"{split_dir} has no class folders: put the images of each class in a "
                           f"subfolder named after it ({os.path.join(split_dir, '<class>', '*.jpg')}).")
    return names


def list_images(class_dir):
    """Image paths below `class_dir` in `flow_from_directory` order."""
    folders = []
    for root, subfolders, files in os.walk(class_dir):
        subfolders[:] = [name for name in subfolders if _visible(name)]
        folders.append((root, files))
    return [os.path.join(root, name)
            for root, files in sorted(folders, key=lambda folder: folder[0])
            for name in sorted(files)
            if _visible(name) and name.lower().endswith(IMAGE_EXTENSIONS)]


def _bmp_is_tensorflow_readable(head):
    """TensorFlow reads uncompressed 24/32-bit BMPs; it misreads palettes."""
    bits, compression = struct.unpack_from("<HI", head, 28)
    return bits in (24, 32) and compression == 0


# JPEG start-of-frame markers (C4, C8 and CC are other segments).
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(file):
    """`(width, height)` from the frame header of an open JPEG file, or
    `None` if there is none before the image data."""
    file.seek(2)
    while True:
        byte = file.read(1)
        if not byte:
            return None
        if byte != b"\xff":
            continue
        marker = file.read(1)
        while marker == b"\xff":  # fill bytes
            marker = file.read(1)
        if not marker or marker[0] in (0xD9, 0xDA):  # end of image, start of scan
            return None
        if marker[0] == 0x01 or 0xD0 <= marker[0] <= 0xD8:  # markers without a segment
            continue
        field = file.read(2)
        length = struct.unpack(">H", field)[0] if len(field) == 2 else 0
        if length < 2:
            return None
        if marker[0] in _JPEG_FRAME_MARKERS:
            frame = file.read(5)  # precision, height, width
            return struct.unpack_from(">HH", frame, 1)[::-1] if len(frame) == 5 else None
        file.seek(length - 2, os.SEEK_CUR)


def _claimed_size(file, head, decoder):
    """`(width, height)` that the header of an image file claims, or `None`."""
    if decoder == JPEG:
        return _jpeg_size(file)
    if decoder == PNG and head[12:16] == b"IHDR":
        return struct.unpack_from(">II", head, 16)
    if decoder == BMP:
        width, height = struct.unpack_from("<ii", head, 18)
        return abs(width), abs(height)
    return None


def _identify(path):
    """The decoder of an image file from its header (see `check_image`), and
    a check that the header does not claim too many pixels."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with open(path, "rb") as file:
            head = file.read(64)
            if head.startswith(b"\xff\xd8\xff"):
                decoder = JPEG
            elif head.startswith(_PNG_SIGNATURE):
                decoder = PNG
            elif head.startswith(b"BM") and len(head) >= 34 and _bmp_is_tensorflow_readable(head):
                decoder = BMP
            else:
                decoder = PILLOW
            size = _claimed_size(file, head, decoder)
    except FileNotFoundError:
        raise ImageError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise ImageError(f"{path} is a folder, not an image file.") from None
    except OSError as error:
        raise ImageError(f"{path} cannot be read ({error.strerror}).") from None

    if decoder == PILLOW:
        try:
            with Image.open(path) as image:
                size = image.size
        except Image.DecompressionBombError as error:
            raise ImageError(f"{path} is too large to decode ({str(error).rstrip('.')}): "
                             f"shrink it or remove it.") from None
        except Exception:
            raise ImageError(f"{path} is not an image file (expected "
                             f"{'/'.join(ext[1:] for ext in IMAGE_EXTENSIONS)}).") from None
    if size and limit and size[0] * size[1] > limit:
        raise ImageError(f"{path} claims {size[0]}x{size[1]} pixels, more than the {limit} that are "
                         f"decoded (PIL.Image.MAX_IMAGE_PIXELS, against decompression bombs): "
                         f"shrink it or remove it.")
    return decoder


@tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int32)], autograph=False)
def _decode_all(paths, decoders):
    """Decodes files one after another as training does (one call for many
    files: the call, not the decode, costs most for small images). Returns
    pixels, not shapes, so that graph optimization cannot skip a decode."""
    return tf.map_fn(lambda file: _load(file[0], file[1], (1, 1)), (paths, decoders),
                     fn_output_signature=tf.float32, parallel_iterations=1)


def _decode_error(path, decoder):
    """The `ImageError` of a file that `decoder` fails to decode, or `None`."""
    try:
        if decoder == PILLOW:
            _pil_decode(path)
        else:
            _decode_all(tf.constant([os.fspath(path)]), tf.constant([decoder]))
    except tf.errors.OpError as error:
        return ImageError(f"{path} is truncated or corrupt ({_reason(error)}).")
    except Exception as error:  # Pillow raises many types for damaged files.
        return ImageError(f"{path} is truncated or corrupt ({error}).")
    return None


def check_image(path):
    """Checks that `path` is an image file that decodes, as training decodes it.

    Reads the header, refuses images larger than `PIL.Image.MAX_IMAGE_PIXELS`
    (decompression bombs), then decodes the file in full: a file damaged
    inside can have a sound header and end, and only decoding finds that out.

    Returns:
        Its decoder: `JPEG`, `PNG`, `BMP` (TensorFlow) or `PILLOW`.

    Raises:
        ImageError: naming the file and what is wrong.
    """
    decoder = _identify(path)
    error = _decode_error(path, decoder)
    if error:
        raise error
    return decoder


def _check_images(paths):
    """`{path: decoder or ImageError}`: `check_image` for many files, in
    threads, with the TensorFlow decodes in chunks (file by file only in a
    chunk that fails, to name the files)."""

    def identify(path):
        try:
            decoder = _identify(path)
        except ImageError as error:
            return error
        return (_decode_error(path, decoder) or decoder) if decoder == PILLOW else decoder

    def errors_in(chunk):
        try:
            _decode_all(tf.constant([path for path, _ in chunk]), tf.constant([decoder for _, decoder in chunk]))
            return {}
        except tf.errors.OpError:
            return {path: error for path, decoder in chunk if (error := _decode_error(path, decoder))}

    threads = min(16, (os.cpu_count() or 1) * 4)
    _decode_all.get_concrete_function()  # traced once here, not once per thread (and a retracing warning)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        results = dict(zip(paths, pool.map(identify, paths)))
        for_tensorflow = [(path, result) for path, result in results.items() if result in (JPEG, PNG, BMP)]
        size = max(1, min(32, len(for_tensorflow) // threads))  # every thread busy, also for few files
        chunks = [for_tensorflow[start:start + size] for start in range(0, len(for_tensorflow), size)]
        for errors in list(pool.map(errors_in, chunks)):
            results.update(errors)
    return results


def _no_readable_images(folder, files):
    """The error of a class folder whose image `files` (maybe none) cannot be read."""
    if files:
        return DatasetError(f"{folder} has no readable images: its {len(files)} image file(s) cannot be "
                            f"decoded (named in the warning); replace them or remove the folder.")
    extensions = "/".join(ext[1:] for ext in IMAGE_EXTENSIONS)
    return DatasetError(f"{folder} has no readable images: add {extensions} files or remove the folder.")


def _scan(split_dir, class_names=None, files=None):
    """`scan_split` plus the decoder of each file (see `check_image`); with
    `files`, only those image paths below `split_dir` (in scan order)."""
    split_dir = os.fspath(split_dir)
    if class_names is None:
        class_names = find_classes(split_dir)
    else:
        class_names = list(class_names)
        find_classes(split_dir)
        missing = [name for name in class_names if not os.path.isdir(os.path.join(split_dir, name))]
        if missing:
            raise DatasetError(f"{split_dir} has no folder for the classes {', '.join(missing)}: "
                               f"train and test need the same class folders.")
    per_class = [list_images(os.path.join(split_dir, name)) for name in class_names]
    if files is not None:
        wanted = {os.fspath(path) for path in files}
        per_class = [[path for path in paths if path in wanted] for paths in per_class]
    results = _check_images([path for files in per_class for path in files])
    skipped = [error for error in results.values() if isinstance(error, ImageError)]
    if skipped:
        warnings.warn(f"Skipped {len(skipped)} unreadable image file(s) in {split_dir}:\n"
                      + "\n".join(f"  {error}" for error in skipped), stacklevel=3)

    paths, labels, decoders = [], [], []
    for label, (name, files) in enumerate(zip(class_names, per_class)):
        readable = [path for path in files if not isinstance(results[path], ImageError)]
        if not readable:
            raise _no_readable_images(os.path.join(split_dir, name), files)
        paths += readable
        labels += [label] * len(readable)
        decoders += [results[path] for path in readable]
    return paths, np.array(labels, dtype="int32"), class_names, np.array(decoders, dtype="int32")


def scan_split(split_dir, class_names=None):
    """Lists the images of one split (`train/` or `test/`).

    Args:
        split_dir: folder with one subfolder of images per class.
        class_names: the classes to take, in label order (default: the
            sorted subfolder names), like `flow_from_directory(classes=...)`.

    Returns:
        `(paths, labels, class_names)`: image paths in `flow_from_directory`
        order, their int32 labels (indices into `class_names`), and the
        class names. Unreadable files are left out with one warning.

    Raises:
        DatasetError: missing folder, no class folders, or a class folder
            without readable images.
    """
    paths, labels, class_names, _ = _scan(split_dir, class_names)
    return paths, labels, class_names


def check_dataset(dataset_dir):
    """Checks `dataset_dir/train`, `dataset_dir/test` and, when it exists,
    `dataset_dir/val` before training.

    Returns:
        The class names (shared by every split) in label order.

    Raises:
        DatasetError: a missing folder, a split without class folders or
            with only one, or splits with different class folders.
    """
    dataset_dir = os.fspath(dataset_dir)
    if not os.path.isdir(dataset_dir):
        raise DatasetError(f"dataset folder {dataset_dir} does not exist: expected "
                           f"{os.path.join(dataset_dir, 'train')} and {os.path.join(dataset_dir, 'test')} "
                           f"with one subfolder of images per class.")
    train = find_classes(os.path.join(dataset_dir, "train"))
    if len(train) < 2:
        raise DatasetError(f"{os.path.join(dataset_dir, 'train')}: found 1 class folder ({train[0]}): "
                           f"a classifier needs at least 2; add a folder of images per class.")
    for split in ("test", "val"):
        if split == "val" and not os.path.isdir(os.path.join(dataset_dir, VAL_SPLIT)):
            continue
        other = find_classes(os.path.join(dataset_dir, split))
        if train != other:
            differences = [f"only in {name}: {', '.join(sorted(set(names) - set(rest)))}"
                           for name, names, rest in (("train", train, other), (split, other, train))
                           if set(names) - set(rest)]
            raise DatasetError(f"{dataset_dir}: train and {split} have different class folders "
                               f"({'; '.join(differences)}): give both splits the same classes.")
    return train


# --- Train, validation and test roles --------------------------------------------------------


def split_train_val(paths, labels, fraction, seed, class_names):
    """Holds out a stratified, seeded fraction of each class for validation.

    Each class gives `round(fraction * its images)` images to validation,
    and always at least one to each side; which ones depends only on `seed`,
    the class and its files.

    Args:
        paths: image paths (e.g. `list_images` of every class of `train/`).
        labels: their labels, indices into `class_names`.
        fraction: the validation share, `0 < fraction < 1`.
        seed: integer seed of the draw.
        class_names: names in label order (for the error message).

    Returns:
        `(train_paths, val_paths)`, each in the order of `paths`.

    Raises:
        DatasetError: a class with fewer than two images.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}.")
    labels = np.asarray(labels)
    held_out = set()
    for label, name in enumerate(class_names):
        indices = np.flatnonzero(labels == label)
        if len(indices) < 2:
            raise DatasetError(f"class {name} has {len(indices)} training image(s): holding out a validation "
                               f"split needs at least 2; add images to train/{name}/, add a val/ folder, "
                               f"or pass --val-split 0 (the test split then selects the checkpoint).")
        count = min(max(round(fraction * len(indices)), 1), len(indices) - 1)
        rng = np.random.default_rng([seed, label])
        held_out.update(rng.permutation(indices)[:count].tolist())
    train_paths = [path for index, path in enumerate(paths) if index not in held_out]
    val_paths = [path for index, path in enumerate(paths) if index in held_out]
    return train_paths, val_paths


def _listed(split_dir, class_names):
    """`(paths, labels)` of every image of a split, without decoding them."""
    per_class = [list_images(os.path.join(split_dir, name)) for name in class_names]
    for name, paths in zip(class_names, per_class):
        if not paths:
            raise _no_readable_images(os.path.join(split_dir, name), paths)
    return ([path for paths in per_class for path in paths],
            [label for label, paths in enumerate(per_class) for _ in paths])


def held_out_paths(dataset_dir, record):
    """The paths of the `train/` images a `validation` record (see
    `dataset_splits`) holds out, as `list_images` spells them."""
    return [os.path.join(os.fspath(dataset_dir), *relative.split("/")) for relative in record["files"]]


def dataset_splits(dataset_dir, class_names, val_split=0.1, seed=0, recorded=None):
    """The training and validation images of a dataset.

    Validation comes from, in this order: the `recorded` split of a run
    being resumed, `dataset_dir/val/` when it exists, a `split_train_val`
    of `train/` when `val_split > 0`, else `test/` (the original recipe:
    the test split then also selects the checkpoint).

    Args:
        dataset_dir: folder holding `train/`, `test/` and maybe `val/`.
        class_names: the classes in label order.
        val_split: the fraction of `train/` to hold out when there is no `val/`.
        seed: seed of that draw.
        recorded: a run's `validation` entry (what this returned as `record`):
            its validation images stay the validation images. Images added to
            `train/` since then train; recorded ones that are gone are left out.

    Returns:
        `(train_paths, val_paths, record)`: image paths below `train/` that
        train and those (below `train/`, `val/` or `test/`) that validate;
        `record` is what run.json keeps to reproduce it: `{"folder": "val" |
        "train" | "test"}` (the folder validation images are in), for
        "train" with `fraction`, `seed` and `files` (paths relative to
        `dataset_dir`, "/"-separated).

    Raises:
        DatasetError: see `split_train_val`.
    """
    dataset_dir = os.fspath(dataset_dir)
    train_paths, train_labels = _listed(os.path.join(dataset_dir, "train"), class_names)
    if recorded is not None:
        folder = recorded["folder"]
    elif os.path.isdir(os.path.join(dataset_dir, VAL_SPLIT)):
        folder = VAL_SPLIT
    else:
        folder = "train" if val_split > 0 else "test"
    if folder != "train":
        val_paths, _ = _listed(os.path.join(dataset_dir, folder), class_names)
        return train_paths, val_paths, {"folder": folder}
    if recorded is not None:
        val_paths = held_out_paths(dataset_dir, recorded)
        gone = [path for path in val_paths if not os.path.isfile(path)]
        if gone:
            warnings.warn(f"{len(gone)} recorded validation image(s) are gone from {dataset_dir} and left out: "
                          + ", ".join(gone[:5]) + (", ..." if len(gone) > 5 else ""), stacklevel=2)
        held_out = set(val_paths)
        return [path for path in train_paths if path not in held_out], \
            [path for path in val_paths if path not in gone], recorded
    train_paths, val_paths = split_train_val(train_paths, train_labels, val_split, seed, class_names)
    files = [os.path.relpath(path, dataset_dir).replace(os.sep, "/") for path in val_paths]
    return train_paths, val_paths, {"folder": "train", "fraction": val_split, "seed": seed, "files": files}


# --- Decoding: one code path for training, evaluation and prediction ----------------------


def _pil_decode(path):
    """First frame of an image file as uint8 RGB, Pillow's `convert("RGB")`
    as in `ImageDataGenerator`."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _pixels(image):
    """uint8 or uint16 RGB -> float32 in [0, 255] (16-bit values / 257)."""
    return tf.cast(image, tf.float32) / (image.dtype.max / 255)


def _load(path, decoder, size, crop_fraction=None):
    """Image file -> float32 `(*size, 3)` RGB pixels in [0, 255].

    Decodes to integers with the scan's `decoder`, resizes (nearest neighbour
    only picks pixels, so the smaller integer image is resized), then converts
    to float (16-bit PNGs scaled to 0-255). With `crop_fraction` (converted
    ImageNet runs) it converts first, then resizes and center-crops as timm does.
    """

    def resized(image):
        if crop_fraction:
            return resize_like_run(_pixels(image), size, crop_fraction)
        return _pixels(resize_like_run(image, size))

    def with_pillow():
        image = tf.numpy_function(lambda name: _pil_decode(os.fsdecode(name.item())), [path], tf.uint8)
        return resized(tf.ensure_shape(image, [None, None, 3]))

    return tf.switch_case(decoder, [
        # The accurate IDCT gives Pillow's pixels (the default is up to 6/255 off).
        lambda: resized(tf.io.decode_jpeg(tf.io.read_file(path), channels=3, dct_method="INTEGER_ACCURATE")),
        lambda: resized(tf.io.decode_png(tf.io.read_file(path), channels=3, dtype=tf.uint16)),
        lambda: resized(tf.io.decode_bmp(tf.io.read_file(path), channels=3)),
        with_pillow,
    ])


def load_image(path, image_size, crop_fraction=None):
    """Reads one image as the model sees it (what evaluation data holds).

    Args:
        path: an image file (jpg/jpeg/png/bmp/gif, any color mode).
        image_size: int or `(height, width)`.
        crop_fraction: `None` to resize the whole image (training's way), or
            the fraction of the shorter side kept by a center crop (the
            official ImageNet evaluation uses 0.875).

    Returns:
        float32 array of shape `(height, width, 3)`, RGB pixels in [0, 255]
        (what a run's model takes).

    Raises:
        ImageError: a missing path, a folder, a file that is not an image,
            or a truncated or corrupt image.
    """
    decoder = check_image(path)
    try:
        return _load(tf.constant(os.fspath(path)), tf.constant(decoder), image_size_pair(image_size),
                     crop_fraction).numpy()
    except tf.errors.OpError as error:
        raise ImageError(f"{path} is truncated or corrupt ({_reason(error)}).") from None


# --- Augmentation ---------------------------------------------------------------------------


def _stack_matrix(rows):
    """Nested lists of (batch,) tensors -> (batch, 3, 3)."""
    return tf.stack([tf.stack(row, axis=-1) for row in rows], axis=-2)


def _affine_matrices(angle, shift_x, shift_y, shear, zoom_x, zoom_y, flip, height, width):
    """The transform of `ImageDataGenerator.apply_affine_transform` followed
    by a horizontal flip, composed into one matrix per image.

    All arguments but the image `height` and `width` are float32 `(batch,)`
    tensors: angles in degrees, shifts in pixels (x: columns, y: rows; the
    generator swaps them for non-square images, this does not), zoom factors,
    and `flip` -1 (mirror) or 1.

    Returns:
        `(batch, 2, 3)` matrices mapping an output pixel `(x, y, 1)` to the
        input point it samples; rotation, shear and zoom are about the image
        centre, as in the generator.
    """
    zeros, ones = tf.zeros_like(angle), tf.ones_like(angle)
    theta, shear = angle * (math.pi / 180), shear * (math.pi / 180)
    center_x, center_y = (width - 1) / 2, (height - 1) / 2
    matrices = [
        [[ones, zeros, ones * center_x], [zeros, ones, ones * center_y], [zeros, zeros, ones]],
        [[tf.cos(theta), -tf.sin(theta), zeros], [tf.sin(theta), tf.cos(theta), zeros], [zeros, zeros, ones]],
        [[ones, zeros, shift_x], [zeros, ones, shift_y], [zeros, zeros, ones]],
        [[ones, -tf.sin(shear), zeros], [zeros, tf.cos(shear), zeros], [zeros, zeros, ones]],
        [[zoom_x * flip, zeros, zeros], [zeros, zoom_y, zeros], [zeros, zeros, ones]],
        [[ones, zeros, -ones * center_x], [zeros, ones, -ones * center_y], [zeros, zeros, ones]],
    ]
    composed = _stack_matrix(matrices[0])
    for rows in matrices[1:]:
        composed = tf.matmul(composed, _stack_matrix(rows))
    return composed[:, :2]


def _fill(index, length, fill_mode):
    """Integer pixel positions -> positions inside `[0, length)` and whether
    they were inside (only "constant" fill uses that)."""
    if fill_mode == "reflect":  # d c b a | a b c d | d c b a
        index = tf.math.floormod(index, 2 * length)
        index = tf.where(index >= length, 2 * length - 1 - index, index)
    elif fill_mode == "wrap":  # a b c d | a b c d | a b c d
        index = tf.math.floormod(index, length)
    inside = (index >= 0) & (index < length)
    return tf.clip_by_value(index, 0, length - 1), inside


# Compiled with XLA, the gathers fuse into one loop: 4-5x faster on CPU than
# ImageProjectiveTransformV3, which computes the same.
@tf.function(jit_compile=True, autograph=False)
def _resample(images, matrices, fill_mode="nearest"):
    """Bilinear resampling of float `(batch, height, width, channels)` images:
    output pixel `(x, y)` of image `i` takes the input at
    `matrices[i] @ (x, y, 1)`; points outside are filled per `fill_mode`."""
    batch, height, width, channels = tf.unstack(tf.shape(images))
    rows, cols = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32),
                             indexing="ij")
    m = matrices[:, :, :, None, None]
    x = m[:, 0, 0] * cols + m[:, 0, 1] * rows + m[:, 0, 2]
    y = m[:, 1, 0] * cols + m[:, 1, 1] * rows + m[:, 1, 2]
    x0, y0 = tf.floor(x), tf.floor(y)
    weight_x, weight_y = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    pixels = tf.reshape(images, [-1, channels])
    first_pixel = (tf.range(batch) * height * width)[:, None, None]

    def at(row, col):
        row, row_inside = _fill(row, height, fill_mode)
        col, col_inside = _fill(col, width, fill_mode)
        values = tf.gather(pixels, first_pixel + row * width + col)
        if fill_mode == "constant":
            values *= tf.cast(row_inside & col_inside, values.dtype)[..., None]
        return values

    top = at(y0, x0) * (1 - weight_x) + at(y0, x0 + 1) * weight_x
    bottom = at(y0 + 1, x0) * (1 - weight_x) + at(y0 + 1, x0 + 1) * weight_x
    return top * (1 - weight_y) + bottom * weight_y


def _augment(images, seed, augmentation):
    """A batch `(batch, height, width, 3)` -> the same, each image with its own
    random transform; `seed` is a `(2,)` integer tensor."""
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    seeds = tf.random.experimental.stateless_split(seed, 8)

    def uniform(index, low, high):
        return tf.random.stateless_uniform([batch], seeds[index], low, high)

    if not augmentation._is_geometric_identity():
        flip = tf.ones([batch])
        if augmentation.horizontal_flip:
            flip = tf.where(uniform(0, 0.0, 1.0) < 0.5, -1.0, 1.0)
        zoom_range = (1 - augmentation.zoom, 1 + augmentation.zoom)
        matrices = _affine_matrices(
            angle=uniform(1, -augmentation.rotation, augmentation.rotation),
            shift_x=uniform(2, -augmentation.width_shift, augmentation.width_shift) * width,
            shift_y=uniform(3, -augmentation.height_shift, augmentation.height_shift) * height,
            shear=uniform(4, -augmentation.shear, augmentation.shear),
            zoom_x=uniform(5, *zoom_range),
            zoom_y=uniform(6, *zoom_range),
            flip=flip, height=height, width=width)
        images = _resample(images, matrices, augmentation.fill_mode)
    if augmentation.brightness is not None:
        factors = uniform(7, *augmentation.brightness)
        images = tf.clip_by_value(images * factors[:, None, None, None], 0.0, 255.0)
    return images



# --- timm's recipe: RandAugment, random erasing, MixUp and CutMix with Keras' layers -----------
#
# Where Keras' layers differ from timm's (the paper's --aa rand-m9-mstd0.5 --reprob P --remode pixel):
# - RandAugment(value_range=(0, 255), num_ops=2, factor=M / 10) applies 2 of 11 operations to every image
#   (timm: of 15, with invert and solarize-add, each applied with probability 0.5), each at a strength drawn
#   from [0, M/10] of Keras' range (timm: M/10, M jittered by mstd 0.5, of its own range); rotation, shear
#   and translation take timm's ranges (`_randaugment_layer`), drawn uniformly in [-M/10, M/10] of them.
# - RandomErasing fills a box whose sides are sqrt(U(0.02, 0.33)) of the image's (timm: area U(0.02, 1/3),
#   log-uniform aspect 0.3-3.3) with per-pixel noise N(0, 1) in 0-1 units clipped to [0, 1] (timm: N(0, 1)
#   in the normalized input, unclipped: the same before clipping for models that only rescale).
# - MixUp draws a weight per image and mixes with a random permutation of the batch (timm: one weight per
#   batch, the batch mixed with its reverse); CutMix alike, its box inside the image, alpha at most 1.


def _recipe_layers(randaugment, random_erasing, mixup, cutmix):
    """`{setting name: Keras layer}` for those of `make_dataset`'s
    `randaugment`, `random_erasing`, `mixup` and `cutmix` that are on."""
    if randaugment is not None and not 0 <= randaugment <= RANDAUGMENT_MAGNITUDES:
        raise ValueError(f"randaugment must be a magnitude in [0, {RANDAUGMENT_MAGNITUDES}] (timm's rand-m9 is 9) "
                         f"or None, got {randaugment}.")
    if not 0 <= random_erasing <= 1:
        raise ValueError(f"random_erasing must be a probability in [0, 1], got {random_erasing}.")
    if not (math.isfinite(mixup) and mixup >= 0):
        raise ValueError(f"mixup must be a Beta distribution alpha of 0 (off) or more, got {mixup}.")
    if not 0 <= cutmix <= 1:
        raise ValueError(f"cutmix must be a Beta distribution alpha in [0, 1] (keras.layers.CutMix's range), "
                         f"got {cutmix}.")
    layers = {}
    if randaugment is not None:
        layers["randaugment"] = _randaugment_layer(randaugment)
    if random_erasing:
        # A single number p would draw each image's erasing probability from [0, p].
        layers["random_erasing"] = keras.layers.RandomErasing(
            factor=(random_erasing, random_erasing), value_range=(0, 255), dtype="float32")
    if mixup:
        layers["mixup"] = keras.layers.MixUp(alpha=mixup, dtype="float32")
    if cutmix:
        # A single number a would draw each batch's alpha from [0, a].
        layers["cutmix"] = keras.layers.CutMix(factor=(cutmix, cutmix), dtype="float32")
    return layers


# timm's RandAugment ranges at the top magnitude (rand_augment_ops: rotate 30 degrees, shear 0.3,
# translate_pct 0.45 of the size), each op taking magnitude / 10 of it with either sign.
TIMM_MAX_ROTATION_DEGREES = 30.0
TIMM_MAX_SHEAR = 0.3
TIMM_MAX_TRANSLATION = 0.45


def _randaugment_layer(magnitude):
    """`keras.layers.RandAugment` at timm's `magnitude` (0-10): its colour
    operations at factor magnitude / 10, its rotation, shear and translation
    replaced by layers of timm's ranges, `[-r, r]` with `r` magnitude / 10 of
    timm's largest. Keras' own geometric ranges scale the same factor to a
    whole turn and the whole image size: at magnitude 9, rotations up to 324
    degrees and shifts up to 90% (timm: 27 degrees and 40%)."""
    level = magnitude / RANDAUGMENT_MAGNITUDES
    layer = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=level, dtype="float32")
    common = {"interpolation": layer.interpolation, "dtype": "float32"}
    layer.random_rotation = keras.layers.RandomRotation(
        factor=level * TIMM_MAX_ROTATION_DEGREES / 360, **common)  # a fraction of a turn, either way
    layer.random_shear = keras.layers.RandomShear(
        x_factor=level * TIMM_MAX_SHEAR, y_factor=level * TIMM_MAX_SHEAR, **common)
    layer.random_translation = keras.layers.RandomTranslation(
        height_factor=level * TIMM_MAX_TRANSLATION, width_factor=level * TIMM_MAX_TRANSLATION, **common)
    return layer


def _seeded(layer, seed):
    """A scope in which a Keras preprocessing layer draws its random numbers
    from the `(2,)` integer tensor `seed` instead of its state variable, which
    the parallel calls of a `tf.data` map would share in no set order."""
    return keras.StatelessScope(state_mapping=[(layer.generator.state, seed)])


def _randaugment(images, seed, layer):
    """`keras.layers.RandAugment` with each image's own operations (the layer
    picks them once per call), to the layer's pixels. Only the operations
    picked are computed: the layer computes each of its 11 for every pick and
    keeps one (3x the CPU time of the input pipeline)."""
    seeds = tf.random.experimental.stateless_split(seed, tf.shape(images)[0])

    def one_image(image_and_seed):
        image, image_seed = image_and_seed
        with _seeded(layer, image_seed):
            transformation = layer.get_random_transformation(image)
        operations = transformation["transforms"]  # in the order "layer_idxes" counts them
        for index in tf.unstack(transformation["layer_idxes"]):
            image = tf.switch_case(index, [
                functools.partial(getattr(layer, name).transform_single_image, image, operation)
                for name, operation in operations.items()])
        return image

    return tf.map_fn(one_image, (images, seeds), fn_output_signature=images.dtype)


def _mix(images, labels, seed, layers):
    """MixUp or CutMix of a batch and its one-hot labels with a permutation of
    them; with both layers, one of the two per batch (timm's switch
    probability 0.5)."""
    choice_seed, mixup_seed, cutmix_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))

    def mixup():
        with _seeded(layers["mixup"], mixup_seed):
            mixed = layers["mixup"]({"images": images, "labels": labels})
        return mixed["images"], mixed["labels"]

    def cutmix():
        layer = layers["cutmix"]
        with _seeded(layer, cutmix_seed):
            transformation = layer.get_random_transformation(images)
        # The labels weigh the pixels pasted, not the real-valued box they
        # stand for (as timm's correct_lam): up to a pixel a side apart.
        pasted = tf.reduce_mean(tf.cast(transformation["batch_masks"][..., 0], tf.float32), axis=[1, 2])
        transformation["mix_weight"] = 1.0 - pasted
        return layer.transform_images(images, transformation), layer.transform_labels(labels, transformation)

    if "mixup" in layers and "cutmix" in layers:
        return tf.cond(tf.random.stateless_uniform([], choice_seed) < 0.5, mixup, cutmix)
    return mixup() if "mixup" in layers else cutmix()


def _augment_batch(images, labels, seed, augmentation, layers):
    """A training batch -> the same, augmented in timm's order: `augmentation`
    (`_augment`), then per image RandAugment and random erasing, then MixUp
    or CutMix of the batch, for those of `layers` (`_recipe_layers`) given."""
    if not augmentation.is_identity():
        images = _augment(images, seed, augmentation)
    if not layers:
        return images, labels
    # Drawn apart from `_augment`'s stateless_split(seed, 8), which stays as it was.
    randaugment_seed, erasing_seed, mixing_seed = tf.unstack(tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, 1), 3))
    if "randaugment" in layers:
        images = _randaugment(images, randaugment_seed, layers["randaugment"])
    if "random_erasing" in layers:
        with _seeded(layers["random_erasing"], erasing_seed):
            images = layers["random_erasing"](images)
    if "mixup" in layers or "cutmix" in layers:
        images, labels = _mix(images, labels, mixing_seed, layers)
    return images, labels


# --- Datasets -------------------------------------------------------------------------------


def make_dataset(split_dir, image_size, batch_size, class_names=None, training=False,
                 augmentation=None, shuffle=None, seed=None, cache=False, crop_fraction=None, files=None,
                 shard=None, drop_remainder=False, randaugment=None, random_erasing=0.0, mixup=0.0,
                 cutmix=0.0):
    """A `tf.data` pipeline over one split, like `flow_from_directory`.

    Args:
        split_dir: folder with one subfolder of images per class.
        image_size: int or `(height, width)` the images are resized to.
        batch_size: images per batch (the last batch may be smaller).
        class_names: classes in label order (default: sorted subfolders).
        training: shuffle and augment (evaluation data is only resized and
            scaled).
        augmentation: an `Augmentation` for training (default: the original
            recipe, `Augmentation()`); ignored when not training.
        shuffle: shuffle every epoch (default: `training`).
        seed: makes shuffling and augmentation repeatable.
        cache: keep the decoded, resized images in memory after the first
            epoch (height * width * 12 bytes per image, twice while shuffling).
        crop_fraction: see `load_image`.
        files: only these image paths below `split_dir` (e.g. one side of
            `dataset_splits`), default all; labels still come from their
            class folders.
        shard: `(num_shards, index)`: only shard `index` of `num_shards`
            equal, contiguous parts of every batch (one worker's part of each
            global batch), chosen from the epoch's shuffled file list before
            decoding (after the cache, with `cache`). With the same `seed`,
            the shards of an epoch together form the unsharded batches, each
            image in one shard; batches hold `batch_size // num_shards`
            images, and each shard draws its own augmentation.
        drop_remainder: leave out the images of a last, smaller batch of an
            epoch, before decoding them.
        randaugment: training only: `keras.layers.RandAugment` on each image
            after `augmentation`, at this timm magnitude (0-10, factor
            magnitude / 10, two operations), or `None`.
        random_erasing: training only: the probability that
            `keras.layers.RandomErasing` fills a rectangle of an image with
            noise (after `randaugment`), 0 for none.
        mixup: training only: the Beta alpha of `keras.layers.MixUp` of each
            batch (images and labels), 0 for none.
        cutmix: training only: the Beta alpha (at most 1) of
            `keras.layers.CutMix` of each batch, 0 for none; with `mixup`
            too, each batch gets one of the two, at even odds.

    Returns:
        `(dataset, class_names, count)`: batches of (float32 images
        `(batch, height, width, 3)`, pixels in [0, 255], one-hot float32 labels
        `(batch, classes)`, mixed with `mixup` or `cutmix`), the class names,
        and the number of images.

    Raises:
        DatasetError: see `scan_split`.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    paths, labels, class_names, decoders = _scan(split_dir, class_names, files)
    size = image_size_pair(image_size)
    count = len(paths)
    if shuffle is None:
        shuffle = training
    if training and augmentation is None:
        augmentation = Augmentation()
    num_shards, shard_index = shard or (1, 0)
    if not 0 <= shard_index < num_shards or batch_size % num_shards:
        raise ValueError(f"shard {shard} is not (num_shards, index) with 0 <= index < num_shards and "
                         f"num_shards dividing the batch size {batch_size}.")
    shard_batch = batch_size // num_shards
    kept_count = count - count % batch_size if drop_remainder else count

    def kept(position):  # on numpy arrays and tensors alike
        return (position < kept_count) & (position % batch_size // shard_batch == shard_index)

    def keep_shard(data):
        if shard is None and not drop_remainder:
            return data
        return data.enumerate().filter(lambda position, _: kept(position)).map(lambda _, element: element)

    def load(path, decoder, label):
        return _load(path, decoder, size, crop_fraction), tf.one_hot(label, len(class_names))

    data = tf.data.Dataset.from_tensor_slices((paths, decoders, labels))
    if shuffle and not cache:
        data = data.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    if not cache:
        data = keep_shard(data)
    shard_count = int(np.count_nonzero(kept(np.arange(count))))
    decoded = count if cache else shard_count
    # The mapped functions use TensorFlow's control flow already: AutoGraph
    # would only rewrite them (and the Keras layers they call) at every start,
    # ~2 s of a training run's start-up on this CPU.
    # The scan decoded every file; one that fails now was changed since. It is
    # dropped (TensorFlow logs the error) and the epoch filled up from the next
    # pass, so an epoch never fails and keeps its length.
    data = (data.map(tf.autograph.experimental.do_not_convert(load), num_parallel_calls=tf.data.AUTOTUNE)
            .ignore_errors(log_warning=True).repeat().take(decoded))
    if cache:
        data = data.cache()
        if shuffle:
            data = data.shuffle(count, seed=seed, reshuffle_each_iteration=True)
        data = keep_shard(data)
    # Known, as without filtering: Keras counts the steps of an epoch from it.
    data = data.batch(shard_batch, drop_remainder=drop_remainder).apply(
        tf.data.experimental.assert_cardinality(math.ceil(shard_count / shard_batch)))
    layers = _recipe_layers(randaugment, random_erasing, mixup, cutmix) if training else {}
    if training and (layers or not augmentation.is_identity()):
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        if shard is not None:  # the shards' transforms differ
            seeds = seeds.map(lambda pair: tf.random.experimental.stateless_fold_in(pair, shard_index))
        data = tf.data.Dataset.zip(data, seeds).map(tf.autograph.experimental.do_not_convert(
            lambda batch, batch_seed: _augment_batch(*batch, batch_seed, augmentation, layers)),
            num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE), class_names, count
