"""Deformable convolution (Dai et al. 2017; v2 "modulated", Zhu et al. 2019), with
torchvision's semantics: `deform_conv2d` and the `DeformConv2d` module.

The kernels are `kernels/deform_cpu` (compiled, CPU) and `functional.deform` (grid_sample,
every other device and dtype, and the CPU without a compiler); here are the checks, the `torch.library` op that makes it
one node for autograd, `torch.compile` and ONNX export (as the standard `DeformConv`, opset 19),
and the module that predicts its own offsets.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._checks import check_float_tensor
from .functional import deform as D

__all__ = ["deform_conv2d", "DeformConv2d", "onnx_translations"]


def _pair(v, name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) and not isinstance(v, bool) else tuple(v) if isinstance(v, (tuple, list)) else None
    if t is None or len(t) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in t):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return t


def _check_shape(name: str, t: Tensor, expected: tuple, why: str) -> None:
    if tuple(t.shape) != expected:
        raise ValueError(f"{name} must have shape {expected} ({why}), got {tuple(t.shape)}")


def _geometry(input, offset, weight, bias, mask, stride, padding, dilation) -> D.Geometry:
    """Check every argument against the others -> the convolution's geometry."""
    for name, t in (("input", input), ("offset", offset), ("weight", weight)):
        check_float_tensor(name, t, ndims=(4,))
    B, C, H, W = input.shape
    Co, Cg, kh, kw = weight.shape
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"stride and dilation must be >= 1 and padding >= 0, got stride={stride}, "
                         f"padding={padding}, dilation={dilation}")
    if Cg < 1 or kh < 1 or kw < 1 or C % Cg or Co % (C // Cg):
        raise ValueError(f"weight (C_out, C_in / groups, kh, kw) = {tuple(weight.shape)} does not fit an input of "
                         f"{C} channels: C_in / groups must divide C_in, and groups = C_in / weight.shape[1] must divide C_out")
    Ho, Wo = D.output_size(H, W, D.Geometry(kh, kw, stride, padding, dilation, 1, 1))
    if Ho < 1 or Wo < 1:
        raise ValueError(f"the input's spatial size {(H, W)} is smaller than the dilated kernel "
                         f"{(dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)} plus padding {padding}")
    K = kh * kw
    if offset.shape[1] % (2 * K) or offset.shape[1] == 0:
        raise ValueError(f"offset must have 2 * offset_groups * kh * kw channels (a multiple of {2 * K}), "
                         f"got shape {tuple(offset.shape)}")
    G = offset.shape[1] // (2 * K)
    _check_shape("offset", offset, (B, 2 * G * K, Ho, Wo), "B, 2 * offset_groups * kh * kw, H_out, W_out")
    if C % G:
        raise ValueError(f"offset_groups ({G}, read off offset's channels) must divide the input's {C} channels")
    if mask is not None:
        check_float_tensor("mask", mask, ndims=(4,))
        _check_shape("mask", mask, (B, G * K, Ho, Wo), "B, offset_groups * kh * kw, H_out, W_out")
    if bias is not None:
        check_float_tensor("bias", bias, ndims=(1,))
        _check_shape("bias", bias, (Co,), "C_out")
    dtypes = {t.dtype for t in (input, offset, weight, bias, mask) if t is not None}
    if len(dtypes) > 1:
        raise ValueError(f"input, offset, weight, bias and mask must share one dtype, got {sorted(map(str, dtypes))}")
    return D.Geometry(kh, kw, stride, padding, dilation, C // Cg, G)


def _kernel(x: Tensor):
    """The module whose forward/backward runs on x: the compiled CPU kernel where it is built
    (CPU, float32/float64), else the grid_sample path."""
    if x.device.type == "cpu":
        from .kernels import deform_cpu

        if deform_cpu.usable(x):
            return deform_cpu
    return D


# One op for autograd, torch.compile and export. conv = (stride_h, stride_w, pad_h, pad_w,
# dilation_h, dilation_w, groups, offset_groups): ints, so that the ONNX translation reads them.
def _geo_of(weight: Tensor, conv: list[int]) -> D.Geometry:
    sh, sw, ph, pw, dh, dw, groups, offset_groups = conv
    return D.Geometry(weight.shape[2], weight.shape[3], (sh, sw), (ph, pw), (dh, dw), groups, offset_groups)


@torch.library.custom_op("stnkit::deform_conv2d", mutates_args=())
def _op(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, mask: Tensor | None,
        conv: list[int]) -> Tensor:
    return _kernel(input).forward(input, offset, weight, bias, mask, _geo_of(weight, conv))


@_op.register_fake
def _(input, offset, weight, bias, mask, conv):
    return input.new_empty(input.shape[0], weight.shape[0], offset.shape[2], offset.shape[3])


@torch.library.custom_op("stnkit::deform_conv2d_backward", mutates_args=())
def _op_backward(grad: Tensor, input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None,
                 conv: list[int], need_bias: bool) -> list[Tensor]:
    gx, goff, gw, gb, gm = _kernel(input).backward(grad, input, offset, weight, mask, _geo_of(weight, conv), need_bias)
    none = grad.new_empty(0)  # for an absent bias or mask (a fresh tensor each: returns may not alias)
    return [gx, goff, gw, none if gb is None else gb, none.clone() if gm is None else gm]


@_op_backward.register_fake
def _(grad, input, offset, weight, mask, conv, need_bias):
    return [torch.empty_like(input), torch.empty_like(offset), torch.empty_like(weight),
            grad.new_empty(weight.shape[0] if need_bias else 0),
            grad.new_empty(0) if mask is None else torch.empty_like(mask)]


def _setup(ctx, inputs, output):
    input, offset, weight, bias, mask, conv = inputs
    ctx.save_for_backward(input, offset, weight, mask)
    ctx.conv, ctx.has_bias = conv, bias is not None


def _backward(ctx, grad):
    input, offset, weight, mask = ctx.saved_tensors
    gx, goff, gw, gb, gm = _op_backward(grad.contiguous(), input, offset, weight, mask, ctx.conv, ctx.has_bias)
    return gx, goff, gw, gb if ctx.has_bias else None, gm if mask is not None else None, None


_op.register_autograd(_backward, setup_context=_setup)


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                  stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask: Tensor | None = None) -> Tensor:
    """Deformable convolution, exactly `torchvision.ops.deform_conv2d`.

    Args:
        input (Tensor[B, C_in, H, W]): the image.
        offset (Tensor[B, 2 * offset_groups * kh * kw, H_out, W_out]): (dy, dx) per kernel tap, taps
            row-major (k = i * kw + j), offset groups outermost.
        weight (Tensor[C_out, C_in / groups, kh, kw]): groups are read off the shapes.
        bias (Tensor[C_out] or None).
        stride, padding, dilation (int or (int, int)).
        mask (Tensor[B, offset_groups * kh * kw, H_out, W_out] or None): v2's modulation, multiplies
            each sampled value.
    Returns:
        Tensor[B, C_out, H_out, W_out]. A tap reads the input bilinearly at
        (ho * stride - pad + i * dilation + dy, wo * stride - pad + j * dilation + dx), zero outside.
    """
    geo = _geometry(input, offset, weight, bias, mask, stride, padding, dilation)
    conv = [int(v) for v in (*geo.stride, *geo.padding, *geo.dilation, geo.groups, geo.offset_groups)]  # plain ints also while tracing
    return _op(input.contiguous(), offset.contiguous(), weight.contiguous(), bias,
               None if mask is None else mask.contiguous(), conv)


def onnx_translations() -> dict:
    """{op: onnxscript function} for `torch.onnx.export(..., dynamo=True,
    custom_translation_table=...)`: stnkit's deformable convolution becomes the standard
    `DeformConv` node (opset 19; onnxruntime runs it on CPU from version 1.25)."""
    from onnxscript import opset19 as op

    def deform_conv(input, offset, weight, bias, mask, conv):
        sh, sw, ph, pw, dh, dw, groups, offset_groups = conv
        return op.DeformConv(input, weight, offset, bias, mask, dilations=[dh, dw], group=groups,
                             kernel_shape=list(weight.shape[2:]), offset_group=offset_groups,
                             pads=[ph, pw, ph, pw], strides=[sh, sw])

    return {torch.ops.stnkit.deform_conv2d.default: deform_conv}


class DeformConv2d(nn.Module):
    """A deformable convolution that predicts its own offsets (and, with `modulated=True`, its
    v2 mask) from its input with a plain convolution of the same kernel, stride, padding and
    dilation.

    The offset (and mask) convolution starts at zero weight and zero bias: offsets are 0 and the
    mask is sigmoid(0) = 0.5, so at initialisation this layer is `nn.Conv2d` with the same
    weight, and with the weight halved when modulated (the bias is not masked). 0.5, not 1, is
    the DCNv2 paper's choice: the sigmoid's slope is largest there, so the mask learns fastest,
    and a mask of 1 would need an infinite logit. `forward(x, offset=None, mask=None)`: external
    offsets (and, for a modulated layer, a mask) replace the predicted ones.

    x: (B, C_in, H, W) -> (B, C_out, H_out, W_out).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, offset_groups: int = 1, modulated: bool = False):
        super().__init__()
        kh, kw = _pair(kernel_size, "kernel_size")
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups),
                        ("offset_groups", offset_groups)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups ({groups}) must divide in_channels ({in_channels}) and out_channels ({out_channels})")
        if in_channels % offset_groups:
            raise ValueError(f"offset_groups ({offset_groups}) must divide in_channels ({in_channels})")
        self.stride, self.padding, self.dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.offset_groups, self.modulated = (kh, kw), offset_groups, bool(modulated)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        per_tap = 3 if modulated else 2  # (dy, dx[, mask]) per tap and offset group
        self.offset_conv = nn.Conv2d(in_channels, per_tap * offset_groups * kh * kw, (kh, kw), self.stride,
                                     self.padding, self.dilation)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The weight and bias as `nn.Conv2d` initialises them; zero offsets (mask 0.5)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def forward(self, x: Tensor, offset: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        if offset is None:
            pred = self.offset_conv(x)
            n = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
            offset = pred[:, :n]
            if self.modulated and mask is None:
                mask = torch.sigmoid(pred[:, n:])
        elif self.modulated and mask is None:
            raise ValueError("a modulated DeformConv2d given external offsets needs an external mask too")
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}, dilation={self.dilation}")
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.offset_groups != 1:
            s += f", offset_groups={self.offset_groups}"
        return s + (", modulated=True" if self.modulated else "") + ("" if self.bias is not None else ", bias=False")
