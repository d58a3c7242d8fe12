"""The output folder of the tools that write reports (analyze, evaluate): one
that cannot be written (read-only, full, a file in the way) stops the tool
with one line before its slow work, and a disk that fills up part way keeps
what was written before."""

import os
import subprocess

import pytest
from conftest import TINY_WIDTHS, assert_one_line_error, write_dark_bright_dataset

from keras_parnet import analyze, evaluate
from keras_parnet.cli import analyze as analyze_cli
from keras_parnet.cli import evaluate as evaluate_cli

pytestmark = pytest.mark.usefixtures("shallow_module")  # see conftest.SHALLOW_STREAM_DEPTHS


@pytest.fixture
def dataset(tmp_path):
    return write_dark_bright_dataset(tmp_path / "data", (2, 2), (2, 2))


def _analyze_arguments(dataset, weights):
    return ["--dataset", str(dataset)]


def _evaluate_arguments(dataset, weights):
    """A run folder of a tiny ParNet on `dataset`, with random `weights` if
    asked (a tool stopped before loading needs none)."""
    from keras_parnet import ParNet
    from keras_parnet.runs import BEST_WEIGHTS, write_run

    run_dir = dataset.parent / "logs" / "run"
    write_run(run_dir, "ParNet", {"widths": list(TINY_WIDTHS)}, 32, ["bright", "dark"],
              training={"dataset": str(dataset)})
    if weights:
        ParNet(TINY_WIDTHS, input_shape=(32, 32, 3), classes=2).save_weights(run_dir / BEST_WEIGHTS)
    return ["--run", str(run_dir), "--no-fuse", "--worst", "0"]


# tool: (main, arguments(dataset, weights), the slow step that must wait for the check,
#        a file it writes, the first plot it writes)
TOOLS = {
    "analyze": (analyze_cli.main, _analyze_arguments, "keras_parnet.analyze._read_header",
                analyze.ANALYSIS_JSON, analyze.COUNTS_PLOT),
    "evaluate": (evaluate_cli.main, _evaluate_arguments, "keras_parnet.runs.load_run",
                 evaluate.REPORT_JSON, evaluate.CONFUSION_PLOT),
}


def _run(main, argv, capsys):
    """`main(argv)` in this process, as a `CompletedProcess` for `assert_one_line_error`."""
    status = main(argv)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, status, captured.out, captured.err)


def _files(folder):
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("target, problem", [("read_only_dir", "read-only file system"),
                                             ("a_file", "is a file, not a folder"),
                                             ("full_dir", "no space left")])
def test_unwritable_out_is_one_line_before_the_slow_work(tool, target, problem, dataset, tmp_path, request,
                                                         capsys, monkeypatch):
    main, arguments, slow_step, _, _ = TOOLS[tool]
    argv = arguments(dataset, weights=False)
    if target == "a_file":
        out = tmp_path / "a_file"
        out.write_text("kept\n")
    else:
        out = request.getfixturevalue(target)
    before = _files(tmp_path)
    monkeypatch.setattr(slow_step, lambda *args: pytest.fail(f"{slow_step} ran before --out was checked"))
    result = _run(main, [*argv, "--out", str(out)], capsys)
    assert_one_line_error(result, f"--out {out}", problem)
    assert result.stderr.count("\n") == 1, result.stderr
    assert _files(tmp_path) == before


@pytest.mark.slow
@pytest.mark.parametrize("tool", TOOLS)
def test_disk_full_while_writing_keeps_what_was_there(tool, dataset, full_dir, capsys):
    main, arguments, _, report, first_plot = TOOLS[tool]
    argv = arguments(dataset, weights=True)
    # Room for the old report and the write check, not for a plot.
    filler = full_dir / "filler"
    os.truncate(filler, filler.stat().st_size - 8192)
    out = full_dir / "out"
    out.mkdir()
    (out / report).write_text('{"old": true}\n')
    result = _run(main, [*argv, "--out", str(out)], capsys)
    assert_one_line_error(result, "no space left", first_plot, "free some space")
    assert _files(out) == {report: b'{"old": true}\n'}  # no temporary file left either
