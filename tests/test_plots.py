"""The predict figure shows the photo as given: EXIF orientation applied, its
own aspect ratio, downscaled for display only, titled `class:probability`."""

import numpy as np
from PIL import Image

from keras_parnet import plots
from keras_parnet.cli import predict as predict_cli

ORIENTATION = 0x0112
ROTATE_90 = 6  # EXIF: stored column 0 is the visual top (turn the stored image 90 degrees clockwise)


def _rotated_photo(path, width=60, height=40):
    """A JPEG stored `width` x `height`, left half red and right half blue,
    tagged to be shown turned 90 degrees clockwise (as phones store portraits)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2:] = (0, 0, 255)
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATE_90
    Image.fromarray(pixels).save(path, quality=95, exif=exif)
    return path


def test_display_image_applies_exif_orientation_and_keeps_the_aspect(tmp_path):
    photo = plots.display_image(_rotated_photo(tmp_path / "portrait.jpg"))
    assert photo.shape == (60, 40, 3)  # stored 60 wide, 40 high: shown 40 wide, 60 high
    # The stored left (red) half is the visual top, the right (blue) half the bottom.
    top, bottom = photo[:25].reshape(-1, 3).mean(axis=0), photo[35:].reshape(-1, 3).mean(axis=0)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_display_image_is_downscaled_for_display_only(tmp_path):
    Image.new("RGB", (2000, 1000), (10, 200, 30)).save(tmp_path / "wide.png")
    photo = plots.display_image(tmp_path / "wide.png")
    assert photo.shape == (plots.DISPLAY_SIDE // 2, plots.DISPLAY_SIDE, 3)
    assert photo.dtype == np.uint8 and tuple(photo[0, 0]) == (10, 200, 30)


def test_saved_prediction_figure_is_the_photo_titled_class_probability(tmp_path):
    """The command line's figure path (what `--out` writes and the prompt
    shows): the photo as given, not the network's square input."""
    path = _rotated_photo(tmp_path / "portrait.jpg")
    reporter = predict_cli.Reporter(["cat", "dog"], top_k=2, plot_dir=tmp_path / "figures")
    reporter.report(str(path), np.array([0.25, 0.75]))
    saved = tmp_path / "figures" / "portrait.png"
    with Image.open(saved) as png:
        assert png.text["Title"] == "dog:0.750"
        width, height = png.size
    assert height > width  # the portrait's aspect, not a square

    figure = plots.plot_prediction(plots.display_image(path), [("dog", 0.75), ("cat", 0.25)])
    axes = figure.axes[0]
    assert axes.get_title() == "dog:0.750"
    assert axes.images[0].get_array().shape == (60, 40, 3)
