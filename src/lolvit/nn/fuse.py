"""Deploy-time re-parameterisation: fold BatchNorm into the preceding convolution."""
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


def fuse(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """Fold every ``conv -> bn`` pair (modules with ``.conv`` and ``.bn`` attributes, as
    :class:`~lolvit.nn.ConvBNAct` and ultralytics' ``Conv``) in place and return the model in
    eval mode. Outputs are unchanged up to float rounding.

    ``channels_last=True`` also stores 4D weights channels-last: activations then stay NHWC
    after the first convolution (any input layout), which suits oneDNN's depthwise kernels and
    makes the (B, C, H, W) <-> (B, H*W, C) token views of :class:`~lolvit.nn.LOLViTBlock` free.
    """
    model.eval()
    for module in model.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn(conv, bn)
            module.bn = nn.Identity()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model
