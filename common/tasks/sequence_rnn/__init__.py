"""Task `sequence-rnn`: ECG heartbeats -> an LSTM or GRU classifier (AAMI classes)."""

from functools import partial

from common.tasks.base import Task
from common.tasks.sequence_rnn.dataset import load_sequences
from common.tasks.sequence_rnn.model import build_rnn
from common.training import fit_classifier

# Under DP, per-sample gradients through torch's expanded weights: the same
# gradients as Opacus's hooks (tests/common/test_dp_modes.py), in less time
# (benchmarks/dp_step.py).
TASK = Task(
    name="sequence-rnn", load=load_sequences, build_model=build_rnn, train=partial(fit_classifier, grad_sample_mode="ew"),
)
