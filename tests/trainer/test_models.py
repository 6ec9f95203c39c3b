"""Model zoo: shapes, the MLPerf Tiny ResNet-8 topology, width multiplier, registry errors."""

import pytest
import torch
from torch import nn

from edgesmith.errors import ConfigError
from trainer.models import build_model, model_names


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", ["resnet8", "resnet18"])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shapes(name, batch):
    model = build_model(name, num_classes=7, width_mult=0.5).eval()
    assert model(torch.randn(batch, 3, 32, 32)).shape == (batch, 7)


def test_resnet8_matches_mlperf_tiny_reference():
    m = build_model("resnet8", num_classes=10)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    # stem + 2 per stack + 1x1 shortcut in stacks 2 and 3 = 9 convolutions, all with bias (Keras default)
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (3, 16, 3, 1),
        (16, 16, 3, 1), (16, 16, 3, 1),
        (16, 32, 3, 2), (32, 32, 3, 1), (16, 32, 1, 2),
        (32, 64, 3, 2), (64, 64, 3, 1), (32, 64, 1, 2),
    ]
    assert all(c.bias is not None for c in convs)
    # shortcut convolutions have no BatchNorm: 7 BNs (stem + 2 per stack)
    assert sum(isinstance(mod, nn.BatchNorm2d) for mod in m.modules()) == 7
    assert _params(m) == 78186
    assert not any(isinstance(mod, nn.MaxPool2d) for mod in m.modules())


def test_resnet18_cifar_variant_and_width_multiplier():
    full = build_model("resnet18", num_classes=10)
    stem = full.stem[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(mod, nn.MaxPool2d) for mod in full.modules())
    assert 11.1e6 < _params(full) < 11.2e6  # the published 11.17 M for CIFAR ResNet-18
    half = build_model("resnet18", num_classes=10, width_mult=0.5)
    assert half.fc.in_features == 256
    assert _params(half) < _params(full) / 3


def test_unknown_model_lists_choices():
    names = "nanodet-m, nanodet-mcu, nanodet-plus-m, resnet18, resnet8, shufflenetv2"
    with pytest.raises(ConfigError, match=rf"unknown model 'resnet50'; choose from: {names}"):
        build_model("resnet50", num_classes=10)
    assert model_names() == names.split(", ")
