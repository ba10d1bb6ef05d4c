"""Data sources: CIFAR-10 via Keras, the official CIFAR-10 python archive, or a folder of labelled images."""

import logging
import pickle
import tarfile
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import ServiceError
from service.imaging import decode_image
from training.framework import import_tensorflow

log = logging.getLogger(__name__)

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# Every format the service decodes (service.imaging.ACCEPTED_FORMATS), by the suffixes those files carry.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Fewer images than this in a class, or a largest class this many times the smallest, earns a warning.
FEW_IMAGES = 10
IMBALANCE_RATIO = 5
KERAS_CIFAR10 = "cifar10"
# Generous enough for any photo in a training folder; serving has its own, configurable limit.
_FOLDER_MAX_PIXELS = 100_000_000


class DataError(Exception):
    """A data source that cannot be read: wrong layout, no images, or an undecodable file."""


@dataclass
class Dataset:
    """Images as raw uint8 RGB, NHWC, with integer labels indexing `class_names`."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> "Dataset":
        """The examples at `indices`, in that order."""
        return Dataset(self.images[indices], self.labels[indices], self.class_names)


@dataclass
class Splits:
    """A training split and the held-out split that evaluation and early choices use."""

    train: Dataset
    validation: Dataset
    source: str
    skipped_files: list[str] = field(default_factory=list)


def load_splits(
    source: str,
    *,
    image_size: tuple[int, int] = (32, 32),
    validation_fraction: float = 0.1,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    skip_invalid: bool = False,
) -> Splits:
    """Open `source`: `cifar10` (Keras download), a CIFAR-10 python archive or folder, or an image folder.

    CIFAR-10 sources use their official test split as validation; an image folder has none, so a stratified,
    seeded `validation_fraction` of it is held out.
    """
    if source == KERAS_CIFAR10:
        train, test = load_keras_cifar10()
        return Splits(train, test, "keras.datasets.cifar10")
    path = Path(source)
    if not path.exists():
        raise DataError(f"data source {source!r} does not exist (nor is it {KERAS_CIFAR10!r})")
    if _is_cifar_python(path):
        train, test = load_cifar_python(path)
        return Splits(train, test, f"CIFAR-10 python batches at {path}")
    if path.is_dir():
        dataset, skipped = load_image_folder(path, size=image_size, class_names=class_names, skip_invalid=skip_invalid)
        train, validation = stratified_split(dataset, validation_fraction, seed)
        return Splits(train, validation, f"image folder {path}", skipped)
    raise DataError(f"{source!r} is neither a CIFAR-10 python archive/folder nor a folder of class folders")


def load_keras_cifar10() -> tuple[Dataset, Dataset]:
    """CIFAR-10 through `keras.datasets.cifar10.load_data()` (downloads on first use)."""
    import_tensorflow()
    import keras

    (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    names = list(CIFAR10_CLASSES)
    return (
        Dataset(x_train.astype(np.uint8), y_train.reshape(-1).astype(np.int64), names),
        Dataset(x_test.astype(np.uint8), y_test.reshape(-1).astype(np.int64), names),
    )


def _is_cifar_python(path: Path) -> bool:
    if path.is_dir():
        return (path / "data_batch_1").exists() or (path / "cifar-10-batches-py" / "data_batch_1").exists()
    return path.is_file() and tarfile.is_tarfile(path)


def load_cifar_python(path: Path) -> tuple[Dataset, Dataset]:
    """The official `cifar-10-python.tar.gz`, or the `cifar-10-batches-py/` folder it unpacks to."""
    batches: dict[str, dict[bytes, Any]] = {}
    if path.is_dir():
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
        for member in folder.iterdir():
            if member.name.startswith(("data_batch_", "test_batch", "batches.meta")):
                batches[member.name] = _unpickle(member.read_bytes(), member)
    else:
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                name = Path(member.name).name
                if member.isfile() and name.startswith(("data_batch_", "test_batch", "batches.meta")):
                    extracted = archive.extractfile(member)
                    assert extracted is not None  # a regular file always extracts
                    batches[name] = _unpickle(extracted.read(), path / member.name)
    train_names = sorted(name for name in batches if name.startswith("data_batch_"))
    if not train_names or "test_batch" not in batches:
        raise DataError(f"{path} holds no CIFAR-10 data_batch_* and test_batch files")
    names = list(CIFAR10_CLASSES)
    if "batches.meta" in batches:
        names = [name.decode() for name in batches["batches.meta"][b"label_names"]]
    train = _concat([_cifar_batch(batches[name], names) for name in train_names])
    return train, _cifar_batch(batches["test_batch"], names)


def _unpickle(raw: bytes, origin: Path) -> dict[bytes, Any]:
    try:
        result: dict[bytes, Any] = pickle.loads(raw, encoding="bytes")
    except Exception as error:
        raise DataError(f"{origin} is not a CIFAR-10 python batch: {error}") from error
    return result


def _cifar_batch(batch: dict[bytes, Any], names: list[str]) -> Dataset:
    # Rows are 3072 bytes: the red plane, then green, then blue, each 32x32 row-major.
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Dataset(np.ascontiguousarray(images), np.asarray(batch[b"labels"], dtype=np.int64), names)


def _concat(parts: Iterable[Dataset]) -> Dataset:
    parts = list(parts)
    return Dataset(
        np.concatenate([part.images for part in parts]),
        np.concatenate([part.labels for part in parts]),
        parts[0].class_names,
    )


def load_image_folder(
    root: Path,
    *,
    size: tuple[int, int],
    class_names: Sequence[str] | None = None,
    skip_invalid: bool = False,
) -> tuple[Dataset, list[str]]:
    """Read `root/<class>/<image>` in any format the service decodes, resized to `size`; classes sorted unless given.

    Folders and files whose names start with a dot are ignored; other files, sub-folders and broken links are
    skipped and counted. A class left without images (none found, or none decodable with `skip_invalid`) is left
    out with a warning, or is an error where `class_names` names it; at least two classes must have images. An
    undecodable file fails the load with its path, or with `skip_invalid` is skipped and returned in the list of
    skipped paths. What was skipped, and the images per class, are logged.
    """
    root = Path(root)
    found = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    names = list(class_names) if class_names else found
    missing = [name for name in names if not (root / name).is_dir()]
    if missing:
        raise DataError(f"{root} has no folder for classes {missing}")
    by_class = {name: _class_images(root / name) for name in names}
    _warn_of_aliases(root, names)
    by_class = _with_images(by_class, root, explicit=bool(class_names), why="holds no images")
    names = list(by_class)
    files = [(path, label) for label, name in enumerate(names) for path in by_class[name]]

    def decode(path: Path) -> np.ndarray | str:
        try:
            return decode_image(path.read_bytes(), filename=str(path), size=size, max_pixels=_FOLDER_MAX_PIXELS)
        except ServiceError as error:
            return error.detail

    with ThreadPoolExecutor() as pool:
        decoded = dict(zip((path for path, _ in files), pool.map(decode, (path for path, _ in files)), strict=True))
    failures = [(str(path), result) for path, result in decoded.items() if isinstance(result, str)]
    if failures and not skip_invalid:
        listing = "\n  ".join(f"{path}: {reason}" for path, reason in failures[:20])
        raise DataError(f"{len(failures)} file(s) could not be decoded (use --skip-invalid to skip):\n  {listing}")
    for path, reason in failures:
        log.warning("skipped undecodable image path=%s reason=%s", path, reason)
    good = {name: [path for path in paths if not isinstance(decoded[path], str)] for name, paths in by_class.items()}
    good = _with_images(good, root, explicit=bool(class_names), why="holds no image that could be decoded")
    names = list(good)
    _report_counts({name: len(paths) for name, paths in good.items()})
    images = np.stack([decoded[path] for paths in good.values() for path in paths])
    labels = np.asarray([label for label, paths in enumerate(good.values()) for _ in paths], dtype=np.int64)
    return Dataset(images, labels, names), [path for path, _ in failures]


def _class_images(folder: Path) -> list[Path]:
    """The images of one class folder, by suffix; what else it holds is counted and logged, dot-files ignored."""
    images, skipped = [], Counter[str]()
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            skipped["sub-folders"] += 1  # a class is one folder: images further down are not read
        elif not path.is_file():
            skipped["broken-links"] += 1
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            skipped[path.suffix.lower() or "no-suffix"] += 1
    if skipped:
        listing = " ".join(f"{what}={count}" for what, count in skipped.items())
        log.warning("skipped in class folder %r (not images, by suffix or kind): %s", folder.name, listing)
    return images


def _warn_of_aliases(root: Path, names: list[str]) -> None:
    """Warn of class folders that are one folder (a link to another): the same images under two labels."""
    by_target: dict[Path, list[str]] = {}
    for name in names:
        by_target.setdefault((root / name).resolve(), []).append(name)
    for aliases in by_target.values():
        if len(aliases) > 1:
            log.warning("class folders %s are the same folder: the same images under %d labels", aliases, len(aliases))


def _with_images(by_class: dict[str, list[Path]], root: Path, *, explicit: bool, why: str) -> dict[str, list[Path]]:
    """The classes that have images. One that has none is an error if it was named (`explicit`), else left out
    with a warning; fewer than two classes left is an error."""
    empty = [name for name, paths in by_class.items() if not paths]
    if empty and explicit:
        raise DataError(f"class folder(s) {empty} in {root}: each {why}")
    for name in empty:
        log.warning("class folder %r %s: it is left out", name, why)
    kept = {name: paths for name, paths in by_class.items() if paths}
    if len(kept) < 2:
        has = f"images of one class only ({next(iter(kept))!r})" if kept else "no images in class folders"
        raise DataError(
            f"{root} has {has}; a classifier needs at least two classes: {root}/<class>/<image>, with the "
            f"suffixes {' '.join(sorted(IMAGE_SUFFIXES))}"
        )
    return kept


def _report_counts(counts: dict[str, int]) -> None:
    """Log the images per class; warn of tiny classes and of a badly imbalanced set."""
    log.info("images per class: %s", " ".join(f"{name}={count}" for name, count in counts.items()))
    few = {name: count for name, count in counts.items() if count < FEW_IMAGES}
    if few:
        log.warning("few images in %s: fewer than %d per class gives an unreliable model", few, FEW_IMAGES)
    smallest, largest = min(counts.values()), max(counts.values())
    if smallest and largest / smallest >= IMBALANCE_RATIO:
        log.warning(
            "imbalanced classes: the largest has %d images, the smallest %d (%.0fx); the model will lean to the large",
            largest, smallest, largest / smallest,
        )  # fmt: skip


def stratified_split(dataset: Dataset, validation_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out `validation_fraction` of each class (at least one image of a class with two or more)."""
    if not 0 < validation_fraction < 1:
        raise DataError(f"validation fraction must be between 0 and 1, not {validation_fraction}")
    rng = np.random.default_rng(seed)
    train_parts, validation_parts, unvalidated = [], [], []
    for label in np.unique(dataset.labels):
        members = rng.permutation(np.flatnonzero(dataset.labels == label))
        count = round(len(members) * validation_fraction)
        count = min(max(count, 1), len(members) - 1) if len(members) > 1 else 0
        validation_parts.append(members[:count])
        train_parts.append(members[count:])
        if count == 0:
            unvalidated.append(dataset.class_names[label])
    train_indices = rng.permutation(np.concatenate(train_parts))
    validation_indices = np.sort(np.concatenate(validation_parts))
    if len(validation_indices) == 0:
        raise DataError("no image can be held out for validation: every class has a single image; add images")
    if unvalidated:
        log.warning("classes %s have one image each: it trains, and nothing of theirs is validated", unvalidated)
    return dataset.subset(train_indices), dataset.subset(validation_indices)
