"""One check that the per-sample gradients fedward's 'layers' mode gives a classifier are each sample's own."""

from __future__ import annotations

import torch
from torch import nn

from common.per_sample import dense, per_sample_layers


def assert_per_sample_gradients_are_each_samples_own(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Cross-entropy gradients computed one sample at a time equal `grad_sample` of one batched backward,
    and no summed gradient is computed (DP throws it away)."""
    expected = []
    for i in range(len(y)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        expected.append({n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad(set_to_none=True)
    with per_sample_layers(model):
        nn.functional.cross_entropy(model(x), y).backward()
    for name, param in model.named_parameters():
        assert param.grad is None, f"{name}: the summed gradient was computed"
        for i, want in enumerate(expected):
            assert torch.allclose(dense(param.grad_sample)[i], want[name], atol=1e-5, rtol=1e-4), (name, i)
