"""Per-sample gradients computed layer by layer in the backward pass, for Opacus's DP optimiser.

Opacus's "hooks" mode lets autograd compute every layer's summed weight gradient
(thrown away under DP) and then derives per-sample gradients by unfolding the
input (im2col), which on a CPU costs more than the convolution itself. Its "ew"
mode skips the summed gradient but unfolds the same way. Here each supported
layer computes its output from detached parameters, so autograd computes the
input gradient alone, and a tap on the output hands the output gradient and the
layer's input to a grad sampler, whose per-sample gradients go straight into
`param.grad_sample`, the attribute Opacus's `DPOptimizer` clips, sums and
noises; the model is wrapped with Opacus's "no_op" mode, its extension point for
exactly this. The grad samplers are Opacus's own, except for convolutions: one
batched matrix product against a strided view of the padded input (no im2col),
about as fast as the plain weight gradient it replaces (benchmarks/dp_step.py).

Layers: Conv1d/Conv2d (groups 1, zero padding), Linear, affine GroupNorm and
LayerNorm, Embedding (no padding index, max norm or sparse gradients), and torch's own
one-layer, batch-first, unidirectional LSTM and GRU. For those, the input projections of
all time steps (x_t W_ih^T + b_ih) are computed first and tapped, then torch's fused
recurrence runs on them with an identity input weight and detached weights: its input
gradient is then each step's gate gradient, from which, with the hidden states it
returned, all four weights' per-sample gradients are four batched products (the GRU's
hidden weights see the new-gate gradient scaled by its reset gate). Opacus instead needs
its DPLSTM/DPGRU, a Python loop hooked at every time step. A model with
trainable parameters anywhere else is refused by `check_supported`, naming the layer.
Gradients follow Opacus's convention for a mean-reduced loss: each sample's gradient
is the batch's gradient times the batch size.
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

from opacus.grad_sample import GradSampleModule

from common.errors import ConfigError

# Opacus's own per-sample gradient formulas, by layer type (convolutions: conv_grad_sample below)
GRAD_SAMPLERS = GradSampleModule.GRAD_SAMPLERS


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


def conv_grad_sample(conv: nn.Module, activations: list[torch.Tensor],
                     backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Opacus's grad-sampler signature; one batched product against `_patches` instead of
    Opacus's unfold + einsum."""
    x, n = activations[0], backprops.shape[0]
    flat = backprops.reshape(n, backprops.shape[1], -1)
    out = {}
    if conv.weight.requires_grad:
        patches = _patches(x, conv)  # type: ignore[arg-type]
        out[conv.weight] = torch.bmm(flat, patches.transpose(1, 2)).view(n, *conv.weight.shape)
    if conv.bias is not None and conv.bias.requires_grad:
        out[conv.bias] = flat.sum(2)
    return out


