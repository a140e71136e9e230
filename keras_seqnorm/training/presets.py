"""Named training recipes: the paper's setups as `Config` field values.

A preset is a dict of `Config` field values plus, per norm, the group
counts the paper tuned for it. `keras-seqnorm train --preset NAME` starts
from the preset, and every flag given on the command line overrides it:

```
keras-seqnorm train --preset cifar100-wrn28-10 --norm sequential
keras-seqnorm train --preset cifar100-wrn28-10 --norm ghost --epochs 50
```

`groups_m` is per replica, as in the paper, which trained the CIFAR and
ImageNet recipes on 8 GPUs (Appendix C): `G_M = 8` on 8 GPUs normalizes
over the same ghost batches as `G_M = 64` on one. In particular the paper's
"BatchNorm" baseline on 8 GPUs normalizes over 64 samples, while
`--norm batch` on one GPU normalizes over the whole batch of 512.
"""

import types

# Appendix C's CIFAR recipe, shared by CIFAR-10 and CIFAR-100.
_CIFAR_WRN28_10 = {
    "model": "wrn28_10",
    "validation_size": 5000,
    "flip": True,
    "pad_crop": 4,
    "cutout": 16,
    "batch_size": 512,
    "epochs": 200,
    "learning_rate": 0.1,
    "lr_reference_batch": 128,
    "schedule": "cosine",
    "warmup_epochs": 5.0,
    "warmup_start": 0.25,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "weight_decay_on": "all",
}

PRESETS = types.MappingProxyType(
    {
        "cifar100-wrn28-10": {
            "description": (
                "Appendix C: WRN-28-10 on CIFAR-100, 45,000/5,000 "
                "stratified split, flips, pad-and-crop, Cutout 16x16, batch "
                "512, 200 epochs, SGD Nesterov 0.9, weight decay 5e-4, "
                "learning rate 0.1 (per 128) warmed up 4x over 5 epochs, "
                "then cosine."
            ),
            "fields": {"dataset": "cifar100", **_CIFAR_WRN28_10},
            # Table 1: the best validation accuracy of each norm.
            "norm_groups": {
                "ghost": {"groups_m": 8},
                "sequential": {"groups_m": 8, "groups_c": 4},
            },
        },
        "cifar10-wrn28-10": {
            "description": (
                "Appendix C: the CIFAR-100 recipe on CIFAR-10."
            ),
            "fields": {"dataset": "cifar10", **_CIFAR_WRN28_10},
            # Section 3.2.2 and Table 2.
            "norm_groups": {
                "ghost": {"groups_m": 4},
                "sequential": {"groups_m": 8, "groups_c": 16},
            },
        },
        "cifar10-resnet56-superconvergence": {
            "description": (
                "Appendix B.1: ResNet-56 on the 50,000 CIFAR-10 training "
                "images, flips and pad-and-crop, batch 512, SGD without "
                "momentum, weight decay 1e-4, one cycle 0.1 -> 3.0 (15 "
                "epochs) -> 0.1 (15) -> 0.003 (10)."
            ),
            "fields": {
                "dataset": "cifar10",
                "model": "resnet56",
                "validation_size": 0,
                "flip": True,
                "pad_crop": 4,
                "cutout": 0,
                "batch_size": 512,
                "epochs": 40,
                "schedule": "piecewise_linear",
                "lr_knots": ((0.0, 0.1), (15.0, 3.0), (30.0, 0.1),
                             (40.0, 0.003)),
                "momentum": 0.0,
                "nesterov": False,
                "weight_decay": 1e-4,
                "weight_decay_on": "all",
            },
            # Section 4: GhostNorm over 4 of the 512 samples.
            "norm_groups": {"ghost": {"groups_m": 128}},
        },
        "mnist-simplenet": {
            "description": (
                "Appendix B.1: SimpleNet (784-512-300-10) on the 60,000 "
                "MNIST training images, inputs standardized, learning rate "
                "0.4, batch 512 (the paper gives no epoch count: 20)."
            ),
            "fields": {
                "dataset": "mnist",
                "model": "simplenet",
                "validation_size": 0,
                "flip": False,
                "pad_crop": 0,
                "cutout": 0,
                "batch_size": 512,
                "epochs": 20,
                "learning_rate": 0.4,
                "lr_reference_batch": 0,
                "schedule": "constant",
                "momentum": 0.0,
                "nesterov": False,
                "weight_decay": 0.0,
            },
            # Appendix B.3: the best model normalizes over 8 samples.
            "norm_groups": {"ghost": {"groups_m": 64}},
        },
        "imagenet-resnet18": {
            "description": (
                "Appendix C: ResNet-18 v1.5 with NVIDIA DeepLearningExamples' "
                "recipe (configs.yml, 2k batch, 250 epochs): batch 2048, "
                "SGD momentum 0.875, learning rate 0.256 per 256 images, 8 "
                "warmup epochs then cosine, label smoothing 0.1, MixUp 0.2, "
                "weight decay 1/32768 on kernels only, mixed precision; plus "
                "gradient clipping at norm 2."
            ),
            "fields": {
                "dataset": "imagenet2012",
                "model": "resnet18",
                "validation_size": 0,
                "flip": True,
                "pad_crop": 0,
                "cutout": 0,
                "mixup": 0.2,
                "batch_size": 2048,
                "epochs": 250,
                "learning_rate": 0.256,
                "lr_reference_batch": 256,
                "schedule": "cosine",
                "warmup_epochs": 8.0,
                "warmup_start": 0.0,
                "momentum": 0.875,
                "nesterov": False,
                "weight_decay": 1.0 / 32768,
                "weight_decay_on": "kernels",
                "label_smoothing": 0.1,
                "clip_norm": 2.0,
                "precision": "mixed_float16",
            },
            # Section 3.2.3.
            "norm_groups": {
                "ghost": {"groups_m": 4},
                "sequential": {"groups_m": 4, "groups_c": 4},
            },
        },
    }
)
"""Preset name -> `{"description", "fields", "norm_groups"}`."""


def preset_values(name, norm=None):
    """The `Config` field values of the preset `name` for `norm`.

    Args:
        name: A key of `PRESETS`.
        norm: The norm that will be trained, or `None`: the preset's
            `groups_m`/`groups_c` for that norm are included.

    Returns:
        A new dict of field values.
    """
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset {name!r}. Valid names: {', '.join(PRESETS)}. "
            f"Received: preset={name!r}"
        )
    preset = PRESETS[name]
    values = dict(preset["fields"])
    values.update(preset["norm_groups"].get(norm, {}))
    return values
