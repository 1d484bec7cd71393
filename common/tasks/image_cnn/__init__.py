"""Task `image-cnn`: 2-D medical images -> a GroupNorm CNN classifier."""

from functools import partial

from common.tasks.base import Task
from common.tasks.image_cnn.dataset import load_images
from common.tasks.image_cnn.model import build_cnn
from common.training import fit_classifier

# Under DP, per-sample gradients from fedward's per-layer backward (common/per_sample.py):
# the same gradients as one sample at a time and the same update as Opacus's hooks
# (tests/common/test_dp_modes.py), in less time than hooks or expanded weights
# (benchmarks/dp_step.py).
TASK = Task(
    name="image-cnn", load=load_images, build_model=build_cnn, train=partial(fit_classifier, grad_sample_mode="layers"),
)
