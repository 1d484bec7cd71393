"""The per-sample gradients each task trains with under DP are the true ones.

image-cnn, sequence-rnn and the image-gan discriminator use fedward's own per-layer
backward ("layers", common/per_sample.py) instead of Opacus's hooks, because it is
faster (benchmarks/dp_step.py); DP is only as good as these gradients, so each is
checked against gradients computed one sample at a time, and a whole clipped step
against Opacus's own hooks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.layers import DPLSTM
from torch import nn

from common.config import RunConfig
from common.data import Samples
from common.errors import ConfigError
from common.per_sample import dense, per_sample_layers
from common.privacy import DPState, end_private, make_private
from common.tasks import get_task
from common.tasks.image_gan.model import Discriminator
from common.tasks.sequence_rnn.model import OPACUS_LAYERS, RNNClassifier

CASES = {  # task, model, one input's shape, classes
    "cnn": ("image-cnn", "", (1, 28, 28), 2),
    "lstm": ("sequence-rnn", "lstm", (40, 1), 5),
    "gru": ("sequence-rnn", "gru", (40, 1), 5),
}


def mode_of(task_name: str) -> str:
    train = get_task(task_name).train
    return getattr(train, "keywords", {}).get("grad_sample_mode", "hooks")


@pytest.mark.parametrize("case", sorted(CASES))
def test_dp_training_in_the_tasks_mode_runs_on_poisson_batches(case: str):
    """Poisson batches vary in size (1, 2, ... or empty): training goes through and
    the weights stay finite."""
    task_name, model_name, shape, classes = CASES[case]
    task = get_task(task_name)
    config = RunConfig(task=task_name, model=model_name, lr=0.1, batch_size=4, local_epochs=2)
    rng = np.random.default_rng(1)
    samples = Samples(rng.random((9, *shape), dtype=np.float32), np.arange(9, dtype=np.int64) % classes)
    model = task.build_model(shape, classes, config)
    dp = DPState(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    outcome = task.train(model, samples, classes, config, dp, torch.device("cpu"), 3)
    assert outcome.steps > 0 and math.isfinite(outcome.loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert dp.history and dp.history[-1][0] == 1.0, "the accountant recorded the noisy steps"


# fedward's own per-layer mode ("layers", common/per_sample.py): every task but tabular trains with it.

def _one_at_a_time(model: nn.Module, loss_of, inputs: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    expected = []
    for i in range(len(inputs[0])):
        model.zero_grad()
        loss_of(model, [t[i : i + 1] for t in inputs], slice(i, i + 1)).backward()
        expected.append({n: p.grad.clone() for n, p in model.named_parameters()})
    return expected


def _layer_models() -> dict[str, tuple[nn.Module, object, list[torch.Tensor]]]:
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (5,))
    real = torch.rand(5)
    return {
        "image-cnn": (get_task("image-cnn").build_model((1, 28, 28), 3, RunConfig()),
                      lambda m, i, rows: nn.functional.cross_entropy(m(i[0]), labels[rows], reduction="mean"),
                      [torch.rand(5, 1, 28, 28)]),
        "gan-discriminator": (Discriminator(channels=1, num_classes=3, size=28),
                              lambda m, i, rows: nn.functional.binary_cross_entropy_with_logits(
                                  m(i[0], i[1]), real[rows], reduction="mean"),
                              [torch.rand(5, 1, 28, 28), labels]),
        **{cell: (get_task("sequence-rnn").build_model((40, 4), 3, RunConfig(task="sequence-rnn", model=cell)),
                  lambda m, i, rows: nn.functional.cross_entropy(m(i[0]), labels[rows], reduction="mean"),
                  [torch.randn(5, 40, 4)]) for cell in ("lstm", "gru")},
        "conv1d-layernorm": (nn.Sequential(nn.Conv1d(2, 4, 5, stride=2, padding=2, dilation=2), nn.ReLU(),
                                           nn.Flatten(), nn.LayerNorm(32), nn.Linear(32, 3)),
                             lambda m, i, rows: nn.functional.cross_entropy(m(i[0]), labels[rows], reduction="mean"),
                             [torch.rand(5, 2, 20)]),
    }


@pytest.mark.parametrize("case", ["image-cnn", "gan-discriminator", "lstm", "gru", "conv1d-layernorm"])
def test_layers_mode_gives_each_samples_own_gradient_and_no_summed_one(case: str):
    assert mode_of("image-cnn") == mode_of("sequence-rnn") == "layers"
    model, loss_of, inputs = _layer_models()[case]
    expected = _one_at_a_time(model, loss_of, inputs)
    model.zero_grad(set_to_none=True)
    everything = slice(None)
    with per_sample_layers(model):
        loss_of(model, inputs, everything).backward()
    for name, param in model.named_parameters():
        assert param.grad is None, f"{name}: the summed gradient is not computed (DP throws it away)"
        for i, want in enumerate(expected):
            assert torch.allclose(dense(param.grad_sample)[i], want[name], atol=1e-5, rtol=1e-4), (name, i)


def _image_model() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    build = lambda: get_task("image-cnn").build_model((1, 28, 28), 2, RunConfig())  # noqa: E731
    return build(), build(), torch.rand(8, 1, 28, 28), torch.randint(0, 2, (8,))


def _sequence_model(cell: str) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """The task's model (torch's LSTM/GRU) and the same model on Opacus's DPLSTM/DPGRU, which
    Opacus's hooks need; same parameter names, so one state dict fits both."""
    ours = get_task("sequence-rnn").build_model((30, 4), 3, RunConfig(task="sequence-rnn", model=cell))
    opacus = RNNClassifier(4, 3, cell, recurrent_layers=OPACUS_LAYERS)
    return ours, opacus, torch.randn(8, 30, 4), torch.randint(0, 3, (8,))


