"""Task `image-cnn`: 2-D medical images -> a GroupNorm CNN classifier."""

from common.tasks.base import Task
from common.tasks.image_cnn.dataset import load_images
from common.tasks.image_cnn.model import build_cnn

TASK = Task(name="image-cnn", load=load_images, build_model=build_cnn)
