"""torch -> torch stage: RepViT re-parameterisation for inference.

Every BatchNorm after a convolution is folded into it, and each RepVGG depthwise block
(3x3 conv-BN + 1x1 conv + identity, then BN) becomes one 3x3 depthwise convolution. The result
computes the same function up to float rounding with a third of the trunk's ops. The stage works
on a copy; the model it is given is untouched (it stays the verification reference).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..model.repvit import ConvBN, RepVGGDW


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True)
    fused.weight.copy_(conv.weight * scale[:, None, None, None])
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


@torch.no_grad()
def _fuse_repvgg(block: RepVGGDW) -> nn.Conv2d:
    merged = fuse_conv_bn(block.conv.c, block.conv.bn)  # depthwise 3x3, padding 1
    merged.weight[:, :, 1, 1] += block.conv1.weight[:, :, 0, 0] + 1.0  # 1x1 branch + identity at the centre
    merged.bias += block.conv1.bias
    return fuse_conv_bn(merged, block.bn)


def reparameterize(module: nn.Module) -> nn.Module:
    """A copy of `module` with every ConvBN, RepVGG block and Conv2d -> BatchNorm2d pair fused."""
    model = copy.deepcopy(module).eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ConvBN):
                setattr(parent, name, fuse_conv_bn(child.c, child.bn))
            elif isinstance(child, RepVGGDW):
                setattr(parent, name, _fuse_repvgg(child))
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            for first, second in zip(names, names[1:]):
                conv, bn = parent._modules[first], parent._modules[second]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    parent._modules[first], parent._modules[second] = fuse_conv_bn(conv, bn), nn.Identity()
    return model
