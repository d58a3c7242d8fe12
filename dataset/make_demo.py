"""Writes the embedded demo dataset, faces vs non-faces, from scikit-image.

    pip install "keras-parnet[demo]"   # scikit-image, only to regenerate
    python dataset/make_demo.py

`skimage.data.lfw_subset()` ships with scikit-image: 200 grayscale 25x25
photos, 100 faces from Labeled Faces in the Wild followed by 100 non-face crops
of the same photos. Each class is split into train and test with a fixed seed
and written as 8-bit PNG files in the `flow_from_directory` layout:

    dataset/demo_faces/{train,test}/{face,nonface}/lfw_<index>.png

(<index>: the image's position in `lfw_subset()`). Rerunning writes the same
bytes, leaves unchanged files alone and removes any other file there.
"""

import argparse
import io
import os

import numpy as np
from PIL import Image

CLASSES = ("face", "nonface")  # lfw_subset(): images 0-99, then 100-199
SPLITS = ("train", "test")


def split_indices(count_per_class, test_fraction, seed):
    """`{(split, class): sorted lfw_subset indices}`, a seeded split per class."""
    rng = np.random.default_rng(seed)
    test_count = round(count_per_class * test_fraction)
    split = {}
    for label, name in enumerate(CLASSES):
        order = label * count_per_class + rng.permutation(count_per_class)
        split["test", name] = sorted(order[:test_count].tolist())
        split["train", name] = sorted(order[test_count:].tolist())
    return split


def png_bytes(image):
    """float [0, 1] grayscale image -> 8-bit PNG file content."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_demo(output, test_fraction=0.3, seed=0):
    """Writes (or refreshes) the demo dataset below `output`; returns the
    number of files written, kept and removed."""
    from skimage.data import lfw_subset

    images = lfw_subset()
    count_per_class = len(images) // len(CLASSES)
    written = kept = removed = 0
    for (split, name), indices in split_indices(count_per_class, test_fraction, seed).items():
        folder = os.path.join(output, split, name)
        os.makedirs(folder, exist_ok=True)
        expected = {f"lfw_{index:03d}.png": png_bytes(images[index]) for index in indices}
        for stale in sorted(set(os.listdir(folder)) - set(expected)):
            os.remove(os.path.join(folder, stale))
            removed += 1
        for filename, content in expected.items():
            path = os.path.join(folder, filename)
            if os.path.isfile(path) and open(path, "rb").read() == content:
                kept += 1
                continue
            with open(path, "wb") as file:
                file.write(content)
            written += 1
    return written, kept, removed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_faces"),
                        help="dataset folder to write (default: demo_faces beside this script)")
    parser.add_argument("--test-fraction", type=float, default=0.3,
                        help="share of each class in test/ (default 0.3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default 0)")
    args = parser.parse_args(argv)
    written, kept, removed = write_demo(args.output, args.test_fraction, args.seed)
    print(f"{args.output}: {written} files written, {kept} unchanged, {removed} removed.")


if __name__ == "__main__":
    main()
