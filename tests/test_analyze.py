import json
import shutil

import numpy as np
import pytest
from PIL import Image

from keras_parnet import analyze, plots
from keras_parnet.cli import analyze as analyze_cli

# (width, height) of the images written per split and class.
SIZES = {
    "train": {"cat": [(40, 36)] * 7, "dog": [(64, 48), (50, 50), (33, 80)], "fox": [(40, 40)] * 2},
    "test": {"cat": [(48, 32)] * 2, "dog": [(36, 36)] * 2, "fox": [(100, 60)]},
}


def _write_dataset(root, sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    for split, per_class in sizes.items():
        for name, class_sizes in per_class.items():
            (root / split / name).mkdir(parents=True)
            for index, (width, height) in enumerate(class_sizes):
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{index:02d}.png")
    return root


@pytest.fixture
def planted(tmp_path):
    """SIZES plus a train/test duplicate, a duplicate within train, a tiny
    image, a corrupt and a truncated file, and two BMPs of the same byte size
    but different content."""
    root = _write_dataset(tmp_path / "data")
    shutil.copy(root / "train" / "cat" / "00.png", root / "test" / "dog" / "leak.png")
    shutil.copy(root / "train" / "dog" / "00.png", root / "train" / "dog" / "copy.png")
    Image.new("RGB", (10, 40), "red").save(root / "train" / "fox" / "tiny.png")
    (root / "test" / "cat" / "corrupt.jpg").write_bytes(b"not an image at all" * 20)
    png = (root / "train" / "dog" / "01.png").read_bytes()
    (root / "train" / "fox" / "truncated.png").write_bytes(png[: len(png) // 2])
    for name, color in (("same_size_a.bmp", "blue"), ("same_size_b.bmp", "green")):
        Image.new("RGB", (40, 40), color).save(root / "test" / "fox" / name)
    return root


def test_analysis_finds_planted_problems_and_counts_classes(planted, tmp_path):
    report = analyze.analyze_dataset(planted, tmp_path / "out")
    assert report["classes"] == ["cat", "dog", "fox"]
    # SIZES, plus copy.png and tiny.png in train; leak.png and both BMPs in test.
    assert report["counts"] == {"train": {"cat": 7, "dog": 4, "fox": 3},
                                "test": {"cat": 2, "dog": 3, "fox": 3}}

    assert sorted(entry["path"] for entry in report["unreadable"]) == [
        str(planted / "test" / "cat" / "corrupt.jpg"), str(planted / "train" / "fox" / "truncated.png")]
    assert report["duplicates"] == [
        {"paths": [str(planted / "test" / "dog" / "leak.png"), str(planted / "train" / "cat" / "00.png")],
         "splits": ["test", "train"], "classes": ["cat", "dog"]},
        {"paths": [str(planted / "train" / "dog" / "00.png"), str(planted / "train" / "dog" / "copy.png")],
         "splits": ["train"], "classes": ["dog"]},
    ]
    tiny = str(planted / "train" / "fox" / "tiny.png")
    assert report["tiny"] == [{"path": tiny, "width": 10, "height": 40}]
    train_widths = [w for sizes in SIZES["train"].values() for w, _ in sizes] + [64, 10]
    train_heights = [h for sizes in SIZES["train"].values() for _, h in sizes] + [48, 40]
    assert report["sizes"]["train"] == {
        "width": {"min": 10, "median": float(np.median(train_widths)), "max": 64},
        "height": {"min": 36, "median": float(np.median(train_heights)), "max": 80},
    }

    warnings = "\n".join(report["warnings"])
    assert "1 file(s) in both train and test" in warnings
    assert "remove one copy of test/dog/leak.png = train/cat/00.png" in warnings
    assert "train: 1 group(s) of duplicate files: train/dog/00.png = train/dog/copy.png" in warnings
    assert "class imbalance" not in warnings  # 7 cats and 3 foxes: 2.3x is below 3x
    assert "1 image(s) smaller than 32 px on a side: train/fox/tiny.png" in warnings
    assert "2 unreadable file(s), skipped by training" in warnings
    assert len(report["warnings"]) == 4

    saved = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert saved == report
    for name in report["plots"].values():
        assert (tmp_path / "out" / name).stat().st_size > 1000


def test_imbalance_and_missing_classes_are_warned(tmp_path):
    sizes = {"train": {"a": [(40, 40)] * 7, "b": [(40, 40)] * 2, "c": [(40, 40)]},
             "test": {"a": [(40, 40)], "b": [(40, 40)]}}
    root = _write_dataset(tmp_path / "data", sizes)
    report = analyze.analyze_dataset(root, imbalance=3)
    assert report["counts"]["train"] == {"a": 7, "b": 2, "c": 1}
    assert report["counts"]["test"] == {"a": 1, "b": 1}
    assert report["plots"] == {} and not (tmp_path / "data" / "analysis.json").exists()
    assert report["warnings"] == [
        f"{root}: train and test have different class folders (only in train: c): "
        "give both splits the same classes.",
        "train: class imbalance, 7 images of 'a' but 1 of 'c' (7.0x > 3x): accuracy will favour "
        "the large classes; balance the classes or weight them.",
    ]


def test_clean_dataset_has_no_warnings(tmp_path):
    sizes = {split: {"a": [(40, 40), (50, 34)], "b": [(60, 40)] * 2} for split in ("train", "test")}
    report = analyze.analyze_dataset(_write_dataset(tmp_path / "data", sizes))
    assert report["warnings"] == [] and report["duplicates"] == [] and report["unreadable"] == []


def test_class_count_plot(planted):
    report = analyze.analyze_dataset(planted)
    figure = plots.plot_class_counts(report["counts"], report["classes"])
    axes = figure.axes[0]
    assert axes.get_title() == "Images per class and split"
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("class", "images")
    assert [label.get_text() for label in axes.get_xticklabels()] == ["cat", "dog", "fox"]
    train_bars, test_bars = axes.containers
    assert [bar.get_height() for bar in train_bars] == [7, 4, 3]
    assert [bar.get_height() for bar in test_bars] == [2, 3, 3]
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["train (14)", "test (8)"]
    assert [text.get_text() for text in axes.texts] == ["7", "4", "3", "2", "3", "3"]


def test_image_size_plot():
    sizes = {"train": np.array([[40.0, 36.0], [64.0, 48.0]]), "test": np.array([[10.0, 20.0]])}
    figure = plots.plot_image_sizes(sizes, min_size=32)
    axes = figure.axes[0]
    assert axes.get_title() == "Image sizes (from file headers)"
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("width (px)", "height (px)")
    train_points, test_points = axes.collections
    np.testing.assert_array_equal(train_points.get_offsets(), sizes["train"])
    np.testing.assert_array_equal(test_points.get_offsets(), sizes["test"])
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["train (2)", "test (1)", "32 px"]


def test_cli_prints_the_table_and_writes_the_plots(planted, tmp_path, capsys):
    out = tmp_path / "analysis"
    assert analyze_cli.main(["--dataset", str(planted), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["class", "train", "test"]
    assert printed[1].split() == ["cat", "7", "2"]
    assert printed[4].split() == ["total", "14", "8"]
    assert sum(line.startswith("warning: ") for line in printed) == 4
    written = sorted(path.name for path in out.iterdir())
    assert written == ["analysis.json", "class_counts.png", "image_sizes.png"]


def test_cli_error_is_one_line(tmp_path, capsys):
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    assert analyze_cli.main(["--dataset", str(tmp_path / "data"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "test does not exist" in error and error.count("\n") == 1


def test_decompression_bomb_is_skipped_and_named(tmp_path, capsys):
    """An image whose header claims more pixels than Pillow opens (a
    decompression bomb) is named and left out, as training leaves it out;
    before, Pillow's DecompressionBombError ended analyze in a traceback
    (in this process: the error would fail the test)."""
    sizes = {split: {"a": [(40, 40)] * 2, "b": [(40, 40)] * 2} for split in analyze.SPLITS}
    small_dataset = _write_dataset(tmp_path / "data", sizes)
    bomb = small_dataset / "train" / "a" / "bomb.png"
    Image.new("1", (15000, 15000)).save(bomb)  # 225 Mpixels in 27 kB
    assert analyze_cli.main(["--dataset", str(small_dataset), "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert any(line.startswith("warning: 1 unreadable file(s)") and str(bomb) in line
               for line in out.splitlines()), out
    report = json.loads((tmp_path / "out" / analyze.ANALYSIS_JSON).read_text())
    assert [entry["path"] for entry in report["unreadable"]] == [str(bomb)]
    assert report["counts"]["train"] == {"a": 2, "b": 2}
