import importlib
import subprocess
import sys

import pytest

from keras_seqnorm import cli


def test_usage_lists_every_command(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert f"  {name} " in out


def test_unknown_command_exits_2(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_every_command_module_has_main_and_help(name, capsys):
    module = importlib.import_module(cli.SUBCOMMANDS[name][0])
    assert callable(module.main)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "module",
    sorted({module for module, _ in cli.SUBCOMMANDS.values()}
           | {"keras_seqnorm.train", "keras_seqnorm.cli"}),
)
def test_python_dash_m_runs_each_command(module):
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


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
        [sys.executable, "-m", "keras_seqnorm.train", "--groups-m", "3"],
        capture_output=True, text=True, timeout=300,
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
