"""The command lines keep one convention (the README's "Command lines"):
shared flags with the same names, metavars, types and meaning in every tool;
`--help` and flag errors answer fast without TensorFlow; importing the
package changes nothing; the old spellings still work, each saying so once."""

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keras_parnet.cli import _common

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("train", "predict", "evaluate", "export", "convert", "analyze")
DEPRECATION = re.compile(r"^warning: .+ is deprecated and will be removed in the next release; use .+$")

# The convention, written out here (not read from _common): flag -> its
# metavar, type, nargs, the words its help must use, and the tools that
# must have it. `None` as type: a string; "store_true": a switch.
CONVENTION = {
    "--run": ("RUN_DIR", None, None, ["run folder"], {"predict", "evaluate", "export"}),
    "--logs-dir": ("DIR", None, None, ["folder holding run folders"], {"train", "predict", "evaluate", "export"}),
    "--weights": ("FILE", None, None, ["weights"], {"train", "predict", "evaluate", "export"}),
    "--dataset": ("DIR", None, None, ["dataset folder"], {"train", "evaluate", "export", "analyze"}),
    "--out": ("DIR", None, None, ["write"], {"predict", "evaluate", "export", "convert", "analyze"}),
    "--image-size": ("PX", _common.positive_int, None, ["square"], {"train", "predict", "convert"}),
    "--batch-size": ("N", _common.positive_int, None, ["images per"], {"train", "evaluate", "predict"}),
    "--top-k": ("K", _common.positive_int, None, ["default 5"], {"predict", "evaluate"}),
    "--model": (None, None, None, ["ParNet size"], {"train", "predict", "convert"}),
    "--widths": (("W0", "W1", "W2", "W3"), _common.positive_int, 4, ["widths"], {"train", "predict", "convert"}),
    "--small-input": (None, "store_true", None, ["stem without stride"], {"train", "predict"}),
    "--class-names": ("FILE", None, None, ["one per line", "label order"], {"predict", "convert"}),
    "--classes": ("N", _common.positive_int, None, ["classifier outputs"], {"convert"}),
    "--no-fuse": (None, "store_true", None, ["fused", "instead of"], {"predict", "evaluate"}),
    "--artifact": ("PATH", None, None, ["artifact", "instead of the run's"], {"predict", "evaluate"}),
    "--seed": ("N", _common.non_negative_int, None, ["seed"], {"train"}),
    "--activation": (None, None, None, ["activation"], {"train", "convert"}),
}
# Other spellings of the run, the dataset and the output: hidden (deprecated) at most.
OTHER_SPELLINGS = {"--run-dir", "--save-plots", "--batch", "--output", "--output-dir", "--out-dir", "--data",
                   "--data-dir", "--log-dir", "--logdir", "--runs-dir", "--plots-dir"}
POSITIONAL_SPELLINGS = {"RUN_DIR", "WEIGHTS", "DATASET", "DIR"}


def build_parsers():
    """Each tool's parser, built in-process by its own `build_parser()`."""
    return {tool: importlib.import_module(f"keras_parnet.cli.{tool}").build_parser() for tool in TOOLS}


@pytest.fixture(scope="module")
def parsers():
    return build_parsers()


def visible_actions(parser):
    return [action for action in parser._actions if action.help is not argparse.SUPPRESS]


def option(parser, flag):
    """The visible action of `flag`, or `None`."""
    for action in visible_actions(parser):
        if flag in action.option_strings:
            return action
    return None


@pytest.mark.parametrize("flag", CONVENTION)
def test_shared_flags_are_one_flag_in_every_tool(parsers, flag):
    metavar, kind, nargs, words, required_in = CONVENTION[flag]
    found = {tool: option(parser, flag) for tool, parser in parsers.items()}
    missing = sorted(tool for tool in required_in if found[tool] is None)
    assert not missing, f"{flag} is missing from {missing}"
    for tool, action in found.items():
        if action is None:
            continue
        where = f"{flag} in {tool}"
        assert action.option_strings == [flag], where  # no second spelling shown
        assert action.metavar == metavar, where
        if kind == "store_true":
            assert isinstance(action, argparse._StoreTrueAction), where
        else:
            assert action.type is kind, where
            assert action.nargs == nargs, where
        if flag == "--model":
            assert list(action.choices) == ["s", "m", "l", "xl"], where
        if flag == "--activation":
            assert list(action.choices) == ["silu", "relu"], where
        for word in words:
            assert word in " ".join(action.help.split()), (where, word, action.help)
        if flag == "--logs-dir":
            assert action.default == "logs", where
        if flag == "--top-k":
            assert action.default == 5, where


