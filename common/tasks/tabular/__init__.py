"""Task `tabular`: clinical feature tables -> logistic regression or an MLP."""

from common.tasks.base import Task
from common.tasks.tabular.dataset import load_tabular
from common.tasks.tabular.model import DEFAULT_MODEL, build_tabular_model

TASK = Task(
    name="tabular", load=load_tabular, build_model=build_tabular_model,
    default_lr=0.1,
    default_dp_lr=0.1, default_model=DEFAULT_MODEL,
)
