"""keras_parnet.convert against a PyTorch copy of the official network
(tests/torch_parnet.py) with random weights and BatchNorm statistics."""

import argparse
import json
import re
import sys

import keras
import numpy as np
import pytest
from conftest import TINY_WIDTHS

from keras_parnet import ParNet, convert, runs
from keras_parnet.cli import convert as convert_cli

CLASSES = 3
TOLERANCE = 1e-4
# Even at every stage (multiples of 32), as the official network needs.
SIZES = [(224, 224), (160, 224)]
OFFICIAL_PREPROCESSING = {
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "crop_fraction": 0.875,
    "interpolation": "bilinear",
}


@pytest.fixture(scope="module")
def torch_parnet():
    pytest.importorskip("torch")
    import torch_parnet

    return torch_parnet


def make_reference(torch_parnet, activation, seed=0):
    # As in the released yaml files, a nested [['swish']] builds ReLU.
    branches = [["swish"]] if activation == "relu" else ["swish"]
    network = torch_parnet.SimpNet(
        TINY_WIDTHS, additional_branches=branches, num_classes=CLASSES
    )
    return torch_parnet.randomized(network, seed)


def torch_logits(reference, images):
    import torch

    with torch.no_grad():
        return reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()


def random_images(size, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (2, *size, 3)).astype("float32")


def keras_outputs(model, images):
    # An eager call: several times faster than tracing `predict` per image size.
    return keras.ops.convert_to_numpy(model(images, training=False))


