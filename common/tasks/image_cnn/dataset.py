"""2-D medical images: MedMNIST .npz, ImageFolder trees of PNG/JPEG, DICOM.

Images become float32 (N, C, H, W) in [0, 1]. An ImageFolder tree has one
sub-folder per class (sorted names give the class numbers); if it has `train/`
and `test/` sub-folders, `test/` is the central test split. DICOM files (`.dcm`)
may sit in the class folders beside or instead of PNG/JPEG files.

Patients: where every file of a folder names its patient, DP protects each patient's
images together (common/training.py). DICOM files carry a PatientID; the chest X-ray
collection of Kermany et al. names them in the file name (`person12_virus_34.jpeg`:
patient person12; `IM-0115-0001.jpeg` and `NORMAL2-IM-0115-0001.jpeg`: image 1 of
IM-0115 / NORMAL2-IM-0115). Otherwise (MedMNIST, other names) the unit is the image.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.config import RunConfig
from common.data import Samples, TaskData, check_labels, skip_or_raise
from common.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
KERMANY_PATIENT = re.compile(r"^(person\d+)_|^((?:NORMAL2-)?IM-\d+)-\d+(?:-\d+)?$")
DICOM_SUFFIXES = (".dcm",)


def load_images(path: str, config: RunConfig) -> TaskData:
    p = Path(path)
    if not p.exists():
        raise DataError(
            f"data path {path} does not exist; pass a MedMNIST .npz file or an image folder"
        )
    if p.is_file():
        if p.suffix != ".npz":
            raise DataError(f"{path}: image data must be a MedMNIST .npz file or a folder")
        return load_medmnist(p)
    if (p / "train").is_dir():
        train = read_image_folder(p / "train", config)
        test = read_image_folder(p / "test", config) if (p / "test").is_dir() else None
        classes = train[1]
        if test is not None and test[1] != classes:
            raise DataError(
                f"{path}: train/ has classes {classes} but test/ has {test[1]}; "
                "both must hold the same class folders"
            )
        return TaskData(train[0], None if test is None else test[0], len(classes), path)
    samples, classes = read_image_folder(p, config)
    return TaskData(samples, None, len(classes), path)


def load_medmnist(path: Path) -> TaskData:
    """A MedMNIST v2 file: train_* go to the hospitals, test_* is the central test set,
    val_* (when present) the central validation split."""
    wanted = ("train_images", "train_labels", "test_images", "test_labels")
    try:
        with np.load(path) as npz:
            missing = [k for k in wanted if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: missing array {missing[0]!r}; a MedMNIST file has "
                    f"{', '.join(wanted)}"
                )
            arrays = {k: npz[k] for k in (*wanted, "val_images", "val_labels") if k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from err
    train = _medmnist_split(arrays["train_images"], arrays["train_labels"], path)
    test = _medmnist_split(arrays["test_images"], arrays["test_labels"], path)
    validation = None
    if "val_images" in arrays and "val_labels" in arrays:
        validation = _medmnist_split(arrays["val_images"], arrays["val_labels"], path)
        if validation.x.shape[1:] != train.x.shape[1:]:
            raise DataError(f"{path}: 'val_images' have shape {validation.x.shape[1:]} but train images "
                            f"{train.x.shape[1:]}")
    num_classes = int(max(train.y.max(), test.y.max())) + 1
    check_labels(train.y, num_classes, str(path))
    if validation is not None:
        check_labels(validation.y, max(2, num_classes), f"{path} (val_labels)")
    return TaskData(train, test, max(2, num_classes), str(path), validation=validation)


def _medmnist_split(images: np.ndarray, labels: np.ndarray, path: Path) -> Samples:
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        images = images.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{path}: images have shape {images.shape}, expected (N, H, W[, C])")
    x = images.astype(np.float32) / 255.0
    return Samples(np.ascontiguousarray(x), labels.reshape(-1).astype(np.int64))


def read_image_folder(root: Path, config: RunConfig) -> tuple[Samples, list[str]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise DataError(
            f"{root}: found {len(classes)} class folder(s); an image folder needs one "
            "sub-folder per class, at least two"
        )
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES:
                files.append((f, label))
    if not files:
        raise DataError(f"{root}: the class folders hold no PNG, JPEG or DICOM files")
    files = _subsample_files(files, config.max_samples, config.seed)
    channels = _channels(files)
    images, labels, patients = [], [], []
    for f, label in files:
        try:
            images.append(read_image(f, config.image_size, channels))
            labels.append(label)
            patients.append(patient_of(f))
        except DataError as err:
            skip_or_raise(err, "image", root)  # bad-files=skip: left out and counted
    if not images:
        raise DataError(f"{root}: none of the {len(files)} image files could be read")
    named = None if any(p is None for p in patients) else np.asarray(patients, dtype=object)
    return Samples(np.stack(images), np.asarray(labels, dtype=np.int64), patients=named), classes


def patient_of(path: Path) -> str | None:
    """The patient a file's image belongs to, where the file says so (else None)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        import pydicom

        try:
            patient = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
                          .get("PatientID", "")).strip()
        except Exception:  # unreadable headers were reported when the pixels were read
            return None
        return f"dicom:{patient}" if patient else None
    match = KERMANY_PATIENT.match(path.stem)
    return None if match is None else match.group(1) or match.group(2)


def _subsample_files(files: list[tuple[Path, int]], max_samples: int, seed: int) -> list[tuple[Path, int]]:
    """Draw the subsample before decoding: reading thousands of JPEGs is the slow part."""
    if max_samples <= 0 or len(files) <= max_samples:
        return files
    labels = np.asarray([label for _, label in files])
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        share = max(1, round(max_samples * len(members) / len(files)))
        picked.extend(rng.choice(members, size=min(share, len(members)), replace=False))
    return [files[i] for i in sorted(picked)]


def _channels(files: list[tuple[Path, int]]) -> int:
    """RGB if the first decodable image is colour, else grayscale."""
    for path, _ in files:
        if path.suffix.lower() in DICOM_SUFFIXES:
            return 1
        try:
            with Image.open(path) as image:
                return 3 if image.mode in ("RGB", "RGBA", "P") else 1
        except (OSError, UnidentifiedImageError) as err:
            skip_or_raise(DataError(f"{path}: not a readable image ({err}); remove or replace it"), "image")
    return 1


def read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image file as float32 (C, size, size) in [0, 1]; a bad file is named."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        image = _dicom_to_image(path)
    else:
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (OSError, UnidentifiedImageError, SyntaxError) as err:
            raise DataError(f"{path}: not a readable image ({err}); remove or replace it") from err
    image = image.convert("RGB" if channels == 3 else "L").resize((size, size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _dicom_to_image(path: Path) -> Image.Image:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        pixels = pydicom.dcmread(path).pixel_array.astype(np.float32)
    except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError, EOFError) as err:
        raise DataError(f"{path}: not a readable DICOM image ({err}); remove or replace it") from err
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):  # colour (e.g. ultrasound)
        pixels = pixels[..., :3].mean(axis=-1)
    elif pixels.ndim == 3:  # a multi-frame series: take the middle frame
        pixels = pixels[pixels.shape[0] // 2]
    if pixels.ndim != 2:
        raise DataError(f"{path}: DICOM pixel data of shape {pixels.shape} is not a 2-D image")
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
    return Image.fromarray(scaled.astype(np.uint8), mode="L")
