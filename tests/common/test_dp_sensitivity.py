"""DP-SGD's guarantee holds only if one privacy unit moves the clipped gradient sum by at most C.

Opacus adds noise of standard deviation noise x C to the sum of clipped per-unit
gradients and accounts as if adding or removing one unit (a record, or a patient where
the data names patients) changed that sum by at most C (max-grad-norm). A loss in which
one record's gradient depends on the others (a weighted mean divided by the batch's
total weight, class weights from every label) breaks this: issue 17 measured 4.62 C on
Switzerland's heart-disease data. These tests run each task's own training under DP
(noise 0, sample rate 1 so every unit is in the first batch) on neighbouring data sets
and read the clipped sum from Opacus's optimiser, whatever per-sample machinery the
task uses (Opacus's hooks for tabular, fedward's layers for the others).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.optimizers import DPOptimizer

from common.config import RunConfig
from common.data import Samples
from common.privacy import DPState
from common.tasks import get_task
from common.training import dp_plan

CPU = torch.device("cpu")

CASES = {  # task, model, one input's shape, classes
    "tabular-logreg": ("tabular", "logreg", (6,), 2),
    "tabular-mlp": ("tabular", "mlp", (6,), 2),
    "image-cnn": ("image-cnn", "", (1, 16, 16), 3),
    "sequence-lstm": ("sequence-rnn", "lstm", (20, 4), 5),
    "sequence-gru": ("sequence-rnn", "gru", (20, 4), 5),
    "sequence-cnn-lstm": ("sequence-rnn", "", (20, 4), 5),  # the task's default model
    "image-gan": ("image-gan", "", (1, 16, 16), 2),
}


@contextmanager
def clipped_sums() -> Iterator[list[torch.Tensor]]:
    """Every clipped per-unit gradient sum Opacus's optimiser forms, before its noise."""
    sums: list[torch.Tensor] = []
    original = DPOptimizer.add_noise  # called on the clipped sum, whichever clipping formed it

    def spy(self: DPOptimizer) -> None:
        sums.append(torch.cat([p.summed_grad.detach().flatten().clone() for p in self.params]))
        original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DPOptimizer, "add_noise", spy)
        yield sums


def first_clipped_sum(case: str, samples: Samples, clip: float, batch_size: int = 0,
                      class_weights: list[float] | None = None, **settings: object) -> torch.Tensor:
    """The clipped sum of the first DP step of the task's own training, every unit sampled. Neighbouring
    data sets are compared under one run config: pass the larger one's `batch_size` (default len + 1)."""
    task_name, model_name, _, classes = CASES[case]
    shape = samples.x.shape[1:]
    task = get_task(task_name)
    config = RunConfig(task=task_name, model=model_name, batch_size=batch_size or len(samples) + 1, local_epochs=1,
                       num_server_rounds=1, lr=task.default_dp_lr, max_grad_norm=clip, **settings)
    assert dp_plan(samples, config).sample_rate == 1.0
    torch.manual_seed(0)
    model = task.build_model(shape, classes, config)
    with clipped_sums() as sums:
        task.train(model, samples, classes, config, DPState(0.0, clip, 1e-5, class_weights=class_weights), CPU, 5)
    return sums[0]


def imbalanced(case: str, count: int, seed: int) -> Samples:
    """Random inputs, labels mostly of class 0 (so class weights would be far from 1)."""
    _, _, shape, classes = CASES[case]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, *shape)).astype(np.float32)
    if len(shape) == 3:
        x = rng.random((count, *shape), dtype=np.float32)
    y = np.where(rng.random(count) < 0.8, 0, rng.integers(1, classes, count)).astype(np.int64)
    y[:classes] = np.arange(classes)
    return Samples(x, y)


@pytest.mark.parametrize("case", sorted(CASES))
def test_removing_one_record_moves_the_clipped_sum_by_at_most_c(case: str):
    worst = 0.0
    samples = imbalanced(case, 14, seed=0)
    for clip in (0.05, 1.0, 5.0):  # clipping binds on every record, on some, on none
        full = first_clipped_sum(case, samples, clip)
        for gone in np.random.default_rng(int(clip * 100)).choice(len(samples), 2, replace=False):
            rest = samples.take(np.delete(np.arange(len(samples)), gone))
            change = float((full - first_clipped_sum(case, rest, clip, len(samples) + 1)).norm())
            worst = max(worst, change / clip)
    print(f"{case}: largest change {worst:.3f} C")
    assert worst <= 1 + 1e-4


