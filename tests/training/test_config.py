import dataclasses

import pytest

from keras_seqnorm.norms import NORM_LAYERS
from keras_seqnorm.norms import group_arguments
from keras_seqnorm.norms import norms_taking
from keras_seqnorm.training.config import Config
from keras_seqnorm.training.config import ConfigError
from keras_seqnorm.training.config import build_parser
from keras_seqnorm.training.config import parse_config
from keras_seqnorm.training.presets import PRESETS


def _error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        parse_config(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_every_field_is_a_documented_flag():
    parser = build_parser()
    flags = {
        option: action
        for action in parser._actions
        for option in action.option_strings
    }
    for field in dataclasses.fields(Config):
        flag = "--" + field.name.replace("_", "-")
        assert flag in flags, flag
        assert field.metadata["help"] in flags[flag].help
    assert "--no-flip" in flags


def test_defaults_without_flags():
    assert parse_config([]) == Config()


def test_flags_are_parsed_into_fields():
    config = parse_config([
        "--dataset", "cifar10", "--model", "resnet20", "--norm",
        "sequential", "--groups-m", "4", "--groups-c", "8", "--batch-size",
        "128", "--randaugment", "1,6", "--flip", "--no-nesterov",
        "--norm-kwargs", '{"momentum": 0.9}', "--schedule",
        "piecewise_linear", "--lr-knots", "0:0.1,5:1,10:0.01",
        "--clip-norm", "2", "--grad-accum", "4", "--precision",
        "mixed_bfloat16", "--strategy", "mirrored", "--jit-compile",
    ])
    assert config.dataset == "cifar10"
    assert config.model == "resnet20"
    assert (config.groups_m, config.groups_c) == (4, 8)
    assert config.batch_size == 128
    assert config.randaugment == (1, 6)
    assert config.flip and not config.nesterov and config.jit_compile
    assert config.lr_knots == ((0.0, 0.1), (5.0, 1.0), (10.0, 0.01))
    assert config.clip_norm == 2.0 and config.grad_accum == 4
    assert config.norm_layer_kwargs() == {
        "groups_m": 4, "groups_c": 8, "momentum": 0.9,
    }


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("norm", ["batch", "ghost", "sequential"])
def test_every_preset_resolves_for_every_norm(name, norm):
    config = parse_config(["--preset", name, "--norm", norm])
    fields = PRESETS[name]["fields"]
    for key, value in fields.items():
        assert getattr(config, key) == value, key
    groups = PRESETS[name]["norm_groups"].get(norm, {})
    assert config.groups_m == groups.get("groups_m")
    assert config.groups_c == groups.get("groups_c")
    assert Config.from_dict(config.to_dict()) == config


def test_preset_values_follow_the_paper():
    cifar100 = parse_config(["--preset", "cifar100-wrn28-10", "--norm",
                             "sequential"])
    assert (cifar100.groups_c, cifar100.groups_m) == (4, 8)
    assert (cifar100.batch_size, cifar100.epochs) == (512, 200)
    assert cifar100.validation_size == 5000
    assert (cifar100.flip, cifar100.pad_crop, cifar100.cutout) == (
        True, 4, 16)
    assert (cifar100.momentum, cifar100.nesterov) == (0.9, True)
    assert cifar100.weight_decay == 5e-4
    cifar10 = parse_config(["--preset", "cifar10-wrn28-10", "--norm",
                            "sequential"])
    assert (cifar10.groups_c, cifar10.groups_m) == (16, 8)
    ghost = parse_config(["--preset", "cifar10-wrn28-10", "--norm", "ghost"])
    assert ghost.groups_m == 4
    one_cycle = parse_config(["--preset",
                              "cifar10-resnet56-superconvergence"])
    assert one_cycle.momentum == 0.0 and one_cycle.weight_decay == 1e-4
    assert one_cycle.epochs == 40 and one_cycle.batch_size == 512
    mnist = parse_config(["--preset", "mnist-simplenet"])
    assert (mnist.learning_rate, mnist.batch_size, mnist.model) == (
        0.4, 512, "simplenet")
    imagenet = parse_config(["--preset", "imagenet-resnet18"])
    assert imagenet.momentum == 0.875
    assert imagenet.label_smoothing == 0.1
    assert imagenet.weight_decay == 1 / 32768
    assert imagenet.weight_decay_on == "kernels"
    assert imagenet.clip_norm == 2.0
    assert imagenet.precision == "mixed_float16"


def test_flags_override_the_preset():
    config = parse_config([
        "--preset", "cifar100-wrn28-10", "--norm", "ghost", "--groups-m",
        "2", "--epochs", "6", "--batch-size", "64", "--no-flip",
        "--cutout", "0", "--model", "simplecnn",
    ])
    assert config.groups_m == 2
    assert (config.epochs, config.batch_size) == (6, 64)
    assert not config.flip and config.cutout == 0
    assert config.model == "simplecnn"
    assert config.dataset == "cifar100"  # still from the preset


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--model", "vgg"], "invalid choice: 'vgg'"),
        (["--norm", "layer"], "invalid choice: 'layer'"),
        (["--dataset", "svhn"], "invalid choice: 'svhn'"),
        (["--preset", "cifar"], "invalid choice: 'cifar'"),
        (["--batchsize", "3"], "unrecognized arguments"),
        (["--epoch", "3"], "unrecognized arguments"),  # no abbreviations
        (["--epochs", "two"], "invalid int value"),
        (["--randaugment", "2"], "expected two integers N,M"),
        (["--lr-knots", "0-0.1"], "expected EPOCH:RATE"),
        (["--norm-kwargs", "[1]"], "expected a JSON object"),
        (["--batch-size", "0"], "Received: batch_size=0"),
        (["--learning-rate", "-1"], "Received: learning_rate=-1.0"),
        (["--groups-m", "4"], "Received: groups_m=4"),
        (["--norm", "ghost", "--groups-c", "4"], "Received: groups_c=4"),
        (["--randaugment", "1,31"], "Received: randaugment=(1, 31)"),
        (["--warmup-epochs", "20"], "Received: warmup_epochs=20.0"),
        (["--lr-knots", "0:0.1"], "Received: lr_knots=((0.0, 0.1),)"),
        (["--schedule", "piecewise_linear", "--lr-knots", "1:0.1"],
         "starting at epoch 0"),
        (["--label-smoothing", "1"], "Received: label_smoothing=1.0"),
        (["--momentum", "1"], "Received: momentum=1.0"),
    ],
)
def test_bad_flags_exit_with_one_line_errors(capsys, argv, expected):
    error = _error(capsys, argv)
    assert expected in error
    assert "Traceback" not in error