def test_help_shows_each_shared_flag_with_its_metavar_and_the_command(parsers):
    for tool, parser in parsers.items():
        text = " ".join(parser.format_help().split())
        assert text.startswith(f"usage: {_common.command(tool)} "), (tool, text[:80])
        for flag, (metavar, *_rest) in CONVENTION.items():
            if option(parser, flag) is None:
                continue
            shown = flag if metavar is None else " ".join([flag, *(metavar if isinstance(metavar, tuple) else
                                                                   [metavar])])
            assert f"[{shown}]" in text or f" {shown} " in text, (tool, shown)


def test_no_tool_spells_run_dataset_or_output_another_way(parsers):
    for tool, parser in parsers.items():
        for action in visible_actions(parser):
            assert not OTHER_SPELLINGS & set(action.option_strings), (tool, action.option_strings)
            if not action.option_strings:  # a visible positional
                assert action.metavar not in POSITIONAL_SPELLINGS and action.dest.upper() not in \
                    POSITIONAL_SPELLINGS, (tool, action.dest)
            if action.metavar == "RUN_DIR":
                assert action.option_strings in (["--run"], ["--resume"]), (tool, action.option_strings)
        if tool != "convert":
            assert option(parser, "--classes") is None, f"{tool}: --classes is convert's class count"


def test_model_sizes_are_the_builders():
    from keras_parnet.models import BUILDERS

    assert _common.MODEL_SIZES == tuple(BUILDERS)


@pytest.mark.parametrize("command, expected", [
    (["/venv/bin/parnet-train"], "parnet-train"),
    ([str(ROOT / "train.py")], f"python {ROOT / 'train.py'}"),
    ([str(ROOT / "keras_parnet" / "cli" / "train.py")], "python -m keras_parnet.cli.train"),
    ([""], "parnet-train"),
])
def test_prog_is_the_command_as_started(monkeypatch, command, expected):
    monkeypatch.setattr(sys, "argv", command)
    assert _common.command("train") == expected
    assert importlib.import_module("keras_parnet.cli.train").build_parser().prog == expected


def test_other_tools_are_named_the_way_this_one_was_started(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(ROOT / "train.py")])
    assert _common.command("evaluate") == f"python {ROOT / 'evaluate.py'}"
    monkeypatch.setattr(sys, "argv", [str(ROOT / "keras_parnet" / "cli" / "export.py")])
    assert _common.command("evaluate") == "parnet-evaluate"  # not `python -m ...cli.export`


@pytest.mark.parametrize("value, kind, accepted", [
    ("3", _common.positive_int, 3), ("0", _common.positive_int, None), ("2.5", _common.positive_int, None),
    ("0", _common.non_negative_int, 0), ("-1", _common.non_negative_int, None),
    ("1e-3", _common.positive_float, 1e-3), ("nan", _common.positive_float, None),
    ("inf", _common.positive_float, None), ("0", _common.positive_float, None),
    ("1", _common.fraction, 1.0), ("1.5", _common.fraction, None), ("x", _common.fraction, None),
])
def test_shared_types_accept_or_refuse_in_one_line(value, kind, accepted):
    if accepted is not None:
        assert kind(value) == accepted
        return
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        kind(value)
    assert value in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("text, count, expected", [
    ("cat\n\ndog\n  owl  \n", None, ["cat", "dog", "owl"]),
    ("cat\ndog\n", 2, ["cat", "dog"]),
    ("cat\ndog\n", 3, "lists 2 class names but the model has 3 classes"),
    ("cat\ndog\ncat\n", None, "'cat' more than once"),
    ("\n \n", None, "lists no class names"),
])
def test_class_names_file_has_one_contract(tmp_path, text, count, expected):
    path = tmp_path / "names.txt"
    path.write_text(text)
    if isinstance(expected, list):
        assert _common.read_class_names(path, count) == expected
        return
    with pytest.raises(ValueError, match=re.escape(expected)):
        _common.read_class_names(path, count)


def test_missing_class_names_file_is_one_line(tmp_path):
    with pytest.raises(_common.ClassNamesError, match=f"cannot read class names from {tmp_path / 'no.txt'}"):
        _common.read_class_names(tmp_path / "no.txt")


