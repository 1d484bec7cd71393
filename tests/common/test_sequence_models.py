"""The default sequence model (a 1-D convolutional front end, then an LSTM/GRU) under DP."""

from __future__ import annotations

import pytest
import torch

from common.config import RunConfig
from common.privacy import DPState
from common.data import Samples, local_split
from common.tasks import get_task, load_data, resolve
from tests.per_sample_check import assert_per_sample_gradients_are_each_samples_own


@pytest.mark.parametrize("model_name", ["cnn-lstm", "cnn-gru"])
def test_the_front_ends_per_sample_gradients_are_each_samples_own(model_name: str):
    torch.manual_seed(0)
    model = get_task("sequence-rnn").build_model((90, 11), 5, RunConfig(task="sequence-rnn", model=model_name))
    x, y = torch.randn(6, 90, 11), torch.randint(0, 5, (6,))
    assert_per_sample_gradients_are_each_samples_own(model, x, y)


def test_the_default_sequence_model_beats_the_majority_class_under_dp(mitbih_subset):
    """Small-data regression (seconds): four MIT-BIH patients' beats, a held-out quarter, record-level
    DP-SGD (four patients are far too few for patient-level DP to learn anything)."""
    config = resolve(RunConfig(task="sequence-rnn", data_path=str(mitbih_subset)))
    data = load_data(config)
    beats = Samples(data.train.x, data.train.y)  # no patient ids: the unit is the beat
    train, test = local_split(beats, 0.25, 0)
    task = get_task("sequence-rnn")
    torch.manual_seed(0)
    model = task.build_model(data.input_shape, data.num_classes, config)
    task.train(model, train, data.num_classes, config, DPState(1.0, 1.0, 1e-5), torch.device("cpu"), 0)
    scores = task.evaluate(model, test, torch.device("cpu"))
    assert scores["accuracy"] > scores["majority-baseline"] + 0.03, scores
    assert scores["auroc"] > 0.75, scores  # it ranks the rarer classes too