def test_invalid_config_raises_value_error_naming_the_field():
    with pytest.raises(ValueError, match=r"Received: grad_accum=0$"):
        Config(grad_accum=0)
    with pytest.raises(ConfigError, match=r"Received: clip_norm=-2"):
        Config(clip_norm=-2.0)
    with pytest.raises(ValueError, match="used by ghost, sequential"):
        Config(norm="batch", groups_m=8)


def test_group_counts_become_layer_arguments():
    assert Config(norm="ghost", groups_m=8).norm_layer_kwargs() == {
        "groups_m": 8}
    assert Config(norm="group", groups_c=8).norm_layer_kwargs() == {
        "groups": 8}
    assert Config(norm="noisy_batch", norm_kwargs={
        "stddev": 3e-4}).norm_layer_kwargs() == {"stddev": 3e-4}
    # The registry says which norms take group counts.
    assert {name for name in NORM_LAYERS if group_arguments(name)} == {
        "ghost", "sequential", "group"}
    assert norms_taking("groups_m") == ["ghost", "sequential"]
    assert norms_taking("groups_c") == ["sequential", "group"]


def test_ghost_batch_size_is_the_other_way_to_give_g_m():
    config = parse_config(["--norm", "sequential", "--ghost-batch-size",
                           "16", "--groups-c", "4"])
    assert config.norm_layer_kwargs() == {"ghost_batch_size": 16,
                                          "groups_c": 4}
    with pytest.raises(ConfigError, match=r"None when groups_m=4 is given "
                       r".*Received: ghost_batch_size=16$"):
        Config(norm="ghost", groups_m=4, ghost_batch_size=16)
    with pytest.raises(ConfigError, match="used by ghost, sequential"):
        Config(norm="batch", ghost_batch_size=16)
    # Given by its size, G_M is no longer the preset's.
    preset = parse_config(["--preset", "cifar100-wrn28-10", "--norm",
                           "sequential", "--ghost-batch-size", "8"])
    assert (preset.groups_m, preset.groups_c) == (None, 4)
    assert preset.ghost_batch_size == 8
    assert parse_config(["--preset", "cifar100-wrn28-10", "--norm",
                         "sequential"]).groups_m == 8


def test_strategy_and_recalibration_flags(capsys):
    config = parse_config(["--strategy", "data_parallel",
                           "--recalibrate-steps", "20",
                           "--recalibrate-statistics", "population"])
    assert config.strategy == "data_parallel"
    assert (config.recalibrate_steps, config.recalibrate_statistics) == (
        20, "population")
    assert (Config().recalibrate_steps, Config().recalibrate_statistics) == (
        0, "ghost")
    assert "Received: recalibrate_steps=-1" in _error(
        capsys, ["--recalibrate-steps", "-1"])
    assert "invalid choice: 'precise'" in _error(
        capsys, ["--recalibrate-statistics", "precise"])