def run_python(*args, cwd=ROOT):
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=120,
                            env={key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"})
    return result, time.perf_counter() - start


# Runs a root script in this process and reports whether TensorFlow or Keras got imported.
RUN_SCRIPT = """
import json, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "heavy": sorted({"tensorflow", "keras"} & set(sys.modules))}))
"""


@pytest.mark.parametrize("argv, code", [(["train.py", "--help"], 0), (["train.py", "--lr", "-1"], 2)])
def test_help_and_flag_errors_answer_fast_without_tensorflow(argv, code):
    run_python(*argv)  # warm-up: file caches, .pyc files
    result, seconds = run_python(*argv)
    assert result.returncode == code, result.stderr
    assert seconds < 1.5, f"{' '.join(argv)} took {seconds:.2f} s"
    if code == 0:
        assert result.stderr == "" and "--batch-size N" in result.stdout
    else:
        assert result.stderr.splitlines() == ["error: argument --lr: -1 is not a positive number "
                                              "(see python train.py --help)"]
    checked, _ = run_python("-c", RUN_SCRIPT, *argv)
    assert json.loads(checked.stdout.splitlines()[-1]) == {"code": code, "heavy": []}


def test_importing_the_package_sets_nothing_and_loads_no_framework():
    probe = ("import json, os, sys; before = dict(os.environ); import keras_parnet; "
             "print(json.dumps({'changed': sorted(set(os.environ.items()) ^ set(before.items())), "
             "'heavy': sorted({'tensorflow', 'keras'} & set(sys.modules)), 'names': dir(keras_parnet)}))")
    result, _ = run_python("-c", probe, cwd=ROOT.parent)
    report = json.loads(result.stdout)
    assert report["changed"] == [] and report["heavy"] == []
    assert {"parnet_s", "ParNet", "load_run", "reparameterize", "__version__"} <= set(report["names"])


def test_every_public_name_resolves():
    import keras_parnet

    for name in keras_parnet.__all__:
        assert getattr(keras_parnet, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        keras_parnet.missing  # noqa: B018


def deprecation_lines(text):
    return [line for line in text.splitlines() if DEPRECATION.match(line)]


def test_train_batch_is_batch_size(capsys):
    from keras_parnet.cli import train

    args = train.build_parser().parse_args(["--batch", "3"])
    assert args.batch_size == 3
    assert deprecation_lines(capsys.readouterr().err) == [
        "warning: --batch is deprecated and will be removed in the next release; use --batch-size"]
    assert "--batch " not in train.build_parser().format_help()


@pytest.mark.parametrize("kind, new, problem", [("folder", "--run RUN_DIR", "run.json"),
                                                ("file", "--weights FILE", "does not exist")])
def test_export_positional_weights_is_run_or_weights(tmp_path, capsys, kind, new, problem):
    from keras_parnet.cli import export

    path = tmp_path if kind == "folder" else tmp_path / "missing.weights.h5"
    assert export.main([str(path), "--format", "keras"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert deprecation_lines("\n".join(err)) == [
        f"warning: the positional WEIGHTS is deprecated and will be removed in the next release; use {new}"]
    assert err[-1].startswith("error: ") and problem in err[-1] and len(err) == 2, err


def test_export_out_file_still_names_the_file(tmp_path, capsys):
    from keras_parnet.cli import export

    assert export.main(["--run", str(tmp_path), "--format", "tflite", "--out", str(tmp_path / "m.tflite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert deprecation_lines("\n".join(err)) == [
        "warning: --out FILE is deprecated and will be removed in the next release; use --out DIR"]
    assert len(err) == 2 and err[-1].startswith("error: "), err


@pytest.mark.parametrize("flags, old", [(["--run-dir", "{tmp}/run"], "--run-dir"),
                                        (["--out", "{tmp}/w.weights.h5"], "--out FILE.weights.h5")])
def test_convert_old_outputs_still_work(tmp_path, capsys, flags, old):
    from keras_parnet.cli import convert

    argv = [str(tmp_path / "missing.pth"), "--model", "s", *(flag.format(tmp=tmp_path) for flag in flags)]
    assert convert.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    (line,) = deprecation_lines("\n".join(err))
    assert line.startswith(f"warning: {old} is deprecated") and "use --out" in line
    assert len(err) == 2 and err[-1].startswith("error: checkpoint ") and "does not exist" in err[-1], err


def test_convert_needs_somewhere_to_write(capsys):
    from keras_parnet.cli import convert

    with pytest.raises(SystemExit) as stop:
        convert.main(["x.pth", "--model", "s"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: nothing to write: pass --out DIR")


@pytest.mark.parametrize("tool, flag", [("export", "--format"), ("convert", "--class-names")])
def test_python_m_still_works_and_says_what_replaces_it(tool, flag):
    result, _ = run_python("-m", f"keras_parnet.{tool}", "--help")
    assert result.returncode == 0 and flag in result.stdout
    assert result.stderr.splitlines() == [
        f"warning: python -m keras_parnet.{tool} is deprecated and will be removed in the next release; "
        f"use parnet-{tool}"]
