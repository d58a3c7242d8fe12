"""Old spellings of predict, evaluate and analyze keep working for one
release: each prints exactly one deprecation line and behaves as the new flag.
Cheap paths only: what the flag parses to, and errors met before any model
is built."""

import pytest

from keras_parnet.cli import analyze as analyze_cli
from keras_parnet.cli import evaluate as evaluate_cli
from keras_parnet.cli import predict as predict_cli


def deprecation(old, new):
    return f"warning: {old} is deprecated and will be removed in the next release; use {new}"


def _lines(text):
    return text.splitlines()


@pytest.mark.parametrize("old, new, dest", [("--classes", "--class-names", "class_names"),
                                            ("--save-plots", "--out", "out")])
def test_predict_old_flag_parses_as_the_new_one(old, new, dest, capsys):
    parser = predict_cli.build_parser()
    with_old = parser.parse_args([old, "some/path", "a.jpg"])
    assert _lines(capsys.readouterr().err) == [deprecation(old, new)]
    with_new = parser.parse_args([new, "some/path", "a.jpg"])
    assert capsys.readouterr().err == ""
    assert getattr(with_old, dest) == "some/path" and vars(with_old) == vars(with_new)


def test_predict_save_plots_onto_a_file_is_the_out_error(tmp_path, capsys):
    in_the_way = tmp_path / "plots"
    in_the_way.write_text("kept\n")
    code = predict_cli.main(["a.jpg", "--save-plots", str(in_the_way), "--logs-dir", str(tmp_path)])
    assert code == 2
    assert _lines(capsys.readouterr().err) == [
        deprecation("--save-plots", "--out"),
        f"error: --out {in_the_way} is a file, not a folder: pass a folder."]


def test_predict_classes_reads_the_class_names_file(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n")
    code = predict_cli.main(["a.jpg", "--classes", str(tmp_path / "empty.txt"), "--logs-dir", str(tmp_path)])
    assert code == 2
    err = _lines(capsys.readouterr().err)
    assert err[0] == deprecation("--classes", "--class-names")
    assert len(err) == 2 and err[1].startswith("error: ") and "lists no class names" in err[1]


def test_evaluate_positional_run_dir_is_run(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert evaluate_cli.main([str(missing)]) == 2
    old = _lines(capsys.readouterr().err)
    assert evaluate_cli.main(["--run", str(missing)]) == 2
    new = _lines(capsys.readouterr().err)
    assert old == [deprecation("the positional RUN_DIR", "--run RUN_DIR"), *new]
    assert len(new) == 1 and "does not exist: pass a run folder" in new[0]


def test_evaluate_positional_weights_file_is_weights(tmp_path, capsys):
    weights = tmp_path / "alone.weights.h5"
    weights.write_bytes(b"")
    assert evaluate_cli.main([str(weights)]) == 2
    old = _lines(capsys.readouterr().err)
    assert evaluate_cli.main(["--weights", str(weights)]) == 2
    new = _lines(capsys.readouterr().err)
    assert old == [deprecation("the positional RUN_DIR", "--weights FILE"), *new]
    assert len(new) == 1 and f"{tmp_path / 'run.json'} not found" in new[0]

    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main([str(weights), "--weights", str(weights)])
    assert exit_info.value.code == 2
    assert "pass only --weights" in capsys.readouterr().err


def test_analyze_positional_dataset_is_dataset(tmp_path, capsys):
    missing = tmp_path / "missing"
    out = ["--out", str(tmp_path / "out")]
    assert analyze_cli.main([str(missing), *out]) == 2
    old = _lines(capsys.readouterr().err)
    assert analyze_cli.main(["--dataset", str(missing), *out]) == 2
    new = _lines(capsys.readouterr().err)
    assert old == [deprecation("the positional DATASET", "--dataset DIR"), *new]
    assert len(new) == 1 and new[0].startswith("error: ") and str(missing) in new[0]


def test_python_m_keras_parnet_analyze_still_runs():
    """A real process: the module's old entry point says what replaces it and runs the tool."""
    from conftest import run_cli

    result = run_cli("keras_parnet.analyze", "--help")
    assert result.returncode == 0 and "--dataset DIR" in result.stdout and "--imbalance" in result.stdout
    assert _lines(result.stderr) == [deprecation("python -m keras_parnet.analyze", "parnet-analyze")]
