import os
import subprocess
import sys

import pytest

from keras_seqnorm import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# As a user's shell: TensorFlow, once imported here, sets
# TF_CPP_MIN_LOG_LEVEL for the processes this one starts.
ENV = {
    **{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    "PYTHONPATH": ROOT,
}


def test_usage_lists_every_command(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"  {name} " in out
    assert cli.BACKEND_LOGS in out


def test_unknown_command_exits_2(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def _imported_modules(argv):
    """Runs `python -X importtime ARGV` and returns its exit status, its
    stdout and the top-level packages it imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], capture_output=True,
        text=True, timeout=300, env=ENV, cwd=ROOT,
    )
    modules = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return result.returncode, result.stdout, modules


# `bench`'s parser lives with the benchmark, which imports Keras.
@pytest.mark.parametrize(
    "argv", [[]] + [[name] for name in sorted(cli.COMMANDS) if name != "bench"]
)
def test_help_imports_no_keras_nor_backend(argv, tmp_path):
    # Both routes: `python -m keras_seqnorm` and the console script.
    script = tmp_path / "keras-seqnorm"
    script.write_text(
        "import sys\nfrom keras_seqnorm.cli import main\nsys.exit(main())\n"
    )
    for route in (["-m", "keras_seqnorm"], [str(script)]):
        status, out, modules = _imported_modules([*route, *argv, "--help"])
        assert status == 0
        assert "usage:" in out
        assert "keras_seqnorm" in modules
        assert not modules & {"keras", "tensorflow", "jax", "torch",
                              "matplotlib"}, sorted(modules)


def test_python_dash_m_is_the_one_module_route():
    status, out, _ = _imported_modules(["-m", "keras_seqnorm", "train",
                                        "--help"])
    assert status == 0 and "keras-seqnorm train" in out
    for module in ("keras_seqnorm.train", "keras_seqnorm.training.train",
                   "keras_seqnorm.analysis.compare"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True,
            text=True, timeout=300, env=ENV, cwd=ROOT,
        )
        assert result.returncode != 0
        assert "No module named" in result.stderr
    # The command modules run nothing as scripts.
    for module in ("keras_seqnorm.cli", "keras_seqnorm.training.trainer"):
        result = subprocess.run(
            [sys.executable, "-m", module, "train", "--help"],
            capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT,
        )
        assert result.returncode == 0 and "usage:" not in result.stdout


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--epochs", "0"], "Received: epochs=0"),
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        (["compare", "--seeds", "0"], "Received: seeds=0"),
        (["compare", "--norms", "batch,layer"], "Received: norms="),
        (["landscape", "--every-n-steps", "0"], "Received: every_n_steps=0"),
        (["landscape", "--etas", "-1"], "expected positive numbers"),
        (["tune", "--seeds", "0"], "Received: seeds=0"),
        (["reproduce", "--seeds", "0"], "Received: seeds=0"),
        (["bench", "--iters", "x"], "invalid int value: 'x'"),
        (["bench", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_every_command_error_is_one_line(capsys, argv, expected):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    error = captured.err
    assert error.count("\n") == 1, error  # no usage dump
    assert error.startswith(f"keras-seqnorm {argv[0]}: error: ")
    assert expected in error
    assert error.endswith(f"; see keras-seqnorm {argv[0]} --help\n")
    assert "usage:" not in captured.out


def test_python_dash_m_errors_are_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "keras_seqnorm", "train", "--groups-m", "3"],
        capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines()
             if line.startswith("keras-seqnorm train")]
    assert lines == [
        "keras-seqnorm train: error: Argument `groups_m` must be None for "
        "norm='batch' (it is used by ghost, sequential). Received: "
        "groups_m=3; see keras-seqnorm train --help"
    ]
    assert "usage:" not in result.stderr


@pytest.mark.parametrize(
    "result, status",
    [
        ({"status": "completed"}, 0),
        ({"status": "stopped_nan"}, 1),
        ({"status": "failed"}, 1),
        ({"failed": []}, 0),
        ({"failed": [{"norm": "ghost"}]}, 1),
        (None, 0),
    ],
)
def test_exit_status(result, status):
    assert cli.exit_status(result) == status


@pytest.mark.tensorflow_only
def test_backend_log_lines_are_silenced(tmp_path):
    # TensorFlow is imported (its strategy, before the data set is
    # looked for), yet stderr holds the one error line alone.
    argv = ["-m", "keras_seqnorm", "train", "--dataset", "cifar10",
            "--data-dir", str(tmp_path / "data"), "--no-download",
            "--run-dir", str(tmp_path / "run")]
    result = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True,
        timeout=300, cwd=ROOT,
        env={**ENV, "KERAS_BACKEND": "tensorflow"},
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("keras-seqnorm train: error: ")
    assert "is not prepared in --data-dir" in result.stderr


@pytest.mark.parametrize("flag", [[], [cli.BACKEND_LOGS]])
def test_backend_logs_flag_keeps_the_backend_as_it_is(flag, monkeypatch,
                                                      capsys):
    calls = []
    monkeypatch.setattr(cli, "quiet_backend", lambda tensorflow: calls.append(
        tensorflow))
    with pytest.raises(SystemExit) as info:
        cli.run_command(["train", *flag, "--groups-m", "3"])
    assert info.value.code == 2
    assert "Received: groups_m=3" in capsys.readouterr().err
    assert calls == ([] if flag else [True])
