import json
import os
import time

import numpy as np
import pytest
from conftest import TINY_WIDTHS, infer

from keras_parnet import runs

pytestmark = pytest.mark.usefixtures("shallow_module")  # see conftest.SHALLOW_STREAM_DEPTHS

CLASSES = ["zebra", "ant", "moth"]


def write_tiny_run(run_dir, classes=CLASSES):
    return runs.write_run(run_dir, "ParNet", {"widths": list(TINY_WIDTHS)}, 32, classes)


def test_write_and_read_roundtrip(tmp_path):
    written = write_tiny_run(tmp_path / "run")
    read = runs.read_run(tmp_path / "run")
    assert read["class_names"] == CLASSES  # label order kept, not sorted
    assert read["image_size"] == [32, 32]
    assert read["preprocessing"] == {"rescale": 1 / 255}
    assert written["versions"]["keras_parnet"]
    assert not (tmp_path / "run" / ".run.json.tmp").exists()


@pytest.mark.slow
def test_build_and_load_run_reproduce_weights(tmp_path):
    run_dir = tmp_path / "run"
    config = write_tiny_run(run_dir)
    model = runs.build_model(config)
    assert model.output_shape == (None, 3)
    assert model.input_shape == (None, 32, 32, 3)
    model.save_weights(run_dir / runs.BEST_WEIGHTS)
    loaded, loaded_config = runs.load_run(run_dir)
    inputs = np.random.rand(2, 32, 32, 3).astype("float32")
    np.testing.assert_allclose(infer(loaded, inputs), infer(model, inputs), atol=1e-6)
    assert loaded_config["weights"] == str(run_dir / runs.BEST_WEIGHTS)


def test_newest_run_is_found(tmp_path):
    for index, name in enumerate(["b-old", "a-new"]):
        write_tiny_run(tmp_path / name)
        os.utime(tmp_path / name / runs.RUN_FILE, (time.time() + index, time.time() + index))
    assert runs.find_latest_run(tmp_path).name == "a-new"


@pytest.mark.slow
def test_class_count_mismatch_is_reported(tmp_path):
    run_dir = tmp_path / "run"
    config = write_tiny_run(run_dir)
    runs.build_model(config).save_weights(run_dir / runs.BEST_WEIGHTS)
    write_tiny_run(run_dir, classes=CLASSES + ["extra"])
    with pytest.raises(runs.RunError, match="class list names 4 classes"):
        runs.load_run(run_dir)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "no run found in"),
        (lambda d: write_tiny_run(d / "r"), "has not finished an epoch"),
        (lambda d: (d / "r").mkdir() or (d / "r" / "run.json").write_text("{"), "is not valid JSON"),
        (lambda d: (d / "r").mkdir() or (d / "r" / "run.json").write_text(json.dumps({"model": "x"})), "lacks"),
    ],
)
def test_broken_runs_give_clear_errors(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(runs.RunError, match=message):
        runs.load_run(tmp_path / "r" if (tmp_path / "r").exists() else None, logs_dir=tmp_path)
