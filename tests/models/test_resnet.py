import pytest

from keras_seqnorm.models import ResNet18
from keras_seqnorm.models import ResNet34
from keras_seqnorm.models import ResNet50
from tests.models import needs_channels_first


def test_defaults_are_imagenet():
    model = ResNet18()
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 1000)
    assert model.name == "resnet18"
    # torchvision's feature map sizes: 112 after the stem, 56 after the
    # pool, then 56, 28, 14 and 7.
    assert model.get_layer("stem_relu").output.shape[1:3] == (112, 112)
    for stage, size in zip((1, 2, 3, 4), (56, 28, 14, 7)):
        out = model.get_layer(f"stage{stage}_block2_out").output
        assert out.shape[1:3] == (size, size)


@pytest.mark.parametrize(
    "builder, blocks", [(ResNet18, (2, 2, 2, 2)), (ResNet34, (3, 4, 6, 3)),
                        (ResNet50, (3, 4, 6, 3))]
)
def test_blocks_per_stage(builder, blocks):
    names = {layer.name for layer in builder(input_shape=(32, 32, 3)).layers}
    for stage, count in enumerate(blocks, start=1):
        assert f"stage{stage}_block{count}_out" in names
        assert f"stage{stage}_block{count + 1}_out" not in names


def test_resnet50_is_v1_5():
    # v1.5: the stride is on the 3x3 convolution, not the first 1x1.
    model = ResNet50(input_shape=(64, 64, 3))
    for stage in (2, 3, 4):
        block = f"stage{stage}_block1"
        assert model.get_layer(f"{block}_conv1").strides == (1, 1)
        assert model.get_layer(f"{block}_conv2").strides == (2, 2)
        assert model.get_layer(f"{block}_shortcut_conv").strides == (2, 2)
    # Stage 1 widens 64 -> 256 without a stride: a projection shortcut.
    assert model.get_layer("stage1_block1_shortcut_conv").strides == (1, 1)
    assert model.get_layer("stage4_block3_out").output.shape == (
        None, 2, 2, 2048
    )


@needs_channels_first
def test_channels_first():
    # The blocks' numerics in channels_first are checked on the CIFAR
    # families; here the ImageNet stem and stages.
    model = ResNet18(num_classes=3, norm="group",
                     data_format="channels_first")
    assert model.input_shape == (None, 3, 224, 224)
    assert model.get_layer("stem_pool").data_format == "channels_first"
    assert model.get_layer("stage1_block1_norm1").axis == 1
    assert model.get_layer("stage4_block2_out").output.shape == (
        None, 512, 7, 7
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_classes": -1}, "Received: num_classes=-1"),
     ({"input_shape": (224, 224)}, "Received: input_shape="),
     ({"norm": "layer"}, "Unknown norm 'layer'")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet50(**kwargs)
