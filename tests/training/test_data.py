"""Data sources: an image folder, the CIFAR-10 python archive and folder, Keras's loader, and the split."""

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import COLOURS, make_image_folder
from training.data import (
    CIFAR10_CLASSES,
    DataError,
    Dataset,
    load_image_folder,
    load_splits,
    stratified_split,
)


def test_image_folder_classes_sorted_and_images_resized(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", per_class=4, size=(50, 20))
    (root / "green" / "notes.txt").write_text("ignored: not an image suffix")
    dataset, skipped = load_image_folder(root, size=(32, 32))
    assert dataset.class_names == sorted(COLOURS)
    assert dataset.images.shape == (12, 32, 32, 3)
    assert dataset.images.dtype == np.uint8
    assert skipped == []
    red = dataset.images[dataset.labels == dataset.class_names.index("red")]
    assert red[..., 0].mean() > 150 > red[..., 2].mean()


def test_image_folder_with_a_given_class_list(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", per_class=2)
    dataset, _ = load_image_folder(root, size=(32, 32), class_names=["red", "blue"])
    assert dataset.class_names == ["red", "blue"]
    assert len(dataset) == 4
    with pytest.raises(DataError, match="purple"):
        load_image_folder(root, size=(32, 32), class_names=["red", "purple"])


def test_undecodable_file_fails_with_its_path_or_is_skipped(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", per_class=2)
    broken = root / "red" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        load_image_folder(root, size=(32, 32))
    dataset, skipped = load_image_folder(root, size=(32, 32), skip_invalid=True)
    assert skipped == [str(broken)]
    assert len(dataset) == 6


def test_empty_or_missing_sources_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_splits(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_splits(str(tmp_path / "empty"))


def cifar_batch(count: int, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        b"labels": rng.integers(0, 10, count).tolist(),
        b"batch_label": b"testing",
    }


def write_cifar_folder(folder: Path, per_batch: int = 6) -> dict[str, dict[bytes, object]]:
    """The official layout: data_batch_1..5, test_batch and batches.meta, pickled."""
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": cifar_batch(per_batch, i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(per_batch, 99)
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {b"label_names": [name.encode() for name in CIFAR10_CLASSES]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return batches


def test_cifar_python_folder_and_archive(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar_folder(folder)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    for source in (folder, tmp_path, archive):
        splits = load_splits(str(source))
        assert len(splits.train) == 30 and len(splits.validation) == 6
        assert splits.train.class_names == list(CIFAR10_CLASSES)
        # Row layout: 1024 red values, then green, then blue; pixel (0, 1) of the first image:
        first = np.asarray(batches["data_batch_1"][b"data"])[0]
        assert tuple(splits.train.images[0, 0, 1]) == (first[1], first[1025], first[2049])
        assert splits.validation.labels.tolist() == batches["test_batch"][b"labels"]


def test_corrupt_cifar_archive_is_a_data_error(tmp_path: Path) -> None:
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"not a pickle"
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(DataError, match="data_batch_1"):
        load_splits(str(archive))


def test_keras_cifar10_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keras's real loader reads the official batches; only the download is replaced (no network here).
    import keras.src.datasets.cifar10 as keras_cifar10

    extracted = tmp_path / "extracted"
    folder = extracted / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(cifar_batch(10_000, i)))
    test_batch = cifar_batch(10_000, 99)
    (folder / "test_batch").write_bytes(pickle.dumps(test_batch))
    monkeypatch.setattr(keras_cifar10, "get_file", lambda **kwargs: str(extracted))

    splits = load_splits("cifar10")
    assert splits.train.images.shape == (50_000, 32, 32, 3)
    assert splits.train.labels.shape == (50_000,)
    assert splits.validation.labels[:5].tolist() == test_batch[b"labels"][:5]
    first = np.asarray(test_batch[b"data"])[0]
    assert tuple(splits.validation.images[0, 0, 0]) == (first[0], first[1024], first[2048])


def test_stratified_split_is_seeded_and_keeps_class_proportions() -> None:
    labels = np.repeat(np.arange(4), [100, 50, 20, 10])
    dataset = Dataset(np.zeros((len(labels), 2, 2, 3), dtype=np.uint8), labels, ["a", "b", "c", "d"])
    train, validation = stratified_split(dataset, 0.1, seed=7)
    assert np.bincount(validation.labels).tolist() == [10, 5, 2, 1]
    assert len(train) + len(validation) == len(dataset)
    again_train, _ = stratified_split(dataset, 0.1, seed=7)
    assert np.array_equal(train.labels, again_train.labels)
    with pytest.raises(DataError):
        stratified_split(dataset, 1.5, seed=0)


def test_image_folder_split_by_load_splits(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", per_class=8)
    splits = load_splits(str(root), validation_fraction=0.25, seed=1)
    assert np.bincount(splits.validation.labels).tolist() == [2, 2, 2]
    assert len(splits.train) == 18
    Image.fromarray(splits.train.images[0])  # a valid RGB image


def test_a_class_whose_every_file_is_corrupt_is_left_out_with_skip_invalid(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=3)
    (data / "junk").mkdir()
    for index in range(3):
        (data / "junk" / f"{index}.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    dataset, skipped = load_image_folder(data, size=(32, 32), skip_invalid=True)
    assert dataset.class_names == ["blue", "green", "red"] and len(skipped) == 3
    assert set(np.unique(dataset.labels)) == {0, 1, 2}
    with pytest.raises(DataError, match=r"\['junk'\].*no image that could be decoded"):
        load_image_folder(data, size=(32, 32), skip_invalid=True, class_names=["blue", "junk"])
