"""Fine-tuning from converted weights: partial loading into a new head, a
run folder's architecture and preprocessing, frozen epochs, class weights."""

import json

import h5py
import keras
import numpy as np
import pytest
from conftest import TINY_WIDTHS, infer, interrupt_after, write_dark_bright_dataset

from keras_parnet import ParNet, callbacks, compat, convert, data, runs
from keras_parnet.cli import train as train_cli
from keras_parnet.models import HEAD_LAYER, WeightsMismatchError, load_matching_weights
from keras_parnet.train import balanced_class_weights

IMAGENET_CLASSES = 1000
TINY_ARGS = ["--image-size", "32", "--batch-size", "4", "--seed", "1", "--val-split", "0"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A 1000-class checkpoint of the official network at tiny widths, random
    weights and BatchNorm statistics, converted: `(run folder, the converted
    model)`; the run folder also holds the weights as a legacy `.h5`."""
    pytest.importorskip("torch")
    import torch
    import torch_parnet

    root = tmp_path_factory.mktemp("converted")
    network = torch_parnet.SimpNet(TINY_WIDTHS, additional_branches=[["swish"]], num_classes=IMAGENET_CLASSES)
    torch.save(torch_parnet.randomized(network, 0).state_dict(), root / "tiny.pth")
    model = convert.convert_checkpoint(root / "tiny.pth", "s", TINY_WIDTHS, "relu", IMAGENET_CLASSES)
    run_dir = convert.write_run(root / "run", model, "s", TINY_WIDTHS, "relu", 32,
                                [f"class_{index}" for index in range(IMAGENET_CLASSES)], root / "tiny.pth")
    with h5py.File(run_dir / "legacy.h5", "w") as file:
        compat.save_legacy_h5_weights(model, file)
    return run_dir, model


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


def test_balanced_class_weights_are_sklearns(tmp_path):
    from sklearn.utils.class_weight import compute_class_weight

    dataset = write_dark_bright_dataset(tmp_path / "data", (7, 2), (1, 1))
    paths, labels, class_names = data.scan_split(dataset / "train")
    expected = compute_class_weight("balanced", classes=np.arange(len(class_names)), y=labels)
    weights = balanced_class_weights(paths, class_names)
    assert list(weights) == [0, 1]
    np.testing.assert_allclose([weights[0], weights[1]], expected, rtol=1e-12)


def test_phased_learning_rate():
    schedule = callbacks.phased_learning_rate(callbacks.decayed_learning_rate(1e-3, 0.5),
                                              callbacks.decayed_learning_rate(1e-4, 0.5), 2)
    assert [schedule(epoch) for epoch in range(4)] == [1e-3, 1e-3 * 0.5, 1e-4, 1e-4 * 0.5]


def backbone_and_head(path):
    """`(backbone arrays by layer, head arrays)` of a 2-class tiny run's weights file."""
    model = ParNet(TINY_WIDTHS, classes=2, activation="relu")
    model.load_weights(path)
    return ({layer.name: layer.get_weights() for layer in model.layers if layer.weights and layer.name != HEAD_LAYER},
            model.get_layer(HEAD_LAYER).get_weights())


def same_arrays(first, second):
    return all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.slow
def test_fine_tune_a_converted_run_with_frozen_epochs_across_resume(converted, tmp_path, monkeypatch, capsys):
    """train --weights <converted run> --freeze-epochs 2 --epochs 3, stopped
    after epoch 1 and resumed: the frozen epochs change no backbone weight or
    BatchNorm statistic, the third does; the new run decodes, predicts and
    evaluates with the official preprocessing."""
    start_dir, _ = converted
    dataset = write_dark_bright_dataset(tmp_path / "data", (6, 4), (2, 2))
    crops = []
    make_dataset = data.make_dataset
    monkeypatch.setattr(data, "make_dataset",
                        lambda *a, **k: crops.append(k.get("crop_fraction")) or make_dataset(*a, **k))
    original = callbacks.training_callbacks
    monkeypatch.setattr(callbacks, "training_callbacks", lambda *a, **k: original(*a, **k) + [interrupt_after(1)])
    argv = ["--dataset", str(dataset), "--weights", str(start_dir), "--freeze-epochs", "2", "--epochs", "3",
            "--logs-dir", str(tmp_path / "logs"), "--run-name", "tuned", *TINY_ARGS]
    with pytest.raises(SystemExit):
        train_cli.main(argv)
    monkeypatch.setattr(callbacks, "training_callbacks", original)
    assert train_cli.main(["--resume", str(tmp_path / "logs" / "tuned")]) == 0
    out = capsys.readouterr().out
    assert out.count("re-initialised predictions") == 1  # loaded once; the resume restores its backup
    assert crops == [0.875] * 4  # training and validation data, both sessions

    run_dir = tmp_path / "logs" / "tuned"
    config = json.loads((run_dir / runs.RUN_FILE).read_text())
    assert config["preprocessing"] == convert.OFFICIAL_PREPROCESSING
    assert config["model_kwargs"]["activation"] == "relu"
    assert (config["training"]["freeze_epochs"], config["training"]["fine_tune_lr"]) == (2, 1e-4)
    start_backbone = file_weights(start_dir / runs.BEST_WEIGHTS)
    epochs = callbacks.epoch_checkpoints(run_dir)
    (first, first_head), (second, second_head), (third, _) = (backbone_and_head(epochs[epoch]) for epoch in (1, 2, 3))
    for frozen in (first, second):
        assert all(same_arrays(frozen[name], start_backbone[name]) for name in frozen)
    assert not same_arrays(first_head, second_head)  # the head trains while the backbone is frozen
    changed = [name for name in third if not same_arrays(third[name], second[name])]
    assert "stream1_block1_dense_conv" in changed and "stream1_block1_dense_bn" in changed
    batch_norms = [name for name in third if name.endswith("_bn")]
    assert any(not np.array_equal(third[name][2], second[name][2]) for name in batch_norms)  # moving means

    model, config = runs.load_run(run_dir)
    normalization = model.get_layer("normalization")
    np.testing.assert_allclose(np.ravel(keras.ops.convert_to_numpy(normalization.mean)),
                               convert.OFFICIAL_PREPROCESSING["mean"], rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.ravel(keras.ops.convert_to_numpy(normalization.variance))),
                               convert.OFFICIAL_PREPROCESSING["std"], rtol=1e-6)
    from keras_parnet.evaluate import predict_files

    image = next((dataset / "test" / "dark").iterdir())
    cropped = infer(model, data.load_image(image, 32, 0.875)[None])
    whole = infer(model, data.load_image(image, 32)[None])
    assert not np.allclose(cropped, whole)
    np.testing.assert_allclose(predict_files(model, [str(image)], config), cropped, rtol=1e-5, atol=1e-6)
