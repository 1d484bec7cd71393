"""Per-sample gradients computed layer by layer in the backward pass, for Opacus's DP optimiser.

Opacus's "hooks" mode lets autograd compute every layer's summed weight gradient
(thrown away under DP) and then derives per-sample gradients by unfolding the
input (im2col), which on a CPU costs more than the convolution itself. Its "ew"
mode skips the summed gradient but unfolds the same way. Here each supported
layer runs through an autograd function whose backward computes the input
gradient alone and writes the per-sample weight gradients straight into
`param.grad_sample`, the attribute Opacus's `DPOptimizer` clips, sums and noises;
the model is wrapped with Opacus's "no_op" mode, its extension point for exactly
this. For a convolution the per-sample gradient is one batched matrix product
against a strided view of the padded input (no im2col), about as fast as the
plain weight gradient it replaces (benchmarks/dp_step.py).

Layers: Conv1d/Conv2d (groups 1, zero padding), Linear, GroupNorm, LayerNorm (the
affine part), Embedding. A model with trainable parameters anywhere else is refused
by `check_supported`, naming the layer. Gradients follow Opacus's convention for a
mean-reduced loss: each sample's gradient is the batch's gradient times the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import ConfigError


def _store(param: torch.Tensor, grad_sample: torch.Tensor) -> None:
    if getattr(param, "grad_sample", None) is None:
        param.grad_sample = grad_sample
    else:  # the same layer used twice in one forward pass
        param.grad_sample = param.grad_sample + grad_sample


def _patches(x: torch.Tensor, conv: nn.Conv1d | nn.Conv2d) -> torch.Tensor:
    """(batch, in_channels * kernel, positions): the input under each kernel position, as a
    strided view of the zero-padded input copied once (what im2col computes, without im2col)."""
    dims = x.dim() - 2
    pad = [p for p in reversed(conv.padding) for _ in (0, 1)]  # type: ignore[union-attr]
    xp = F.pad(x, pad) if any(pad) else x
    kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
    out = [(xp.shape[2 + d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1 for d in range(dims)]
    s = xp.stride()
    view = xp.as_strided(
        (xp.shape[0], xp.shape[1], *kernel, *out),
        (s[0], s[1], *(s[2 + d] * dilation[d] for d in range(dims)), *(s[2 + d] * stride[d] for d in range(dims))),
    )
    return view.reshape(xp.shape[0], -1, math.prod(out))


class _ConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                conv: nn.Module) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = conv
        return conv._conv_forward(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        x, weight = ctx.saved_tensors
        conv = ctx.conv
        n = grad.shape[0]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, list(conv.stride), list(conv.padding), list(conv.dilation), False,
                [0] * (x.dim() - 2), 1, [True, False, False])[0]
        flat = grad.reshape(n, grad.shape[1], -1)
        if conv.weight.requires_grad:
            patches = _patches(x, conv)
            per_sample = torch.baddbmm(flat.new_empty(n, flat.shape[1], patches.shape[1]), flat,
                                       patches.transpose(1, 2), beta=0, alpha=n)
            _store(conv.weight, per_sample.view(n, *weight.shape))
        if conv.bias is not None and conv.bias.requires_grad:
            _store(conv.bias, flat.sum(2).mul_(n))
        return grad_x, None, None, None


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                layer: nn.Linear) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.layer = layer
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        x, weight = ctx.saved_tensors
        layer = ctx.layer
        n = grad.shape[0]
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        g = grad.reshape(n, -1, grad.shape[-1]) * n
        if layer.weight.requires_grad:
            _store(layer.weight, torch.bmm(g.transpose(1, 2), x.reshape(n, -1, x.shape[-1])))
        if layer.bias is not None and layer.bias.requires_grad:
            _store(layer.bias, g.sum(1))
        return grad_x, None, None, None


class _AffineFn(torch.autograd.Function):
    """y = normalised * weight + bias, weight and bias per channel (dim 1) or over the
    trailing dims (LayerNorm); per-sample gradients summed over everything else."""

    @staticmethod
    def forward(ctx: Any, normalised: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                layer: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
        ctx.save_for_backward(normalised, weight)
        ctx.layer, ctx.shape = layer, shape
        out = normalised * weight.view(shape)
        return out + bias.view(shape) if bias is not None else out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        normalised, weight = ctx.saved_tensors
        layer, shape = ctx.layer, ctx.shape
        n = grad.shape[0]
        keep = [d for d, size in enumerate(shape) if size != 1 and d > 0]
        summed = [d for d in range(1, grad.dim()) if d not in keep]

        def per_sample(t: torch.Tensor) -> torch.Tensor:
            t = t.sum(summed) if summed else t
            return (t * n).reshape(n, *layer.weight.shape)

        if layer.weight.requires_grad:
            _store(layer.weight, per_sample(grad * normalised))
        if layer.bias is not None and layer.bias.requires_grad:
            _store(layer.bias, per_sample(grad))
        return grad * weight.view(shape), None, None, None, None


class _EmbeddingFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, weight: torch.Tensor, layer: nn.Embedding) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.layer = layer
        return F.embedding(ids, weight, layer.padding_idx, layer.max_norm, layer.norm_type,
                           layer.scale_grad_by_freq, layer.sparse)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None]:
        (ids,) = ctx.saved_tensors
        layer = ctx.layer
        n = grad.shape[0]
        flat_ids = ids.reshape(n, -1)
        per_sample = grad.new_zeros(n, *layer.weight.shape)
        per_sample.scatter_add_(1, flat_ids.unsqueeze(-1).expand(-1, -1, grad.shape[-1]),
                                grad.reshape(n, -1, grad.shape[-1]) * n)
        if layer.padding_idx is not None:
            per_sample[:, layer.padding_idx] = 0
        _store(layer.weight, per_sample)
        return None, None, None


def _conv_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return _ConvFn.apply(x, self.weight, self.bias, self)


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _LinearFn.apply(x, self.weight, self.bias, self)


def _group_norm_forward(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    normalised = F.group_norm(x, self.num_groups, None, None, self.eps)
    return _AffineFn.apply(normalised, self.weight, self.bias, self, (1, -1) + (1,) * (x.dim() - 2))


def _layer_norm_forward(self: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    normalised = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
    shape = (1,) * (x.dim() - len(self.normalized_shape)) + tuple(self.normalized_shape)
    return _AffineFn.apply(normalised, self.weight, self.bias, self, shape)


def _embedding_forward(self: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    return _EmbeddingFn.apply(ids, self.weight, self)


def _supported(module: nn.Module) -> Callable[..., torch.Tensor] | None:
    kind = type(module)
    if kind in (nn.Conv1d, nn.Conv2d):
        ok = module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
        return _conv_forward if ok else None
    if kind is nn.Linear:
        return _linear_forward
    if kind is nn.GroupNorm:
        return _group_norm_forward if module.affine else None
    if kind is nn.LayerNorm:
        return _layer_norm_forward if module.elementwise_affine else None
    if kind is nn.Embedding:
        return _embedding_forward if not module.sparse and module.max_norm is None else None
    return None


def _trainable_here(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False))


def check_supported(model: nn.Module) -> None:
    """Refuse, naming the layer, a model whose trainable parameters sit in a layer this mode
    cannot give per-sample gradients for."""
    for name, module in model.named_modules():
        if _trainable_here(module) and _supported(module) is None:
            raise ConfigError(
                f"layer '{name or type(module).__name__}' ({type(module).__name__}) has no per-sample gradient "
                "in grad_sample_mode 'layers' (supported: Conv1d/Conv2d with groups=1 and numeric zero padding, "
                "Linear, affine GroupNorm/LayerNorm, Embedding); train this model with 'ew' or 'hooks'")


class PerSampleLayers:
    """The supported layers of one model, switched to writing `grad_sample` (`attach`) and back."""

    def __init__(self, model: nn.Module) -> None:
        check_supported(model)
        self._forwards = [(m, f) for m in model.modules() if _trainable_here(m) and (f := _supported(m)) is not None]

    def attach(self) -> None:
        for module, forward in self._forwards:
            module.forward = MethodType(forward, module)  # type: ignore[method-assign]

    def detach(self) -> None:
        for module, _ in self._forwards:
            module.__dict__.pop("forward", None)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Plain layers inside the block (e.g. a GAN's generator step through the discriminator)."""
        self.detach()
        try:
            yield
        finally:
            self.attach()


@contextmanager
def per_sample_layers(model: nn.Module) -> Iterator[PerSampleLayers]:
    """Within the block, the model's supported layers write `grad_sample` in the backward
    pass instead of accumulating `grad`; their own forwards are back afterwards."""
    layers = PerSampleLayers(model)
    layers.attach()
    try:
        yield layers
    finally:
        layers.detach()
