"""Task `image-gan`: a conditional DCGAN on medical images, DP on the discriminator."""

from common.tasks.base import Task
from common.tasks.image_cnn.dataset import load_images
from common.tasks.image_gan.model import build_gan
from common.tasks.image_gan.synthetic import finish_gan
from common.tasks.image_gan.train import evaluate_gan, train_gan

TASK = Task(
    name="image-gan", load=load_images, build_model=build_gan, train=train_gan,
    evaluate=evaluate_gan, finish=finish_gan, default_lr=2e-4, default_dp_lr=2e-4,
    classifier=False,
)
