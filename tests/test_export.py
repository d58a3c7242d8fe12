import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import (SHALLOW_PRELUDE, TINY_WIDTHS, assert_one_line_error, main_as_process,
                      randomize_batch_norm, run_cli)

from keras_parnet import export, runs
from keras_parnet.cli import export as export_cli

pytestmark = pytest.mark.usefixtures("shallow_module")  # exporting needs no depth

IMAGE_SIZE = (45, 77)  # odd and non-square: every padding rule is exercised
CLASSES = ["cat", "dog", "owl"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run folder whose best weights have non-trivial BN statistics, and its model."""
    run_dir = tmp_path_factory.mktemp("run")
    config = runs.write_run(run_dir, "ParNet", {"widths": list(TINY_WIDTHS)}, IMAGE_SIZE, CLASSES)
    model = randomize_batch_norm(runs.build_model(config))
    model.save_weights(run_dir / runs.BEST_WEIGHTS)
    return run_dir, model


def reference_outputs(model, batch):
    return np.asarray(model(batch, training=False))


def uint8_images(count, seed, size=IMAGE_SIZE):
    return np.random.default_rng(seed).integers(0, 256, (count, *size, 3), dtype=np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("format", export.FORMATS)
def test_artifact_takes_uint8_images_and_matches_the_trained_model(trained_run, format, tmp_path, capsys,
                                                                   caplog):
    if format == "onnx":
        pytest.importorskip("tf2onnx", reason="the export extra is not installed")
        pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    run_dir, model = trained_run
    if format == "keras":  # a weights file and --out
        out = tmp_path / "deploy" / "best_fused.keras"
        argv = ["--weights", str(run_dir / runs.BEST_WEIGHTS), "--out", str(out.parent)]
    else:  # a run folder, written beside its weights
        out = export.default_output(run_dir / runs.BEST_WEIGHTS, format)
        argv = ["--run", str(run_dir)]

    assert export_cli.main([*argv, "--format", format]) == 0
    assert out.exists()
    assert f"wrote {out}" in capsys.readouterr().out
    assert (out.parent / export.LABELS_FILE).read_text().splitlines() == CLASSES
    if format == "savedmodel":  # runs where XLA is missing (Keras compiles grouped convolutions with it)
        assert b"_XlaMustCompile" not in (out / "saved_model.pb").read_bytes()

    images = uint8_images(3, seed=7)  # not the batch the CLI checked
    # At the run's size the run's nearest-neighbour resize keeps every pixel.
    expected = reference_outputs(model, images.astype("float32"))
    actual = export.load_artifact(out, format)(images)
    assert actual.shape == (3, len(CLASSES))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)
    # TensorFlow's silu op has a custom gradient: a SavedModel holding it warns at every load.
    assert "gradient" not in caplog.text


@pytest.mark.slow
def test_float_input_is_the_network_input_and_onnx_carries_the_class_names(trained_run, tmp_path):
    onnx = pytest.importorskip("onnx", reason="the export extra is not installed")
    pytest.importorskip("tf2onnx", reason="the export extra is not installed")
    run_dir, model = trained_run
    out = tmp_path / "best_fused.onnx"
    assert export_cli.main(["--run", str(run_dir), "--format", "onnx", "--input", "float", "--out", str(tmp_path)]) == 0
    batch = uint8_images(2, seed=3).astype("float32") * 0.5 + 25.25  # not pixels a uint8 input could hold
    np.testing.assert_allclose(export.load_artifact(out, "onnx")(batch), reference_outputs(model, batch),
                               rtol=0, atol=1e-4)
    metadata = {entry.key: entry.value for entry in onnx.load(out).metadata_props}
    assert json.loads(metadata["class_names"]) == CLASSES


CONVERTED_PREPROCESSING = {"rescale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                           "crop_fraction": 0.875}


@pytest.mark.slow
def test_saved_model_does_a_converted_runs_crop_and_normalization_and_reads_encoded_images(tmp_path):
    import tensorflow as tf
    from PIL import Image

    from keras_parnet.data import load_image

    run_dir = tmp_path / "converted"
    config = runs.write_run(run_dir, "ParNet", {"widths": list(TINY_WIDTHS)}, (48, 40), CLASSES,
                            preprocessing=CONVERTED_PREPROCESSING)
    bare = randomize_batch_norm(runs.build_model(config, include_preprocessing=False))
    bare.save_weights(run_dir / runs.BEST_WEIGHTS)
    out = tmp_path / "model_savedmodel"
    assert export_cli.main(["--run", str(run_dir), "--format", "savedmodel", "--out", str(out)]) == 0

    def expected(files):
        # Independent of the artifact: the data pipeline's decode and crop, numpy
        # scaling and normalization, then the network without its preprocessing layers.
        images = np.stack([load_image(file, (48, 40), 0.875) for file in files])
        mean, std = np.array(CONVERTED_PREPROCESSING["mean"]), np.array(CONVERTED_PREPROCESSING["std"])
        return reference_outputs(bare, ((images / 255 - mean) / std).astype("float32"))

    at_run_size = uint8_images(2, seed=5, size=(48, 40))
    other_sizes = [uint8_images(1, seed=6, size=(70, 90))[0], uint8_images(1, seed=8, size=(33, 61))[0]]
    files = []
    for index, image in enumerate([*at_run_size, *other_sizes]):
        files.append(tmp_path / f"{index}.png")
        Image.fromarray(image).save(files[-1])

    loaded = tf.saved_model.load(str(out))
    np.testing.assert_allclose(loaded.serve(at_run_size).numpy(), expected(files[:2]), rtol=0, atol=1e-4)
    encoded = tf.constant([file.read_bytes() for file in files])
    np.testing.assert_allclose(loaded.serve_bytes(encoded).numpy(), expected(files), rtol=0, atol=1e-4)
    assert [name.decode() for name in loaded.labels().numpy()] == CLASSES
    assert set(loaded.signatures) >= {"serving_default", "serve", "serve_float", "serve_bytes"}
    default_input = loaded.signatures["serving_default"].structured_input_signature[1]["image"]
    assert default_input.dtype == tf.uint8 and default_input.shape.as_list() == [None, 48, 40, 3]


@pytest.mark.slow
def test_tflite_float16_halves_the_file_and_stays_close(trained_run, tmp_path):
    run_dir, model = trained_run
    float32 = exported(run_dir, "tflite")
    out = tmp_path / "best_fused_float16.tflite"
    assert export_cli.main(["--run", str(run_dir), "--format", "tflite", "--quantize", "float16",
                            "--out", str(tmp_path)]) == 0
    # Weights are most of the file; the graph and its constants stay.
    assert 0.45 < out.stat().st_size / float32.stat().st_size < 0.65
    images = uint8_images(4, seed=9)
    expected = reference_outputs(model, images.astype("float32"))
    np.testing.assert_allclose(export.load_artifact(out, "tflite")(images), expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "savedmodel", "--quantize", "int8"], "for the tflite format"),
        (["--format", "tflite", "--quantize", "int8"], "--dataset"),  # the run records no dataset
    ],
)
def test_quantization_mistakes_are_one_line(trained_run, capsys, argv, message):
    assert export_cli.main(["--run", str(trained_run[0]), *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1


def exported(run_dir, format):
    """The run's default artifact, exported now unless an earlier test did."""
    out = export.default_output(run_dir / runs.BEST_WEIGHTS, format)
    if not out.exists():
        assert export_cli.main(["--run", str(run_dir), "--format", format]) == 0
    return out


@pytest.mark.slow
def test_onnx_keeps_grouped_convolutions_grouped(trained_run):
    onnx = pytest.importorskip("onnx", reason="the export extra is not installed")
    pytest.importorskip("tf2onnx", reason="the export extra is not installed")
    graph = onnx.load(exported(trained_run[0], "onnx")).graph
    groups = [
        attribute.i for node in graph.node if node.op_type == "Conv"
        for attribute in node.attribute if attribute.name == "group"
    ]
    assert groups.count(2) == 4  # fusion1/2: the fused 3x3 and the SE gate each
    assert {node.op_type for node in graph.node}.isdisjoint(
        {"StatefulPartitionedCall", "PartitionedCall"}
    )


def installed_formats():
    try:
        export._require_onnx()
    except export.ExportError:
        return [format for format in export.FORMATS if format != "onnx"]
    return list(export.FORMATS)


def onednn_is_on():
    """Whether this process's TensorFlow runs with oneDNN (TF_ENABLE_ONEDNN_OPTS,
    or the CPU's default when unset)."""
    from tensorflow.python.util import _pywrap_util_port

    return _pywrap_util_port.IsMklEnabled()


# Exports every format, each reloaded and checked by the CLI (exit 1 when the
# artifact's outputs differ, 2 when it cannot be written or run).
EXPORT_ALL = SHALLOW_PRELUDE + """
from keras_parnet.cli import export
run_dir, out_dir, *formats = sys.argv[1:]
sys.exit(max(export.main(["--run", run_dir, "--format", format, "--out", out_dir]) for format in formats))
"""


@pytest.mark.slow
def test_every_format_exports_and_reloads_with_the_other_onednn_setting(trained_run, tmp_path):
    """TensorFlow's oneDNN path is on by default on some CPUs and off on
    others (AMD EPYC), and it decides which graph rewrites a reloaded
    SavedModel gets: with it off, a grouped convolution followed by a bias add
    was fused into an op with no grouped kernel. The variable is read when
    TensorFlow starts: test_artifact_takes_uint8_images_and_matches_the_trained_model
    exports and reloads every format with this process's setting, and this
    test with the other one, in a process of its own, so both are checked
    on every CPU."""
    formats = installed_formats()
    other = "0" if onednn_is_on() else "1"
    result = subprocess.run(
        [sys.executable, "-c", EXPORT_ALL, str(trained_run[0]), str(tmp_path), *formats],
        env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": other}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == len(formats)
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_mismatching_artifact_fails_loudly(trained_run, tmp_path, monkeypatch, capsys):
    def export_nothing(model, path, *settings):
        return path

    def load_shifted(path, format):  # an artifact whose outputs are off by 1e-3
        _, model = trained_run
        return lambda images: reference_outputs(model, images.astype("float32")) + 1e-3

    monkeypatch.setattr(export, "export_model", export_nothing)
    monkeypatch.setattr(export, "load_artifact", load_shifted)
    assert export_cli.main(["--run", str(trained_run[0]), "--format", "keras", "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "0.001" in error and "do not deploy" in error
    assert error.count("\n") == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--run", "missing-run", "--format", "keras"], "does not exist"),
        (["--weights", "{tmp}/missing.weights.h5", "--format", "keras"], "does not exist"),
        (["--run", "{run}", "--format", "keras", "--out", "{run}/run.json"], "is a file"),
    ],
)
def test_bad_arguments_give_one_line_errors(trained_run, tmp_path, capsys, argv, message):
    run_dir, _ = trained_run
    argv = [arg.format(run=run_dir, tmp=tmp_path) for arg in argv]
    assert export_cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1


def test_missing_extra_is_named_with_the_install_command(trained_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import fails as if not installed
    run_dir, _ = trained_run
    assert export_cli.main(["--run", str(run_dir), "--format", "onnx"]) == 2
    error = capsys.readouterr().err
    assert "tf2onnx" in error and "keras-parnet[export]" in error and error.count("\n") == 1


def test_dynamic_input_size_is_refused(tmp_path):
    from keras_parnet import ParNet

    with pytest.raises(export.ExportError, match="fixed input size"):
        export.export_model(ParNet(TINY_WIDTHS, classes=2), tmp_path / "m.tflite", "tflite")


@pytest.mark.slow
def test_output_in_a_read_only_folder_is_one_line_in_a_real_process(trained_run, read_only_dir):
    result = run_cli("keras_parnet.cli.export", "--run", trained_run[0], "--format", "tflite",
                     "--out", read_only_dir)
    assert_one_line_error(result, str(read_only_dir), "read-only")


@pytest.mark.slow
def test_savedmodel_output_in_a_read_only_folder_is_one_line(trained_run, read_only_dir, capsys):
    result = main_as_process(export_cli.main, capsys, "--run", trained_run[0], "--format", "savedmodel",
                             "--out", read_only_dir)
    assert_one_line_error(result, str(read_only_dir), "read-only")


@pytest.mark.slow
def test_output_on_a_full_disk_is_one_line_and_keeps_the_previous_artifact(trained_run, full_dir, capsys):
    previous = full_dir / "best_fused.tflite"
    previous.write_bytes(b"")  # an empty file still fits on the full disk
    os.truncate(full_dir / "filler", (full_dir / "filler").stat().st_size - 4096)
    previous.write_bytes(b"previous")
    result = main_as_process(export_cli.main, capsys, "--run", trained_run[0], "--format", "tflite", "--out", full_dir)
    assert_one_line_error(result, str(full_dir), "no space left")
    assert previous.read_bytes() == b"previous"
    assert sorted(path.name for path in full_dir.iterdir()) == ["best_fused.tflite", "filler"]


@pytest.mark.parametrize("format, kind", [("savedmodel", "file"), ("tflite", "folder")])
def test_output_path_of_the_wrong_kind_is_refused(trained_run, tmp_path, capsys, format, kind):
    out = tmp_path / export.default_output(runs.BEST_WEIGHTS, format).name
    out.mkdir() if kind == "folder" else out.write_text("keep me")
    assert export_cli.main(["--run", str(trained_run[0]), "--format", format, "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and f"is a {kind}" in error and error.count("\n") == 1
    assert out.is_dir() if kind == "folder" else out.read_text() == "keep me"


def test_failed_export_leaves_the_previous_artifact_whole(trained_run, tmp_path, monkeypatch):
    previous = tmp_path / "best_fused.tflite"
    previous.write_bytes(b"previous")

    def write_half_then_fail(model, path, *settings):
        Path(path).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "_write", write_half_then_fail)
    assert export_cli.main(["--run", str(trained_run[0]), "--format", "tflite", "--out", str(tmp_path)]) == 130
    assert previous.read_bytes() == b"previous"
    assert [path.name for path in tmp_path.iterdir()] == ["best_fused.tflite"]


@pytest.mark.slow
def test_int8_tflite_of_a_dark_bright_classifier_is_reported_and_flips_only_boundary_images(tmp_path):
    """Full-integer int8, calibrated on the run's training images, graded on the
    test split with evaluate.py --artifact. The run's classifier tells dark
    from bright images (`set_known_answer`: set, not trained, since the first
    training step of a model costs 10-15 s of tracing). The bound: int8 moves
    each class probability by at most 0.15 (measured up to 0.12 on the demo
    run), and a test image can only change class where the float model's two
    probabilities are closer than twice the largest move, so the accuracy
    changes by at most the share of such boundary images."""
    from conftest import set_known_answer, write_dark_bright_dataset

    from keras_parnet import evaluate, predict
    from keras_parnet.cli import evaluate as evaluate_cli
    from keras_parnet.data import scan_split

    data = write_dark_bright_dataset(tmp_path / "data", (12, 12), (6, 6))
    run_dir = tmp_path / "logs" / "r"
    config = runs.write_run(run_dir, "ParNet", {"widths": list(TINY_WIDTHS), "small_input": True}, 32,
                            ["dark", "bright"], training={"dataset": str(data)})
    set_known_answer(runs.build_model(config), 40, 210, 0.8)[0].save_weights(run_dir / runs.BEST_WEIGHTS)
    assert export_cli.main(["--run", str(run_dir), "--format", "tflite", "--quantize", "int8",
                            "--calibration-images", "24"]) == 0
    artifact = export.default_output(run_dir / runs.BEST_WEIGHTS, "tflite", "int8")
    assert evaluate_cli.main(["--artifact", str(artifact), "--worst", "0"]) == 0
    report = json.loads((run_dir / evaluate.ARTIFACT_REPORTS / artifact.name / evaluate.REPORT_JSON).read_text())

    model, config = runs.load_run(run_dir)
    paths, labels, _ = scan_split(data / "test", config["class_names"])
    unquantized = evaluate.predict_files(model, paths, config)
    assert np.mean(unquantized.argmax(1) == labels) > 0.5  # the float model does tell dark from bright
    quantized = evaluate.predict_files(predict.artifact_classifier(export.load_artifact(artifact)), paths, config)
    largest_move = np.max(np.abs(quantized - unquantized))
    assert largest_move <= 0.15
    boundary = np.abs(unquantized[:, 0] - unquantized[:, 1]) <= 2 * largest_move
    changed = unquantized.argmax(1) != quantized.argmax(1)
    assert not np.any(changed & ~boundary)
    assert report["samples"] == len(paths) == 12
    assert report["accuracy"] == pytest.approx(np.mean(quantized.argmax(1) == labels))
    assert abs(report["accuracy"] - np.mean(unquantized.argmax(1) == labels)) <= np.mean(boundary)
