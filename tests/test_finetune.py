"""Fine-tuning from converted weights (conftest's `converted`): partial
loading into a new head, a run folder's architecture, the phased learning
rate, class weights. Training from converted weights with frozen epochs
across a resume is checked on test_train's end-to-end run."""

import keras
import numpy as np
import pytest
from conftest import TINY_WIDTHS, infer, write_dark_bright_dataset

from keras_parnet import ParNet, callbacks, data, runs
from keras_parnet.cli import train as train_cli
from keras_parnet.models import HEAD_LAYER, WeightsMismatchError, load_matching_weights
from keras_parnet.train import balanced_class_weights

IMAGENET_CLASSES = 1000
pytestmark = pytest.mark.usefixtures("shallow_module")  # see conftest.SHALLOW_STREAM_DEPTHS

TINY_ARGS = ["--image-size", "32", "--batch-size", "4", "--seed", "1", "--val-split", "0"]


def file_weights(path):
    """`{layer name: arrays}` of a 1000-class tiny weights file, read by Keras'
    own strict loader into a fresh model."""
    reference = ParNet(TINY_WIDTHS, classes=IMAGENET_CLASSES, activation="relu")
    reference.load_weights(path)
    return {layer.name: layer.get_weights() for layer in reference.layers if layer.weights}


def assert_backbone_equal(model, weights):
    for layer in model.layers:
        if layer.weights and layer.name != HEAD_LAYER:
            for mine, theirs in zip(layer.get_weights(), weights[layer.name], strict=True):
                np.testing.assert_array_equal(mine, theirs, err_msg=layer.name)


@pytest.mark.slow
@pytest.mark.parametrize("file_name", [runs.BEST_WEIGHTS, "legacy.h5"])
def test_imagenet_file_loads_into_a_two_class_model_with_a_new_head(converted, file_name):
    run_dir, _ = converted
    path = run_dir / file_name
    model = ParNet(TINY_WIDTHS, classes=2, activation="relu")
    fresh_head = [array.copy() for array in model.get_layer(HEAD_LAYER).get_weights()]
    report = load_matching_weights(model, path)
    assert_backbone_equal(model, file_weights(run_dir / runs.BEST_WEIGHTS))
    for kept, initial in zip(model.get_layer(HEAD_LAYER).get_weights(), fresh_head, strict=True):
        np.testing.assert_array_equal(kept, initial)
    head_shapes = [(TINY_WIDTHS[3], 2), (2,)]
    assert report.reinitialised == {HEAD_LAYER: (head_shapes, [(TINY_WIDTHS[3], IMAGENET_CLASSES),
                                                               (IMAGENET_CLASSES,)])}
    assert report.total == len(model.weights) and report.loaded == report.total - 2
    assert report.summary() == (f"loaded {report.loaded} of {report.total} weight tensors from {path}; "
                                "re-initialised predictions (48x2 + 2 instead of the file's 48x1000 + 1000)")


@pytest.mark.slow
def test_builder_skip_mismatch_and_the_applications_pattern(converted):
    run_dir, _ = converted
    path = run_dir / runs.BEST_WEIGHTS
    expected = file_weights(path)
    two_classes = ParNet(TINY_WIDTHS, classes=2, activation="relu", weights=path, skip_mismatch=True)
    assert_backbone_equal(two_classes, expected)
    with pytest.raises(ValueError, match="does not fit model"):  # without skip_mismatch the file must fit
        ParNet(TINY_WIDTHS, classes=2, activation="relu", weights=path)
    backbone = ParNet(TINY_WIDTHS, include_top=False, pooling="avg", activation="relu", weights=path)
    assert_backbone_equal(backbone, expected)
    outputs = keras.layers.Dense(2, activation="softmax")(backbone.output)
    classifier = keras.Model(backbone.input, outputs)
    assert infer(classifier, np.zeros((1, 32, 32, 3))).shape == (1, 2)


def test_weights_of_another_architecture_name_both(converted):
    path = converted[0] / runs.BEST_WEIGHTS
    model = ParNet((16, 24, 40, 48), classes=2)
    before = [array.copy() for array in model.get_weights()]
    with pytest.raises(WeightsMismatchError) as error:
        load_matching_weights(model, path)
    message = str(error.value)
    assert "widths (16, 24, 32, 48), not the model's (widths (16, 24, 40, 48))" in message
    assert "--widths 16 24 32 48" in message
    for array, initial in zip(model.get_weights(), before, strict=True):  # nothing loaded
        np.testing.assert_array_equal(array, initial)


def test_run_folder_architecture_conflicts_with_flags(converted, tmp_path):
    dataset = write_dark_bright_dataset(tmp_path / "data", (2, 2), (1, 1))
    result_args = ["--dataset", str(dataset), "--weights", str(converted[0]), "--activation", "silu", *TINY_ARGS]
    args = train_cli.build_parser().parse_args(result_args)
    with pytest.raises(ValueError, match="holds a model of --activation relu, not --activation silu: drop "
                                         "--activation"):
        train_cli.resolve_settings(args)
    settings, _ = train_cli.resolve_settings(train_cli.build_parser().parse_args(result_args[:4] + TINY_ARGS))
    assert (settings["widths"], settings["activation"], settings["small_input"]) == (list(TINY_WIDTHS), "relu",
                                                                                      False)


def test_balanced_class_weights_weigh_every_class_alike_and_keep_the_sample_count(tmp_path):
    # What defines scikit-learn's "balanced" weights (its formula is the library's).
    dataset = write_dark_bright_dataset(tmp_path / "data", (7, 2), (1, 1))
    paths, labels, class_names = data.scan_split(dataset / "train")
    weights = balanced_class_weights(paths, class_names)
    assert list(weights) == [0, 1]
    per_class = [weights[label] * np.count_nonzero(np.asarray(labels) == label) for label in weights]
    assert per_class[0] == pytest.approx(per_class[1], rel=1e-12)
    assert sum(weights[label] for label in labels) == pytest.approx(len(labels), rel=1e-12)


def test_phased_learning_rate():
    schedule = callbacks.phased_learning_rate(callbacks.decayed_learning_rate(1e-3, 0.5),
                                              callbacks.decayed_learning_rate(1e-4, 0.5), 2)
    assert [schedule(epoch) for epoch in range(4)] == [1e-3, 1e-3 * 0.5, 1e-4, 1e-4 * 0.5]
