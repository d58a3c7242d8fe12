import csv
import io
import shutil

import h5py
import keras
import numpy as np
import pytest
from conftest import TINY_WIDTHS, infer, randomize_batch_norm, set_known_answer
from PIL import Image

from keras_parnet import compat, data, plots, predict, runs
from keras_parnet.cli import predict as predict_cli

SIZE = 32
# Label order on purpose not sorted: label 0 is the dark class.
CLASSES = ["zebra_dark", "ant_light"]
DARK, LIGHT = 10, 245
# The known answer: the winning class gets 4/5 (logit margin log 4).
WIN = 0.8

pytestmark = pytest.mark.usefixtures("shallow_module")  # predicting and reporting need no depth


def softmax(logits):
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def uniform(level):
    """What load_image makes of a uniform image, whatever the resize method."""
    return np.full((1, SIZE, SIZE, 3), level, dtype="float32")


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """A run folder (logs/run) whose best weights answer as `set_known_answer`
    says for DARK and LIGHT images with WIN, plus image files of every kind."""
    root = tmp_path_factory.mktemp("predict")
    run_dir = root / "logs" / "run"
    config = runs.write_run(run_dir, "ParNet", {"widths": list(TINY_WIDTHS)}, SIZE, CLASSES)
    model, features = set_known_answer(randomize_batch_norm(runs.build_model(config)), DARK, LIGHT, WIN)
    model.save_weights(run_dir / runs.BEST_WEIGHTS)

    images = root / "images"
    (images / "folder").mkdir(parents=True)
    Image.new("RGB", (48, 40), (DARK,) * 3).save(images / "dark.png")
    Image.new("RGB", (40, 48), (LIGHT,) * 3).save(images / "light.jpg", quality=100)
    Image.new("L", (40, 40), DARK).save(images / "gray.png")
    Image.new("RGBA", (40, 40), (LIGHT, LIGHT, LIGHT, 255)).save(images / "rgba.png")
    Image.new("CMYK", (40, 40), (0, 0, 0, 255 - DARK)).save(images / "cmyk.jpg", quality=100)
    Image.new("RGB", (40, 40), (LIGHT,) * 3).save(images / "folder" / "inside.png")
    whole = (images / "light.jpg").read_bytes()
    (images / "corrupt.jpg").write_bytes(whole[: len(whole) // 2])
    (images / "notes.jpg").write_text("not an image\n")
    return {"root": root, "run_dir": run_dir, "images": images, "model": model, "features": features}


@pytest.fixture(scope="module")
def known_predictor(known):
    """The known run loaded once, as `--run` loads it."""
    return predict.load_predictor(known["run_dir"])


@pytest.fixture
def loaded(known_predictor, monkeypatch):
    """main() with the known run already loaded, for the tests of what
    happens after loading."""
    monkeypatch.setattr(predict_cli, "load", lambda args: known_predictor)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def run_main(monkeypatch, capsys, argv, stdin=""):
    monkeypatch.setattr("sys.stdin", stdin if isinstance(stdin, io.StringIO) else io.StringIO(stdin))
    code = predict_cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def csv_probabilities(path):
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["path", "class", "probability", *CLASSES]
    return {row[0]: np.array(row[3:], dtype="float64") for row in rows[1:]}


@pytest.mark.slow
def test_predict_image_matches_known_answer_and_title(known):
    model = known["model"]
    for name, level, expected in (("dark.png", DARK, CLASSES[0]), ("light.jpg", LIGHT, CLASSES[1])):
        ranked = predict.predict_image(model, known["images"] / name, CLASSES, SIZE, top_k=2)
        # Independent: numpy softmax over the pooled features and the Dense weights.
        kernel, bias = model.get_layer("predictions").get_weights()
        reference = softmax(infer(known["features"], uniform(level)) @ kernel + bias)[0]
        assert [n for n, _ in ranked] == [expected, *(n for n in CLASSES if n != expected)]
        np.testing.assert_allclose([p for _, p in ranked], sorted(reference, reverse=True), atol=1e-5)
        assert ranked[0][1] == pytest.approx(WIN, abs=1e-4)
        figure = plots.plot_prediction(np.asarray(Image.open(known["images"] / name)) / 255, ranked)
        assert figure.axes[0].get_title() == f"{expected}:0.800"


@pytest.mark.slow
def test_scripted_stdin_keeps_going_after_bad_input(known, loaded, monkeypatch, capsys):
    images = known["images"]
    lines = [images / "dark.png", images / "missing.png", images / "corrupt.jpg",
             images / "folder", images / "notes.jpg", images / "light.jpg"]
    code, out, err = run_main(monkeypatch, capsys, ["--run", known["run_dir"]],
                              "".join(f"{line}\n" for line in lines))
    assert code == 0
    assert out == [f"{images / 'dark.png'}\tzebra_dark\t0.800",
                   f"{images / 'light.jpg'}\tant_light\t0.800"]
    assert len(err) == 4 and all(line.startswith("error: ") for line in err)
    for line, path in zip(err, lines[1:5]):
        assert str(path) in line
    assert "Traceback" not in "\n".join(err)


@pytest.mark.slow
def test_interactive_prompt_shows_top_k_and_saves_titled_figure(known, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HOME", str(known["images"]))
    monkeypatch.chdir(tmp_path)
    stdin = FakeTerminal(" '~/light.jpg' \n\"~/gray.png\"\n\nnever read\n")
    code, out, err = run_main(monkeypatch, capsys, ["--run", known["run_dir"], "--top-k", "2"], stdin)
    assert code == 0
    assert out[1] == predict_cli.PROMPT + "  ant_light   0.800"
    assert out[2] == "  zebra_dark  0.200"
    assert out[4] == predict_cli.PROMPT + "  zebra_dark  0.800"
    assert out[-1] == predict_cli.PROMPT
    assert not any("never read" in line for line in out + err)
    # No display here: the figures went to predictions/ with the title inside.
    assert err == ["no display: figures are saved to predictions/."]
    for name, title in (("light.png", "ant_light:0.800"), ("gray.png", "zebra_dark:0.800")):
        assert Image.open(tmp_path / "predictions" / name).text["Title"] == title


@pytest.mark.parametrize("ending", ["q\n", "", KeyboardInterrupt])
def test_interactive_loop_ends_cleanly(known, loaded, monkeypatch, capsys, tmp_path, ending):
    if ending is KeyboardInterrupt:
        class Interrupted(FakeTerminal):
            def readline(self):
                raise KeyboardInterrupt
        stdin = Interrupted()
    else:
        stdin = FakeTerminal(ending)
    code, out, err = run_main(
        monkeypatch, capsys, ["--run", known["run_dir"], "--out", tmp_path], stdin)
    assert code == 0
    assert out[-1].startswith(predict_cli.PROMPT) and not err


def test_batch_paths_folders_globs_and_csv(known, loaded, monkeypatch, capsys, tmp_path):
    images = known["images"]
    plots = tmp_path / "plots"
    code, out, err = run_main(monkeypatch, capsys, [
        images / "folder", images / "*.png", images / "cmyk.jpg", "--run", known["run_dir"],
        "--csv", tmp_path / "out.csv", "--out", plots])
    assert code == 0 and not err
    expected = {"folder/inside.png": "ant_light", "dark.png": "zebra_dark", "gray.png": "zebra_dark",
                "rgba.png": "ant_light", "cmyk.jpg": "zebra_dark"}
    got = {line.split("\t")[0]: line.split("\t")[1:] for line in out}
    assert {path[len(str(images)) + 1:]: result[0] for path, result in got.items()} == expected
    for path, probabilities in csv_probabilities(tmp_path / "out.csv").items():
        assert probabilities.sum() == pytest.approx(1, abs=1e-5)
        assert CLASSES[probabilities.argmax()] == got[path][0]
        # Lossless uniform images give exactly the known answer; JPEG ones nearly.
        assert probabilities.max() == pytest.approx(WIN, abs=2e-3)
    assert sorted(p.name for p in plots.iterdir()) == ["cmyk.png", "dark.png", "gray.png",
                                                       "inside.png", "rgba.png"]

    code, out, err = run_main(monkeypatch, capsys, [
        images / "dark.png", images / "missing.png", images / "nothing*.png", "--run", known["run_dir"]])
    assert code == 2 and len(out) == 1
    assert err == [f"error: no file matches {images / 'nothing*.png'}.", err[1]]
    assert "missing.png" in err[1]


@pytest.mark.slow
def test_class_names_come_from_the_run_in_label_order(known, monkeypatch, capsys, tmp_path):
    # Sorted (or listdir) order would call the dark image `ant_light`.
    assert sorted(CLASSES) != CLASSES
    (tmp_path / "dataset" / "ant_light").mkdir(parents=True)
    (tmp_path / "dataset" / "zebra_dark").mkdir()
    monkeypatch.chdir(tmp_path / "dataset")
    dark = known["images"] / "dark.png"
    code, out, _ = run_main(monkeypatch, capsys, [dark, "--run", known["run_dir"]])
    assert code == 0 and out == [f"{dark}\tzebra_dark\t0.800"]
    # --class-names overrides the run's names, position by position.
    (tmp_path / "classes.txt").write_text("first\nsecond\n")
    code, out, _ = run_main(monkeypatch, capsys,
                            [dark, "--run", known["run_dir"], "--class-names", tmp_path / "classes.txt"])
    assert code == 0 and out == [f"{dark}\tfirst\t0.800"]


@pytest.mark.slow  # loads and fuses the run six ways (20 s of the fast loop)
def test_every_weights_format_gives_identical_probabilities(known, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(known["run_dir"], run_dir)
    model = known["model"]
    with h5py.File(run_dir / "legacy.h5", "w") as file:  # Keras 2 `save_weights("x.h5")`
        compat.save_legacy_h5_weights(model, file)
    model.save(run_dir / "model.keras")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run_dir / "model.keras", bare)
    shutil.copy(run_dir / runs.BEST_WEIGHTS, bare)
    (bare / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    sources = {
        "fused": ["--weights", run_dir / runs.BEST_WEIGHTS],
        "weights.h5": ["--weights", run_dir / runs.BEST_WEIGHTS, "--no-fuse"],
        "legacy.h5": ["--run", run_dir, "--weights", run_dir / "legacy.h5", "--no-fuse"],
        "keras": ["--weights", run_dir / "model.keras", "--no-fuse"],
        # No run.json: the .keras holds the model, the flags say the rest.
        "bare keras": ["--weights", bare / "model.keras", "--class-names", bare / "classes.txt", "--no-fuse"],
        "bare weights.h5": ["--weights", bare / runs.BEST_WEIGHTS, "--class-names", bare / "classes.txt",
                            "--widths", *TINY_WIDTHS, "--image-size", SIZE, "--no-fuse"],
    }
    inputs = np.concatenate([uniform(DARK), uniform(LIGHT)])
    results = {}
    for name, flags in sources.items():
        args = predict_cli.build_parser().parse_args([str(flag) for flag in flags])
        loaded, config = predict_cli.load(args)
        assert config["class_names"] == CLASSES and config["image_size"] == [SIZE, SIZE]
        # Eager calls: tracing a predict function per model would dominate the test.
        results[name] = keras.ops.convert_to_numpy(
            loaded(inputs, training=False))
    for name in ("legacy.h5", "keras", "bare keras", "bare weights.h5"):
        np.testing.assert_array_equal(results[name], results["weights.h5"], err_msg=name)
    # The same eager call on the trained model: graph predict may order float sums differently.
    expected = keras.ops.convert_to_numpy(model(inputs, training=False))
    np.testing.assert_allclose(results["weights.h5"], expected, atol=1e-6)
    np.testing.assert_allclose(results["fused"], results["weights.h5"], atol=1e-4)


# Keras warns about the classifier it cannot fill before it raises.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_class_count_mismatch_is_one_clear_line(known, monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(known["run_dir"], run_dir)
    runs.write_run(run_dir, "ParNet", {"widths": list(TINY_WIDTHS)}, SIZE, [*CLASSES, "extra"])
    code, out, err = run_main(monkeypatch, capsys, [known["images"] / "dark.png", "--run", run_dir])
    assert code == 2 and not out and len(err) == 1
    assert err[0].startswith("error: weights file") and "names 3 classes" in err[0]

    known["model"].save(tmp_path / "model.keras")
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    code, out, err = run_main(monkeypatch, capsys, [
        known["images"] / "dark.png", "--weights", tmp_path / "model.keras", "--class-names", tmp_path / "three.txt"])
    assert code == 2 and len(err) == 1
    assert "has 2 outputs but the class list names 3 classes" in err[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--logs-dir", "{tmp}/empty"], "no run found in"),
        (["--weights", "{tmp}/lonely.weights.h5"], "has no run.json beside it: pass the architecture"),
    ],
)
def test_setting_errors(monkeypatch, capsys, tmp_path, argv, message):
    (tmp_path / "lonely.weights.h5").write_bytes(b"")
    code, out, err = run_main(monkeypatch, capsys, [arg.format(tmp=tmp_path) for arg in argv])
    assert code == 2 and not out and len(err) == 1 and message in err[0]


def test_clean_path(monkeypatch):
    monkeypatch.setenv("HOME", "/home/user")
    assert predict_cli.clean_path("  '~/a b.jpg'\n") == "/home/user/a b.jpg"
    assert predict_cli.clean_path('"/x/y.png" ') == "/x/y.png"
    assert predict_cli.clean_path("\n") == ""


@pytest.mark.slow
def test_converted_run_preprocessing_crops_and_normalizes(known, tmp_path):
    """A run with the official ImageNet preprocessing: the network sees the
    center crop of `load_image(..., crop_fraction)` normalized by mean/std
    (by its own layers; the reference normalizes in numpy)."""
    left = np.zeros((40, 80, 3), np.uint8)
    left[:, :40] = 255  # white left half
    path = tmp_path / "halves.png"
    Image.fromarray(left).save(path)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    config = runs.run_config("ParNet", {"widths": list(TINY_WIDTHS)}, SIZE, CLASSES,
                             {"rescale": 1 / 255, "mean": mean, "std": std, "crop_fraction": 0.875})
    model, bare = runs.build_model(config), runs.build_model(config, include_preprocessing=False)
    model.set_weights(known["model"].get_weights())
    bare.set_weights(known["model"].get_weights())
    ranked = predict.predict_image(model, path, CLASSES, SIZE, top_k=2, preprocessing=config["preprocessing"])
    cropped = data.load_image(path, SIZE, crop_fraction=0.875)
    assert 0.3 * 255 < cropped[..., 0].mean() < 0.7 * 255  # the crop shows both halves
    normalized = (cropped[np.newaxis] / 255 - np.float32(mean)) / np.float32(std)
    expected = keras.ops.convert_to_numpy(bare(normalized.astype("float32"), training=False))[0]
    # float32 rounding: the layers and numpy normalize in different orders (1.03e-6 seen once)
    np.testing.assert_allclose([p for _, p in ranked], sorted(expected, reverse=True), atol=1e-5)


# Failure paths: one line, exit 2, nothing written before lost ---------------------


@pytest.mark.parametrize("size", [7, 31])
def test_image_size_below_the_minimum_is_one_line(known, monkeypatch, capsys, size):
    monkeypatch.setattr(predict_cli, "load", lambda args: pytest.fail("loaded before checking"))
    code, out, err = run_main(monkeypatch, capsys, [known["images"] / "dark.png", "--run", known["run_dir"],
                                                    "--image-size", size])
    assert code == 2 and not out
    assert err == [f"error: --image-size {size} is below ParNet's 32 px minimum: pass at least 32, "
                   "or leave it out for the run's size."]


@pytest.mark.slow  # the `known` run
def test_image_size_below_the_minimum_in_a_real_process(known):
    from conftest import assert_one_line_error, run_cli

    result = run_cli("keras_parnet.cli.predict", known["images"] / "dark.png", "--run", known["run_dir"],
                     "--image-size", 7)
    assert_one_line_error(result, "--image-size 7", "32 px minimum")
    assert not result.stdout


def test_save_plots_onto_a_file_is_one_line_before_loading(known, monkeypatch, capsys, tmp_path):
    in_the_way = tmp_path / "plots"
    in_the_way.write_text("kept\n")
    monkeypatch.setattr(predict_cli, "load", lambda args: pytest.fail("loaded before checking"))
    code, out, err = run_main(monkeypatch, capsys, [known["images"] / "dark.png", "--run", known["run_dir"],
                                                    "--out", in_the_way])
    assert code == 2 and not out
    assert err == [f"error: --out {in_the_way} is a file, not a folder: pass a folder."]
    assert in_the_way.read_text() == "kept\n"


@pytest.mark.slow
def test_nan_outputs_are_an_error_not_a_class(known, monkeypatch, capsys, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(known["run_dir"], run_dir)
    model = runs.build_model(runs.read_run(run_dir))
    model.set_weights([np.full_like(weights, np.nan) for weights in model.get_weights()])
    model.save_weights(run_dir / runs.BEST_WEIGHTS)
    dark = known["images"] / "dark.png"
    code, out, err = run_main(monkeypatch, capsys, [dark, known["images"] / "light.jpg", "--run", run_dir,
                                                    "--no-fuse", "--csv", tmp_path / "out.csv"])
    assert code == 2 and not out
    assert err == [f"error: the model outputs NaN for {dark}: its weights are broken "
                   "(retrain, or pick another checkpoint with --weights)."]
    assert csv_probabilities(tmp_path / "out.csv") == {}  # the header, and no NaN row


def test_fuse_raises_for_a_run_model_and_passes_a_full_model_through():
    unfoldable = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="needs a functional keras.Model"):
        predict.fuse_model(unfoldable)
    with pytest.warns(UserWarning, match="^reparameterize needs a functional keras.Model"):
        assert predict.fuse_model(unfoldable, may_be_fused=True) is unfoldable


# An exported artifact instead of the run's weights ----------------------------------


@pytest.fixture(scope="module")
def float_artifact(known):
    """A TFLite artifact of the known run that takes what the network takes
    (`--input float`), exported into a folder of its own with its labels.txt."""
    from keras_parnet import export

    out, _ = export.export_run(known["run_dir"], "tflite", known["root"] / "deploy" / "float.tflite",
                               input="float")
    return out


@pytest.mark.slow
def test_artifact_predicts_what_the_run_predicts(known, float_artifact, monkeypatch, capsys, tmp_path):
    images = known["images"]
    paths = [images / "folder", images / "*.png", images / "cmyk.jpg", images / "light.jpg"]
    results = {}
    for name, flags in (("run", []), ("artifact", ["--artifact", float_artifact])):
        code, out, err = run_main(monkeypatch, capsys, [*paths, "--run", known["run_dir"], *flags,
                                                        "--csv", tmp_path / f"{name}.csv"])
        assert code == 0 and not err
        results[name] = ([line.split("\t")[:2] for line in out], csv_probabilities(tmp_path / f"{name}.csv"))
    assert results["artifact"][0] == results["run"][0] and len(results["run"][0]) == 6
    expected = results["run"][1]
    assert set(results["artifact"][1]) == set(expected)
    for path, probabilities in results["artifact"][1].items():
        np.testing.assert_allclose(probabilities, expected[path], rtol=0, atol=1e-4, err_msg=path)

    # Piped paths take the same path through the classifier.
    code, out, err = run_main(monkeypatch, capsys, ["--run", known["run_dir"], "--artifact", float_artifact],
                              f"{images / 'dark.png'}\n")
    assert code == 0 and not err and out == [f"{images / 'dark.png'}\tzebra_dark\t0.800"]


@pytest.mark.slow
@pytest.mark.parametrize("case, message", [
    ("other labels", "labels.txt does not match the run's class names (line 1 is 'ant_light' where the run "
                     "has 'zebra_dark')"),
    ("more classes", "gives 2 class probabilities but the run {run} names 3 classes"),
    ("model flags", "--artifact holds the model, its size and its weights: drop --weights, --no-fuse."),
])
def test_artifact_mismatches_are_one_line(known, float_artifact, monkeypatch, capsys, tmp_path, case, message):
    from keras_parnet.export import LABELS_FILE

    run_dir = known["run_dir"]
    artifact = tmp_path / "deploy" / float_artifact.name
    artifact.parent.mkdir()
    shutil.copy(float_artifact, artifact)
    flags = []
    if case == "other labels":
        (artifact.parent / LABELS_FILE).write_text("ant_light\nzebra_dark\n")
    elif case == "more classes":  # no labels.txt: the artifact's outputs are counted
        run_dir = tmp_path / "run"
        runs.write_run(run_dir, "ParNet", {"widths": list(TINY_WIDTHS)}, SIZE, [*CLASSES, "extra"])
    else:
        flags = ["--weights", run_dir / runs.BEST_WEIGHTS, "--no-fuse"]
    code, out, err = run_main(monkeypatch, capsys, [known["images"] / "dark.png", "--run", run_dir,
                                                    "--artifact", artifact, *flags])
    assert code == 2 and not out and len(err) == 1
    assert err[0].startswith("error: ") and message.format(run=run_dir) in err[0], err[0]