def test_switzerland_records_move_the_clipped_sum_by_at_most_c(data_dir: Path):
    """The hospital where issue 17 measured 4.62 C: its own training split, as the hospital trains."""
    from client.hospital import hospital_data

    path = data_dir / "heart_disease_uci" / "processed.switzerland.data"
    train = hospital_data(RunConfig(data_path=""), {"data-path": str(path)}).train
    worst = 0.0
    for clip in (0.1, 1.0):
        full = first_clipped_sum("tabular-logreg", train, clip)
        for gone in range(0, len(train), 4):
            rest = train.take(np.delete(np.arange(len(train)), gone))
            change = float((full - first_clipped_sum("tabular-logreg", rest, clip, len(train) + 1)).norm())
            worst = max(worst, change / clip)
    print(f"switzerland: largest change {worst:.3f} C")
    assert worst <= 1 + 1e-4


def with_patients(case: str, seed: int) -> Samples:
    """Six patients; patient 'p0' has many records (more than records-per-patient)."""
    samples = imbalanced(case, 30, seed)
    owners = np.array(["p0"] * 20 + [f"p{1 + i % 5}" for i in range(10)], dtype=object)
    return Samples(samples.x, samples.y, patients=owners)


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_patient_moves_the_clipped_sum_by_at_most_c(case: str):
    """User-level DP (McMahan et al. 2018): a patient's records are clipped together, so a
    patient with 20 records moves the sum by at most C, not 20 C."""
    worst = 0.0
    samples = with_patients(case, 0)
    for clip in (0.05, 1.0):
        full = first_clipped_sum(case, samples, clip)
        for gone in ("p0", "p3"):
            rest = samples.take(np.flatnonzero(samples.patients != gone))
            change = float((full - first_clipped_sum(case, rest, clip, len(samples) + 1)).norm())
            worst = max(worst, change / clip)
    print(f"{case}: largest change of one patient {worst:.3f} C")
    assert worst <= 1 + 1e-4


def test_the_accountant_samples_patients():
    """Ten patients of 2-5 records, 3 patients per batch: 4 batches an epoch, sample rate 1/4, whatever
    the number of records; the accountant records that rate and every planned step."""
    rng = np.random.default_rng(0)
    owners = np.repeat([f"patient-{i}" for i in range(10)], rng.integers(2, 6, 10)).astype(object)
    samples = Samples(rng.normal(size=(len(owners), 6)).astype(np.float32),
                      (rng.random(len(owners)) < 0.5).astype(np.int64), patients=owners)
    config = RunConfig(batch_size=3, local_epochs=2, num_server_rounds=5, lr=0.1)
    plan = dp_plan(samples, config)
    assert (plan.unit, plan.units, plan.sample_rate, plan.steps_per_round) == ("patient", 10, 0.25, 8)
    assert plan.planned_steps == 40
    dp = DPState(1.0, 1.0, 1e-5)
    outcome = get_task("tabular").train(get_task("tabular").build_model((6,), 2, config), samples, 2, config, dp,
                                        CPU, 1)
    assert dp.history == [(1.0, 0.25, 8)]
    assert outcome.steps == plan.steps_per_round
    records = dp_plan(Samples(samples.x, samples.y), config)
    assert (records.unit, records.units, records.sample_rate) == ("record", len(owners), 1 / np.ceil(len(owners) / 3))


@pytest.mark.parametrize("task_name", ["tabular", "image-gan"])
def test_every_planned_step_is_taken_even_on_an_empty_batch(task_name: str):
    """Three records sampled at rate 1/3 for 30 steps: some batches are empty. Skipping them would
    leave fewer steps (and less noise) than accounted, and the step count would tell the server."""
    shape = (6,) if task_name == "tabular" else (1, 16, 16)
    rng = np.random.default_rng(0)
    samples = Samples(rng.random((3, *shape), dtype=np.float32), np.array([0, 1, 0]))
    config = RunConfig(task=task_name, batch_size=1, local_epochs=10, lr=0.01)
    dp = DPState(1.0, 1.0, 1e-5)
    task = get_task(task_name)
    outcome = task.train(task.build_model(shape, 2, config), samples, 2, config, dp, CPU, 0)
    assert sum(steps for _, _, steps in dp.history) == 30 == outcome.steps


def test_the_gan_generator_trains_on_a_fixed_batch_size():
    """The generator's step is released without noise of its own: its batch must not be the real batch's
    (Poisson) size, which the update would otherwise carry."""
    task = get_task("image-gan")
    config = RunConfig(task="image-gan", batch_size=4, local_epochs=2, lr=2e-4)
    samples = Samples(np.random.default_rng(0).random((13, 1, 16, 16), dtype=np.float32), np.arange(13) % 2)
    model = task.build_model((1, 16, 16), 2, config)
    sizes: list[int] = []
    forward = model.generator.forward
    model.generator.forward = lambda z, y: (sizes.append(len(z)), forward(z, y))[1]  # type: ignore[method-assign]
    task.train(model, samples, 2, config, DPState(1.0, 1.0, 1e-5), CPU, 0)
    assert sizes and set(sizes) == {config.batch_size}