def softmax(logits):
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def timm_checkpoint(state_dict, ema_state_dict=None):
    """A timm training checkpoint: DataParallel names, argparse options."""
    checkpoint = {
        "epoch": 3,
        "arch": "simplenet_repvgg",
        "args": argparse.Namespace(model="simplenet_repvgg", lr=0.1, planes=[16, 24]),
        "state_dict": {f"module.{name}": value for name, value in state_dict.items()},
        "version": 2,
    }
    if ema_state_dict is not None:
        checkpoint["state_dict_ema"] = dict(ema_state_dict)
    return checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(torch_parnet, tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pth"
    torch.save(make_reference(torch_parnet, "relu").state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("activation, packing", [("relu", "timm"), ("silu", "bare")])
def test_converted_model_matches_pytorch(torch_parnet, tmp_path, activation, packing):
    import torch

    reference = make_reference(torch_parnet, activation)
    state_dict = reference.state_dict()
    path = tmp_path / "parnet.pth.tar"
    torch.save(timm_checkpoint(state_dict) if packing == "timm" else state_dict, path)

    model = convert.convert_checkpoint(
        path, "s", widths=TINY_WIDTHS, activation=activation, classes=CLASSES,
        classifier_activation=None,
    )
    assert model.get_layer("fusion1_dense_conv").groups == 2
    for size in SIZES:
        images = random_images(size)
        expected = torch_logits(reference, images)
        # The logits depend on the image far beyond the tolerance.
        assert np.abs(expected[0] - expected[1]).max() > 100 * TOLERANCE
        np.testing.assert_allclose(
            keras_outputs(model, images), expected, rtol=0, atol=TOLERANCE
        )


def test_ema_weights_on_request(torch_parnet, tmp_path):
    import torch

    plain = make_reference(torch_parnet, "relu", seed=0).state_dict()
    ema = make_reference(torch_parnet, "relu", seed=1).state_dict()
    path = tmp_path / "train.pth.tar"
    torch.save(timm_checkpoint(plain, ema), path)
    name = "streams.2.4.block.rbr_dense.conv.weight"
    np.testing.assert_array_equal(convert.read_checkpoint(path)[name], plain[name].numpy())
    np.testing.assert_array_equal(
        convert.read_checkpoint(path, use_ema=True)[name], ema[name].numpy()
    )

    torch.save(timm_checkpoint(plain), path)
    with pytest.raises(convert.ConversionError, match="no 'state_dict_ema'.*--ema"):
        convert.read_checkpoint(path, use_ema=True)


@pytest.mark.slow
def test_cli_writes_weights_and_run_folder(torch_parnet, tiny_checkpoint, tmp_path):
    reference = make_reference(torch_parnet, "relu")
    names = tmp_path / "names.txt"
    names.write_text("tench\ngoldfish\n\ngreat white shark\n")
    run_dir = tmp_path / "run"
    out = run_dir / runs.BEST_WEIGHTS
    argv = [str(tiny_checkpoint), "--model", "s", "--widths", *map(str, TINY_WIDTHS),
            "--classes", str(CLASSES), "--out", str(run_dir), "--class-names", str(names)]
    assert convert_cli.main(argv) == 0

    config = json.loads((run_dir / "run.json").read_text())
    assert config["preprocessing"] == OFFICIAL_PREPROCESSING
    assert config["image_size"] == [224, 224]
    assert config["class_names"] == ["tench", "goldfish", "great white shark"]
    assert config["model"] == "ParNet"
    assert config["model_kwargs"] == {
        "widths": list(TINY_WIDTHS), "dropout": 0.0, "activation": "relu"
    }

    images = random_images((224, 224))
    expected = softmax(torch_logits(reference, images))
    from_run, _ = runs.load_run(run_dir, include_preprocessing=False)  # the bare network, as torch runs it
    from_file = ParNet(TINY_WIDTHS, activation="relu", classes=CLASSES, weights=out)
    for model in (from_run, from_file):
        np.testing.assert_allclose(keras_outputs(model, images), expected, atol=TOLERANCE)


@pytest.mark.parametrize(
    "extra_argv, message",
    [
        (["--model", "m"],
         r"widths \(16, 24, 32, 48\), not \(128, 256, 512, 2048\) \(model 'm'\): "
         r"convert it with widths=\(16, 24, 32, 48\) \(--widths 16 24 32 48\)"),
        (["--model", "s", "--widths", *map(str, TINY_WIDTHS)],
         r"3 classes, not 1000: .*\(--classes 3\)"),
        (["--model", "s", "--widths", *map(str, TINY_WIDTHS), "--classes", "3",
          "--class-names", "{tmp}/two_names.txt"],
         r"lists 2 class names but the model has 3 classes"),
    ],
    ids=["wrong-model", "wrong-classes", "wrong-class-names"],
)
def test_cli_errors_name_the_fix(tiny_checkpoint, tmp_path, capsys, extra_argv, message):
    (tmp_path / "two_names.txt").write_text("cat\ndog\n")
    argv = [str(tiny_checkpoint), "--out", str(tmp_path / "run")]
    argv += [arg.format(tmp=tmp_path) for arg in extra_argv]
    assert convert_cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert not list(tmp_path.glob("**/*.h5"))
    assert re.search(message, error), error


def test_checkpoint_of_a_released_configuration_names_its_model(torch_parnet, tmp_path):
    import torch

    widths = convert.OFFICIAL_CONFIGS["s"]["widths"]
    path = tmp_path / "parnet_s.pth"
    # Only the tensors that tell the widths: the layout check comes first.
    torch.save(
        {name: torch.zeros(width, 1, 1, 1)
         for name, width in zip(convert.WIDTH_TENSORS, widths)},
        path,
    )
    with pytest.raises(convert.ConversionError, match=r"convert it with model 's' \(--model s\)"):
        convert.convert_checkpoint(path, "m")
    with pytest.raises(convert.ConversionError, match="unknown model 'q': expected one of s, m, l"):
        convert.convert_checkpoint(path, "q")


@pytest.fixture(scope="module")
def tiny_state_dict(torch_parnet):
    reference = make_reference(torch_parnet, "relu")
    return {name: value.numpy() for name, value in reference.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_keras():
    return convert.build_official("s", TINY_WIDTHS, "relu", CLASSES)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"streams.1.2.block.se.cvsig.conv.weight": None},
         r"1 Keras weights missing from the checkpoint: stream2_block3_se_conv/kernel$"),
        ({"streams.0.0.block.rbr_extra.conv.weight": np.zeros((16, 16, 1, 1))},
         r"1 unexpected checkpoint tensors: streams.0.0.block.rbr_extra.conv.weight$"),
        # downsample3 changes width: it has no identity branch.
        ({"inits.1.block.rbr_identity.weight": np.ones(16)},
         r"1 unexpected checkpoint tensors: inits.1.block.rbr_identity.weight$"),
        ({"head.fc.weight": np.zeros((7, 48))},
         r"1 shape mismatches \(Keras layout\): head.fc.weight \(48, 7\) vs "
         r"predictions/kernel \(48, 3\)$"),
    ],
    ids=["missing", "unexpected", "absent-branch", "shape"],
)
def test_mismatched_state_dict_is_listed_and_not_loaded(tiny_state_dict, tiny_keras, edit,
                                                        message):
    state_dict = dict(tiny_state_dict)
    for name, value in edit.items():
        if value is None:
            del state_dict[name]
        else:
            state_dict[name] = value
    before = [weight.copy() for weight in tiny_keras.get_weights()]
    with pytest.raises(ValueError, match=r"checkpoint does not fit model 'parnet_s': " + message):
        convert.load_state_dict(tiny_keras, state_dict)
    for old, new in zip(before, tiny_keras.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_unreadable_checkpoint(torch_parnet, tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(convert.ZIP_MAGIC + b"a zip archive cut short")
    with pytest.raises(convert.ConversionError, match="cannot read .*broken.pth as a PyTorch"):
        convert.read_checkpoint(path)


@pytest.mark.parametrize("kind, problem", [("text", "is not a PyTorch checkpoint (neither a zip nor a pickle"),
                                           ("folder", "is a folder"),
                                           ("missing", "does not exist")])
def test_not_a_checkpoint_is_one_line_naming_the_file(torch_parnet, tmp_path, capsys, kind, problem):
    path = tmp_path / "notes.txt"
    if kind == "text":
        path.write_text("planes: [92, 192, 384, 1280]\n")
    elif kind == "folder":
        path.mkdir()
    out = tmp_path / "run"
    assert convert_cli.main([str(path), "--model", "s", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    error = captured.err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and str(path) in error[0], error
    assert problem in error[0]
    assert "pass an official PyTorch checkpoint (.pth/.pth.tar): a file written by torch.save" in error[0]
    assert not out.exists()


@pytest.mark.slow
def test_read_only_out_is_one_line(tiny_checkpoint, read_only_dir, capsys):
    out = read_only_dir / "run"
    argv = [str(tiny_checkpoint), "--model", "s", "--widths", *map(str, TINY_WIDTHS),
            "--classes", str(CLASSES), "--out", str(out)]
    assert convert_cli.main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert captured.err.startswith(f"error: the run folder {out}: ") and captured.err.count("\n") == 1
    assert "read-only file system; choose a writable folder" in captured.err


def test_missing_torch_gets_install_hint(tmp_path, monkeypatch, capsys):
    path = tmp_path / "parnet.pth"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install keras-parnet\[convert\]"):
        convert.read_checkpoint(path)
    assert convert_cli.main([str(path), "--model", "s", "--out", str(tmp_path / "run")]) == 2
    assert "error: converting PyTorch checkpoints needs torch" in capsys.readouterr().err