def rnn_grad_sample(rnn: nn.LSTM | nn.GRU, activations: list[Any],
                    backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of a one-layer LSTM/GRU from the gradient of its input projections
    (batch, time, gates) and the hidden states the recurrence saw: x_t W_ih^T + b_ih and
    h_{t-1} W_hh^T + b_hh feed the same gate pre-activations, except the GRU's new gate,
    whose hidden part is multiplied by the reset gate r_t first (recomputed here)."""
    x, trace = activations
    h_prev, hidden_grad = trace["h_prev"], backprops
    if isinstance(rnn, nn.GRU):
        size = rnn.hidden_size
        w_hr, b_hr = rnn.weight_hh_l0[:size].detach(), rnn.bias_hh_l0[:size].detach()
        reset = torch.sigmoid(trace["projected"][..., :size] + h_prev @ w_hr.t() + b_hr)
        hidden_grad = torch.cat([backprops[..., : 2 * size], backprops[..., 2 * size :] * reset], -1)
    return {  # (batch, in, time) x (batch, time, gates), transposed: 1.5-10x faster on a CPU than the other way
        rnn.weight_ih_l0: torch.bmm(x.transpose(1, 2), backprops).transpose(1, 2),
        rnn.bias_ih_l0: backprops.sum(1),
        rnn.weight_hh_l0: torch.bmm(h_prev.transpose(1, 2), hidden_grad).transpose(1, 2),
        rnn.bias_hh_l0: hidden_grad.sum(1),
    }


# fedward's own grad samplers; every other supported layer uses Opacus's
OWN_SAMPLERS: dict[type, Callable[..., dict[nn.Parameter, torch.Tensor]]] = {
    nn.Conv1d: conv_grad_sample, nn.Conv2d: conv_grad_sample,
    nn.LSTM: rnn_grad_sample, nn.GRU: rnn_grad_sample,
}


class Outer:
    """Per-sample gradients of a Linear weight on 2-D inputs, kept as their two factors: sample i's
    gradient is outer(grads[i], inputs[i]). Never formed on the DP step's path (ghost clipping,
    Goodfellow 2015; Li et al. 2022): its norm is |grads[i]| |inputs[i]| and the clipped sum is
    (c grads)^T inputs, one product the size of the plain weight gradient. Formed, the scattering
    head's (batch 128, 8 x 11907 weights) took 7.5x the plain step (benchmarks/image_dp_step.py).
    `dense` forms them where a caller needs them (per-patient sums, a GAN's generated pull)."""

    def __init__(self, grads: torch.Tensor, inputs: torch.Tensor) -> None:
        self.grads, self.inputs = grads, inputs

    def __len__(self) -> int:
        return len(self.grads)

    def norms(self) -> torch.Tensor:
        return self.grads.norm(dim=1) * self.inputs.norm(dim=1)

    def weighted_sum(self, factors: torch.Tensor) -> torch.Tensor:
        return (factors.to(self.grads.dtype)[:, None] * self.grads).T @ self.inputs

    def dense(self) -> torch.Tensor:
        return self.grads[:, :, None] * self.inputs[:, None, :]


def dense(grad_sample: torch.Tensor | Outer) -> torch.Tensor:
    """A parameter's per-sample gradients as one (batch, *shape) tensor."""
    return grad_sample.dense() if isinstance(grad_sample, Outer) else grad_sample


def _outer_linear(layer: nn.Linear, x: torch.Tensor, grad: torch.Tensor) -> dict[nn.Parameter, Any]:
    out: dict[nn.Parameter, Any] = {layer.weight: Outer(grad, x)}
    if layer.bias is not None:
        out[layer.bias] = grad
    return out


class _Tap(torch.autograd.Function):
    """Identity on a layer's output; its backward hands the output gradient and the layer's
    input to the layer's grad sampler and stores what it returns in `param.grad_sample`.
    `weight` is an input only so that the tap runs even where nothing before it needs a
    gradient (the first layer); it gets none. `trace`: what the layer records after the tap
    (an RNN's hidden states), read in the backward pass."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, x: torch.Tensor, layer: nn.Module, weight: torch.Tensor,
                trace: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.layer, ctx.trace = layer, trace
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        (x,) = ctx.saved_tensors
        layer = ctx.layer
        if type(layer) is nn.Linear and x.dim() == 2:
            samples = _outer_linear(layer, x, grad * grad.shape[0])
        else:
            sampler = OWN_SAMPLERS.get(type(layer)) or GRAD_SAMPLERS[type(layer)]
            activations = [x] if ctx.trace is None else [x, ctx.trace]
            samples = sampler(layer, activations, grad * grad.shape[0])  # mean loss, as Opacus
        for param, grad_sample in samples.items():
            if getattr(param, "grad_sample", None) is None:
                param.grad_sample = grad_sample
            else:  # the same layer used twice in one forward pass
                param.grad_sample = dense(param.grad_sample) + dense(grad_sample)
        return grad, None, None, None, None


def _tapped(layer: nn.Module, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _Tap.apply(out, x.detach(), layer, layer.weight)


def _detached(p: torch.Tensor | None) -> torch.Tensor | None:
    return None if p is None else p.detach()


def _conv_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return _tapped(self, self._conv_forward(x, self.weight.detach(), _detached(self.bias)), x)


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _tapped(self, F.linear(x, self.weight.detach(), _detached(self.bias)), x)


def _group_norm_forward(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return _tapped(self, F.group_norm(x, self.num_groups, self.weight.detach(), _detached(self.bias), self.eps), x)


def _layer_norm_forward(self: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    out = F.layer_norm(x, self.normalized_shape, self.weight.detach(), _detached(self.bias), self.eps)
    return _tapped(self, out, x)


def _embedding_forward(self: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    return _tapped(self, F.embedding(ids, self.weight.detach()), ids)


def _rnn_forward(self: nn.LSTM | nn.GRU, x: torch.Tensor,
                 hx: Any = None) -> tuple[torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    if hx is not None or x.dim() != 3:
        raise ValueError(f"per-sample gradients of {type(self).__name__} need a (batch, time, features) input "
                         "and no initial state")
    trace: dict[str, torch.Tensor] = {}
    projected = F.linear(x, self.weight_ih_l0.detach(), self.bias_ih_l0.detach())
    projected = _Tap.apply(projected, x.detach(), self, self.weight_ih_l0, trace)
    gates = projected.shape[-1]
    weights = [torch.eye(gates, dtype=x.dtype, device=x.device), self.weight_hh_l0.detach(),
               projected.new_zeros(gates), self.bias_hh_l0.detach()]
    h0 = projected.new_zeros(1, len(x), self.hidden_size)
    if isinstance(self, nn.LSTM):
        out, h, c = torch.lstm(projected, (h0, h0), weights, True, 1, 0.0, self.training, False, True)
        state: Any = (h, c)
    else:
        out, state = torch.gru(projected, h0, weights, True, 1, 0.0, self.training, False, True)
    trace["projected"] = projected.detach()
    trace["h_prev"] = torch.cat([h0.transpose(0, 1), out[:, :-1]], 1).detach()
    return out, state


def _supported(module: nn.Module) -> Callable[..., torch.Tensor] | None:
    kind = type(module)
    if kind in (nn.Conv1d, nn.Conv2d):
        ok = module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
        return _conv_forward if ok else None
    if kind is nn.Linear:
        return _linear_forward
    if kind in (nn.LSTM, nn.GRU):  # one layer, batch first, one direction, biases, no projection
        plain = module.num_layers == 1 and module.batch_first and not module.bidirectional and module.bias
        return _rnn_forward if plain and getattr(module, "proj_size", 0) == 0 else None
    if kind is nn.GroupNorm:
        return _group_norm_forward if module.affine else None
    if kind is nn.LayerNorm:
        return _layer_norm_forward if module.elementwise_affine else None
    if kind is nn.Embedding:  # Opacus's sampler gives padding rows a gradient: only plain embeddings
        plain = module.padding_idx is None and module.max_norm is None and not module.sparse
        return _embedding_forward if plain and not module.scale_grad_by_freq else None
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
                "Linear, affine GroupNorm/LayerNorm, plain Embedding, one-layer batch-first unidirectional "
                "LSTM/GRU with biases); "
                "train this model with 'ew' or 'hooks' (an LSTM/GRU then on Opacus's DPLSTM/DPGRU)")


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
