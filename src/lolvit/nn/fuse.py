"""Deploy-time re-parameterisation: fold BatchNorm into the preceding convolution and store the
weights channels-last (the fastest eager CPU layout measured for LOLViT, docs/results/bench.md)."""
from typing import Optional

import torch
import torch.nn as nn


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a Conv2d with bias equal to ``bn(conv(x))`` in eval mode."""
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    std = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_(beta + (bias - bn.running_mean) * scale)
    fused.requires_grad_(conv.weight.requires_grad)
    return fused


def _bn_remainder(bn: nn.Module) -> Optional[nn.Module]:
    """What stays of a BN module once its normalisation is folded into the conv before it:
    ``Identity`` for a plain ``nn.BatchNorm2d``, its ``drop -> act`` for timm's
    ``BatchNormAct2d`` (which applies an activation inside), None for any other BN subclass
    (left unfolded: its forward may do more than normalise)."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "act") and hasattr(bn, "drop"):
        return bn.act if isinstance(bn.drop, nn.Identity) else nn.Sequential(bn.drop, bn.act)
    return None


def fuse(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """Fold every ``conv -> bn`` pair (modules with ``.conv`` and ``.bn`` attributes, as
    :class:`~lolvit.nn.ConvBNAct`, ultralytics' ``Conv`` and timm's ``ConvNormAct``) in place and
    return the model in eval mode. Outputs are unchanged up to float rounding.

    Only plain ``nn.BatchNorm2d`` and timm's ``BatchNormAct2d`` (its activation is kept) are
    folded. ``channels_last=True`` (default) also stores 4D weights channels-last: inputs stay
    (B, C, H, W) in any memory layout, activations run NHWC after the first convolution (oneDNN's
    depthwise kernels are 5-20x faster there than in NCHW, and the (B, C, H, W) <-> (B, H*W, C)
    token views of :class:`~lolvit.nn.LOLViTBlock` become free); returned feature maps then have
    the usual shape in channels-last memory. ``channels_last=False`` keeps NCHW weights.
    """
    model.eval()
    for module in model.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            rest = _bn_remainder(bn)
            if rest is not None:
                module.conv = fuse_conv_bn(conv, bn)
                module.bn = rest
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model