@pytest.mark.parametrize("case", ["image-cnn", "lstm", "gru"])
def test_layers_mode_gives_the_same_clipped_update_as_opacus_hooks(case: str):
    """One DP-SGD step without noise (clipping binds: max norm 0.01) moves the weights exactly as
    Opacus's own hooks mode does, and afterwards the model runs its own forwards again."""
    torch.manual_seed(0)
    ours, opacus, x, y = _image_model() if case == "image-cnn" else _sequence_model(case)
    base = {n: p.detach().clone() for n, p in ours.named_parameters()}
    after = {}
    for mode, model in (("hooks", opacus), ("layers", ours)):
        model.load_state_dict(base, strict=False)  # Opacus's DP layers add alias keys for the same weights
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
        wrapped, optimizer, _, _ = make_private(model, optimizer, loader, DPState(0.0, 0.01, 1e-5), mode)
        optimizer.expected_batch_size = 8  # the Poisson loader's expectation; fixed here to compare
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(wrapped(x), y).backward()
        optimizer.step()
        end_private(wrapped)
        state = model.state_dict()
        after[mode] = {n: state[n].clone() for n in base}
        if mode == "layers":
            assert all("forward" not in m.__dict__ for m in model.modules())
    moved = max(float((after["hooks"][n] - p).abs().max()) for n, p in base.items())
    assert moved > 1e-4
    for name, value in after["hooks"].items():
        assert torch.allclose(after["layers"][name], value, atol=1e-6), name


def test_layers_mode_refuses_a_layer_it_cannot_handle_naming_it():
    model = nn.ModuleDict({"rnn": nn.LSTM(1, 4), "head": nn.Linear(4, 2)})
    with pytest.raises(ConfigError, match=r"layer 'rnn' \(LSTM\).*train this model with 'ew' or 'hooks'"):
        per_sample_layers(model).__enter__()
    assert "forward" not in model["head"].__dict__, "nothing was switched"
    padded = nn.ModuleDict({"tokens": nn.Embedding(5, 3, padding_idx=0)})  # its padding row must get no gradient
    with pytest.raises(ConfigError, match=r"layer 'tokens' \(Embedding\)"):
        per_sample_layers(padded).__enter__()
    stacked = nn.ModuleDict({"rnn": nn.GRU(1, 4, num_layers=2, batch_first=True)})  # one layer only
    with pytest.raises(ConfigError, match=r"layer 'rnn' \(GRU\).*one-layer batch-first unidirectional"):
        per_sample_layers(stacked).__enter__()
    opacus = nn.ModuleDict({"rnn": DPLSTM(1, 4, batch_first=True)})  # a Python loop of its own cells
    with pytest.raises(ConfigError, match=r"layer 'rnn' \(DPLSTM\)"):
        per_sample_layers(opacus).__enter__()


def test_gan_discriminator_trains_in_layers_mode():
    task = get_task("image-gan")
    config = RunConfig(task="image-gan", lr=2e-4, batch_size=4, local_epochs=1)
    rng = np.random.default_rng(1)
    samples = Samples(rng.random((12, 1, 28, 28), dtype=np.float32), np.arange(12, dtype=np.int64) % 2)
    model = task.build_model((1, 28, 28), 2, config)
    generator_before = [p.detach().clone() for p in model.generator.parameters()]
    dp = DPState(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    outcome = task.train(model, samples, 2, config, dp, torch.device("cpu"), 3)
    assert outcome.steps > 0 and math.isfinite(outcome.loss)
    assert any(not torch.equal(a, b) for a, b in zip(generator_before, model.generator.parameters(), strict=True))
    assert all("forward" not in m.__dict__ for m in model.discriminator.modules()), "own forwards restored"


@pytest.mark.parametrize("case", ["image-cnn", "lstm", "conv1d-layernorm"])
def test_a_patients_gradient_is_the_mean_of_its_samples_gradients(case: str):
    """Patient-level DP clips one gradient per patient: the mean of that patient's samples' own
    gradients (computed one at a time here), whatever order the samples come in."""
    from common.training import per_unit_gradients

    model, loss_of, inputs = _layer_models()[case]
    expected = _one_at_a_time(model, loss_of, inputs)
    owner = torch.tensor([1, 0, 1, 2, 1])  # patient 1 has samples 0, 2 and 4
    model.zero_grad(set_to_none=True)
    with per_sample_layers(model):
        loss_of(model, inputs, slice(None)).backward()
        params = [p for p in model.parameters() if p.requires_grad]
        per_unit_gradients(params, owner, 3)
    for name, param in model.named_parameters():
        assert dense(param.grad_sample).shape[0] == 3, name
        for patient in range(3):
            mine = [expected[i][name] for i in range(5) if owner[i] == patient]
            assert torch.allclose(dense(param.grad_sample)[patient], torch.stack(mine).mean(0), atol=1e-5, rtol=1e-4)
