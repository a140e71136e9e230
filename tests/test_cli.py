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
