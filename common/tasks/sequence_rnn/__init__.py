"""Task `sequence-rnn`: ECG heartbeats -> an LSTM or GRU classifier (AAMI classes)."""

from common.tasks.base import Task
from common.tasks.sequence_rnn.dataset import load_sequences
from common.tasks.sequence_rnn.model import build_rnn

TASK = Task(name="sequence-rnn", load=load_sequences, build_model=build_rnn)