def test_the_generated_images_pull_is_clipped_with_each_real_unit():
    """Each unit's clipped term is its real images' gradient plus the generated images' mean gradient
    (clipped together, as DP-GAN clips a real and a generated image together). Clipped apart, the clip
    budget went to the part both share and the DP discriminator ignored labels (TSTR at the majority share
    on every seed, common/tasks/image_gan/train.py). So the generator's weights, and nothing about the
    data, change the clipped sum; and each term is still at most C."""
    samples = imbalanced("image-gan", 14, seed=0)
    clip = 0.05
    base = first_clipped_sum("image-gan", samples, clip)
    from common.tasks.image_gan.model import ConditionalGAN

    original = ConditionalGAN.__init__

    def other_generator(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        with torch.no_grad():
            for p in self.generator.parameters():
                p.add_(0.5 * torch.randn_like(p))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ConditionalGAN, "__init__", other_generator)
        moved = first_clipped_sum("image-gan", samples, clip)
    assert float((base - moved).norm()) > 0.01 * clip, "the generated images' gradient is inside the clipped sum"
    assert float(base.norm()) <= len(samples) * clip * (1 + 1e-4)


@pytest.mark.parametrize("patients", [False, True])
def test_factored_linear_clipping_equals_clipping_the_formed_gradients(patients: bool):
    """The scattering head's Linear weight keeps its per-sample gradients as factors (common/per_sample.py
    `Outer`): the clipped sum DP-SGD noises must equal the one from the formed per-sample gradients,
    clipping binding or not, per record and per patient."""
    from common import per_sample

    samples = with_patients("image-cnn", 1) if patients else imbalanced("image-cnn", 14, seed=1)

    def formed(layer, x, grad):  # type: ignore[no-untyped-def]
        return {p: (g.dense() if isinstance(g, per_sample.Outer) else g)
                for p, g in factored(layer, x, grad).items()}

    factored = per_sample._outer_linear
    for clip in (0.05, 100.0):
        mine = first_clipped_sum("image-cnn", samples, clip)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(per_sample, "_outer_linear", formed)
            theirs = first_clipped_sum("image-cnn", samples, clip)
        assert torch.allclose(mine, theirs, atol=1e-6, rtol=1e-4), float((mine - theirs).abs().max())


WEIGHTED = ("sequence-cnn-lstm", "tabular-logreg", "image-cnn")  # layers and Opacus's hooks


def skew_weights(case: str, samples: Samples) -> list[float]:
    """The weights a hospital would train with: common/class_prior.py's rule on its histogram."""
    from common.class_prior import training_weights

    weights = training_weights(np.bincount(samples.y, minlength=CASES[case][3]))
    assert weights.min() < 0.7 and weights.max() == 1.0
    return [float(w) for w in weights]


@pytest.mark.parametrize("case", WEIGHTED)
def test_class_weights_after_clipping_keep_one_record_and_one_patient_within_c(case: str):
    """A class weight (<= 1) multiplies a unit's gradient after it is clipped: removing a record or a
    patient of any class still moves the sum by at most C; and the weights do act (the sum changes)."""
    worst = 0.0
    for samples in (imbalanced(case, 14, seed=1), with_patients(case, 1)):
        weights = skew_weights(case, samples)
        for clip in (0.05, 1.0):
            full = first_clipped_sum(case, samples, clip, class_weights=weights)
            assert float((full - first_clipped_sum(case, samples, clip)).norm()) > 1e-3 * clip
            units = samples.patients if samples.patients is not None else np.arange(len(samples))
            for gone in np.unique(units)[:4]:
                rest = samples.take(np.flatnonzero(units != gone))
                change = float((full - first_clipped_sum(case, rest, clip, len(samples) + 1,
                                                         class_weights=weights)).norm())
                worst = max(worst, change / clip)
    print(f"{case} class-weighted: largest change {worst:.3f} C")
    assert worst <= 1 + 1e-4


def test_a_weighted_record_moves_the_sum_by_its_weight_times_its_clipped_gradient():
    """Clipped first, weighted after: one class-0 record of weight 0.25 adds exactly 0.25 of its
    clipped gradient (weighting before clipping would be undone by the clip)."""
    case = "sequence-cnn-lstm"
    one = imbalanced(case, 6, seed=2).take(np.array([0]))
    assert one.y[0] == 0
    clip = 0.05  # binds: the clipped gradient has norm C
    plain = first_clipped_sum(case, one, clip)
    weighted = first_clipped_sum(case, one, clip, class_weights=[0.25, 1, 1, 1, 1])
    assert float(plain.norm()) == pytest.approx(clip, rel=1e-3)
    assert torch.allclose(weighted, 0.25 * plain, atol=1e-7)
