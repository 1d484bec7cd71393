"""Task `image-gan`: a conditional DCGAN on medical images, DP on the discriminator."""

from common.tasks.base import Task
from common.tasks.image_cnn.dataset import load_images
from common.tasks.image_gan.model import build_gan
from common.tasks.image_gan.synthetic import finish_gan
from common.tasks.image_gan.train import evaluate_gan, train_gan

TASK = Task(
    name="image-gan", load=load_images, build_model=build_gan, train=train_gan,
    evaluate=evaluate_gan, finish=finish_gan, default_lr=2e-4, default_dp_lr=2e-4,
    # 20 rounds, chosen on PneumoniaMNIST's validation split at epsilon 10 (5 hospitals, 3 seeds): train-on-
    # synthetic / train-on-real 0.862 against 0.848 at 30 and 0.793 at 10; 3 (the old default) and 40 answered
    # the majority class on seed 0, as did 20 rounds of 3 local epochs: at a fixed epsilon more steps mean more
    # noise per step (docs/benchmarks.md, "GAN: ... default rounds chosen on the validation split"); ~100 s here
    default_rounds=20,
    classifier=False,
)
