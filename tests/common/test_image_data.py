from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.config import RunConfig
from common.errors import DataError
from common.tasks import get_task

CONFIG = RunConfig(task="image-cnn", image_size=28)


def load(path: Path, config: RunConfig = CONFIG):
    return get_task("image-cnn").load(str(path), config)


def make_folder(root: Path, per_class: int = 3) -> Path:
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((40, 40), 60 + 120 * label + i, dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_pneumoniamnist_npz_keeps_the_official_splits(data_dir: Path):
    data = load(data_dir / "medmnist" / "pneumoniamnist.npz")
    assert len(data.train) == 4708 and len(data.test) == 624
    assert data.validation is not None and len(data.validation) == 524  # val_*: the server's validation split
    assert data.input_shape == (1, 28, 28) and data.num_classes == 2
    assert 0.0 <= data.train.x.min() and data.train.x.max() <= 1.0


def test_bloodmnist_is_rgb_with_eight_classes(data_dir: Path):
    data = load(data_dir / "medmnist" / "bloodmnist.npz", CONFIG.replace(max_samples=100))
    assert data.input_shape == (3, 28, 28) and data.num_classes == 8


def test_chest_xray_image_folder_with_train_and_test(data_dir: Path):
    config = CONFIG.replace(max_samples=40, image_size=32)
    data = load(data_dir / "chest_xray_kermany_224", config)
    assert data.input_shape == (3, 32, 32)  # the redistributor saved RGB JPEGs
    assert data.num_classes == 2 and len(data.train) == 40 and data.test is not None
    assert set(np.unique(data.train.y)) == {0, 1}


def test_dicom_files_in_class_folders_are_read(data_dir: Path, tmp_path: Path):
    dicoms = data_dir / "dicom_samples" / "pydicom_3.0.2"
    for name, source in (("ct", "CT_small.dcm"), ("mr", "MR_small.dcm"), ("us", "examples_rgb_color.dcm")):
        (tmp_path / name).mkdir()
        (tmp_path / name / source).symlink_to(dicoms / source)
    data = load(tmp_path)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 3
    per_image = data.train.x.reshape(3, -1)
    assert np.isfinite(per_image).all()
    assert (per_image.max(axis=1) > 0.5).all() and (per_image.min(axis=1) < 0.05).all()  # min-max scaled


def test_corrupt_png_is_named(tmp_path: Path):
    root = make_folder(tmp_path / "xray")
    (root / "PNEUMONIA" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"broken.png: not a readable image"):
        load(root)


def test_corrupt_dicom_is_named(tmp_path: Path):
    root = make_folder(tmp_path / "xray")
    (root / "NORMAL" / "scan.dcm").write_bytes(b"DICM" * 10)
    with pytest.raises(DataError, match=r"scan.dcm: not a readable DICOM image"):
        load(root)


def test_folder_without_class_folders_says_what_is_needed(tmp_path: Path):
    (tmp_path / "only").mkdir()
    with pytest.raises(DataError, match="needs one sub-folder per class"):
        load(tmp_path)


def test_npz_without_medmnist_keys_is_named(tmp_path: Path):
    path = tmp_path / "x.npz"
    np.savez(path, images=np.zeros((2, 28, 28)))
    with pytest.raises(DataError, match="x.npz: missing array 'train_images'"):
        load(path)
