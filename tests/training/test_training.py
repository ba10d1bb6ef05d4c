"""Model building, a short real training run, resuming, evaluation reports, export and its parity gate."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest

from tests.conftest import REPO, make_image_folder
from training.config import TrainConfig
from training.evaluation import compute_metrics, onnx_model, onnx_predictor
from training.export import ExportError, ParityError, check_parity, export_run
from training.models import ARCHITECTURES, build_model
from training.run import RunDirectory, RunError
from training.train import train

pytestmark = pytest.mark.slow


def test_baseline_takes_uint8_pixels_and_returns_probabilities() -> None:
    model = build_model("baseline", (32, 32, 3), 10)
    assert model.inputs[0].dtype == "uint8"
    assert model.input_shape == (None, 32, 32, 3)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    probabilities = np.asarray(model.predict(images, verbose=0))
    assert probabilities.shape == (3, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert "baseline" in ARCHITECTURES


def test_unknown_architecture_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="baseline"):
        build_model("resnet9000", (32, 32, 3), 10)


def test_training_run_writes_checkpoints_history_and_reports(tiny_run: Path) -> None:
    for name in ("run.json", "model.keras", "last.keras", "history.csv", "history.json", "metrics.json",
                 "confusion_matrix.png", "training_curves.png", "parity_images.npy"):  # fmt: skip
        assert (tiny_run / name).is_file(), name
    history = json.loads((tiny_run / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(6))
    assert history[-1]["loss"] < history[0]["loss"]
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"blue", "green", "red"}
    assert metrics["examples"] == 9
    # Three well-separated colours: the baseline learns them in a few epochs.
    assert metrics["accuracy"] >= 0.66


def test_resume_continues_from_the_last_completed_epoch(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4)
    config = TrainConfig(
        data=str(data), run_dir=str(tmp_path / "run"), epochs=1, batch_size=8, validation_fraction=0.25
    )
    run_dir = train(config, command="python -m training train ...")
    assert [row["epoch"] for row in RunDirectory(run_dir).read_history()] == [0]
    # Raise the epoch count in the saved config (as if the first run had been stopped after epoch 1).
    record = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps(record | {"epochs": 3}))
    train(TrainConfig(data="", run_dir=str(run_dir)), resume=True)
    assert [row["epoch"] for row in RunDirectory(run_dir).read_history()] == [0, 1, 2]
    assert RunDirectory(run_dir).read_record().command == "python -m training train ..."  # what reproduces the run


def test_compute_metrics_by_hand() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, 1, 0, 2])
    metrics = compute_metrics(labels, predictions, ["a", "b", "c"])
    assert metrics["accuracy"] == round(4 / 6, 4)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert metrics["per_class"]["b"] == {"precision": round(2 / 3, 4), "recall": 1.0, "f1": 0.8, "support": 2}
    assert metrics["per_class"]["c"]["precision"] == 1.0
    assert metrics["macro_recall"] == round((0.5 + 1 + 0.5) / 3, 4)


def test_export_writes_metadata_and_matches_keras(tiny_run: Path) -> None:
    import keras
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_run / "model.onnx"), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["class_names"]) == ["blue", "green", "red"]
    assert json.loads(metadata["image_size"]) == [32, 32]
    assert metadata["model_name"] == "tiny-colours"
    assert metadata["model_version"] == "test-1"
    assert float(metadata["eval_accuracy"]) == json.loads((tiny_run / "metrics.json").read_text())["accuracy"]
    assert int(metadata["opset"]) >= 17
    (model_input,) = session.get_inputs()
    assert (model_input.name, model_input.type, model_input.shape) == (
        "image",
        "tensor(uint8)",
        ["batch", 32, 32, 3],
    )
    assert session.get_outputs()[0].name == "probabilities"

    images = np.load(tiny_run / "parity_images.npy")
    keras_model = keras.saving.load_model(tiny_run / "model.keras")
    expected = keras_model.predict(images, verbose=0)
    actual = onnx_predictor(onnx_model(tiny_run / "model.onnx"))(images)
    assert np.abs(expected - actual).max() <= 1e-4
    # The export's Keras copy would have landed on the run's own model.keras: that model is kept as trained.
    assert keras_model.optimizer is not None


def test_export_writes_a_weights_only_keras_copy_beside_the_onnx(tiny_run: Path, tmp_path: Path) -> None:
    import keras

    export_run(tiny_run, tmp_path / "copy.onnx")
    copy = keras.saving.load_model(tmp_path / "copy.keras")
    assert getattr(copy, "optimizer", None) is None
    images = np.load(tiny_run / "parity_images.npy")
    exported = onnx_predictor(onnx_model(tmp_path / "copy.onnx"))
    assert np.abs(copy.predict(images, verbose=0) - exported(images)).max() <= 1e-4


def test_tampered_onnx_fails_the_parity_gate(tiny_run: Path, tmp_path: Path) -> None:
    import keras

    proto = onnx.load(tiny_run / "model.onnx")
    largest = max(proto.graph.initializer, key=lambda tensor: onnx.numpy_helper.to_array(tensor).size)
    weights = onnx.numpy_helper.to_array(largest)
    largest.CopyFrom(onnx.numpy_helper.from_array((weights * -1.5).astype(weights.dtype), largest.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(proto, tampered)

    keras_model = keras.saving.load_model(tiny_run / "model.keras")
    images = np.random.default_rng(0).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
    predict = lambda x: np.asarray(keras_model.predict(x, verbose=0))  # noqa: E731
    check_parity(predict, tiny_run / "model.onnx", images, 1e-4)  # the genuine export passes
    with pytest.raises(ParityError, match="parity gate failed"):
        check_parity(predict, tampered, images, 1e-4)


def test_export_refuses_a_broken_model_and_writes_nothing(tiny_run: Path, tmp_path: Path) -> None:
    run_copy = tmp_path / "run"
    shutil.copytree(tiny_run, run_copy)
    (run_copy / "model.keras").write_bytes(b"PK\x03\x04 this is not a keras archive")
    output = tmp_path / "out.onnx"
    with pytest.raises(ExportError, match="cannot load Keras model"):
        export_run(run_copy, output)
    assert not output.exists()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_cli_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("train", "evaluate", "export"):
        assert command in result.stdout


def test_cli_export_of_a_broken_model_exits_non_zero_and_export_and_card_never_load_the_trainer(
    tiny_run: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.keras"
    broken.write_text("garbage")
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "training", "export", "--run-dir", str(tiny_run), "--model",
         str(broken), "--output", str(tmp_path / "x.onnx")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "export failed" in result.stderr
    assert not (tmp_path / "x.onnx").exists()
    # Export and card find the run's files through training/run.py; the trainer (tf.data, callbacks) is not theirs
    # to load. By the time the model file is refused, every module export needs is imported.
    lines = result.stderr.splitlines()
    imported = {line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time")}
    # (keras comes in with tensorflow, whose import-time lines training.framework filters: tensorflow's is listed)
    assert {"training.export", "training.run", "tensorflow"} <= imported
    assert "training.train" not in imported
    card = subprocess.run(
        [sys.executable, "-c", "import sys, training.card, training.cli; print('training.train' in sys.modules)"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert card.stdout.strip() == "False", card.stderr


def test_cli_evaluate_an_onnx_model(tiny_run: Path, tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=8)
    out = tmp_path / "report"
    result = run_cli("evaluate", "--model", str(tiny_run / "model.onnx"), "--data", str(data), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "accuracy=" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"] == 6  # the model sits in its run: the run's validation fraction (0.25) holds
    assert (out / "confusion_matrix.png").stat().st_size > 1000


def test_cli_train_with_a_missing_data_source_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("train", "--data", str(tmp_path / "nothing"), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


@pytest.mark.parametrize("architecture", ["resnet9-w16", "resnet9-w24", "airbench-w64"])
def test_resnet9_takes_uint8_pixels_and_returns_probabilities(architecture: str) -> None:
    model = build_model(architecture, (32, 32, 3), 10)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    probabilities = np.asarray(model.predict(images, verbose=0))
    assert probabilities.shape == (2, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_augmentation_keeps_shape_and_cutout_paints_a_square() -> None:
    import tensorflow as tf

    from training.train import augment_image

    image = tf.constant(np.full((32, 32, 3), 200, dtype=np.uint8))
    painted = []
    for _ in range(20):
        augmented = augment_image(image, cutout=8).numpy()
        assert augmented.shape == (32, 32, 3) and augmented.dtype == np.uint8
        grey = np.all(augmented == 128, axis=-1)
        assert set(np.unique(augmented)) <= {128, 200}
        if grey.any():
            rows, columns = np.nonzero(grey)
            assert np.ptp(rows) < 8 and np.ptp(columns) < 8  # one square of at most 8x8 (clipped at the edges)
        painted.append(grey.sum())
    assert max(painted) == 64
    assert np.all(augment_image(image).numpy() == 200)


def test_translation_moves_the_image_by_at_most_its_padding() -> None:
    import tensorflow as tf

    from training.train import augment_image

    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    padded = np.pad(image, [(2, 2), (2, 2), (0, 0)], mode="reflect")
    crops = {(top, left): padded[top : top + 32, left : left + 32] for top in range(5) for left in range(5)}
    seen = set()
    for _ in range(100):
        augmented = augment_image(tf.constant(image), padding=2).numpy()
        matches = [
            (offset, mirrored)
            for offset, crop in crops.items()
            for mirrored, view in ((False, crop), (True, crop[:, ::-1]))
            if np.array_equal(augmented, view)
        ]
        assert matches, "not a crop of the image padded by 2 pixels (or its mirror image)"
        seen.update(matches)
    assert len({offset for offset, _ in seen}) > 10 and {mirrored for _, mirrored in seen} == {False, True}
    unmoved = [augment_image(tf.constant(image), padding=0).numpy() for _ in range(10)]
    assert all(np.array_equal(view, image) or np.array_equal(view, image[:, ::-1]) for view in unmoved)


def test_airbench_starts_as_the_identity_and_whitens_the_training_images() -> None:
    from training.models import CIFAR10_MEAN, CIFAR10_STD, initialise_from_data

    model = build_model("airbench-w64", (32, 32, 3), 10)
    kernel = model.get_layer("group2_conv1").kernel.numpy()  # 64 channels in, 256 out
    identity = np.zeros((3, 3, 64, 64))
    identity[1, 1] = np.eye(64)
    assert np.array_equal(kernel[..., :64], identity) and np.abs(kernel[..., 64:]).max() > 0

    images = np.random.default_rng(0).normal(128, 40, (500, 32, 32, 3)).clip(0, 255).astype(np.uint8)
    images[..., 1] = images[..., 0] // 2 + images[..., 1] // 2  # correlated channels: whitening has work to do
    initialise_from_data(model, images)
    normalised = ((images - np.array(CIFAR10_MEAN)) / np.array(CIFAR10_STD)).astype("float32")
    whitened = np.asarray(keras.ops.conv(normalised, model.get_layer("whiten").kernel)).reshape(-1, 24)
    covariance = whitened.T @ whitened / len(whitened)
    assert np.allclose(covariance[:12, :12], np.eye(12), atol=0.01)  # the patches' covariance is the identity
    assert np.allclose(whitened[:, 12:], -whitened[:, :12])  # and each filter's negative follows
    assert not model.get_layer("whiten").trainable


def test_batch_norm_shifts_learn_at_the_scaled_rate_and_the_optimizer_saves_with_the_model(tmp_path: Path) -> None:
    from training.train import ScaledBiasSGD

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = np.eye(10)[rng.integers(0, 10, 64)]
    model = build_model("airbench-w64", (32, 32, 3), 10)
    start = model.get_weights()
    moved = {}
    for scale in (1.0, 64.0):
        model.set_weights(start)
        model.compile(optimizer=ScaledBiasSGD(0.01, bias_learning_rate_scale=scale), loss="categorical_crossentropy")
        model.fit(images, labels, batch_size=64, epochs=1, shuffle=False, verbose=0)
        after = zip(model.weights, start, strict=True)
        moved[scale] = {variable.path: np.abs(variable.numpy() - before).max() for variable, before in after}
    ratios = {path: moved[64.0][path] / moved[1.0][path] for path in moved[1.0] if moved[1.0][path] > 0}
    assert {path for path, ratio in ratios.items() if ratio == pytest.approx(64, rel=1e-3)} == {
        path for path in ratios if path.endswith("/beta")
    }
    assert all(ratio == pytest.approx(1, rel=1e-3) for path, ratio in ratios.items() if not path.endswith("/beta"))

    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, ScaledBiasSGD) and loaded.optimizer.bias_learning_rate_scale == 64.0


def test_cosine_schedule_warms_up_then_decays() -> None:
    from training.train import make_optimizer

    config = TrainConfig(
        data="", run_dir="", epochs=10, learning_rate=0.2, optimizer="sgd", schedule="cosine", warmup_epochs=2
    )
    optimizer = make_optimizer(config, steps_per_epoch=100)
    schedule = optimizer._learning_rate
    assert float(schedule(0)) == 0.0
    assert float(schedule(100)) == pytest.approx(0.1, rel=1e-3)
    assert float(schedule(200)) == pytest.approx(0.2, rel=1e-3)
    assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(TrainConfig(data="", run_dir="", optimizer="lbfgs"), 10)


def test_cli_preset_sets_the_recipe_and_flags_override_it(tmp_path: Path) -> None:
    from training.cli import main

    data = make_image_folder(tmp_path / "data", per_class=4)
    # In this process (TensorFlow is loaded already); the subprocess tests around it cover the command itself.
    main(["train", "--preset", "cifar10-resnet9", "--data", str(data), "--epochs", "1", "--run-dir", f"{tmp_path}/r"])
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    preset = json.loads((REPO / "training" / "presets" / "cifar10-resnet9.json").read_text())
    assert record["epochs"] == 1 and record["data"] == str(data)
    for key in ("architecture", "optimizer", "learning_rate", "weight_decay", "cutout", "label_smoothing"):
        assert record[key] == preset[key], key
    unknown = run_cli("train", "--preset", "nope", "--run-dir", str(tmp_path / "x"))
    assert unknown.returncode != 0 and "cifar10-resnet9" in unknown.stderr


def test_a_second_stage_starts_from_the_first_stages_weights(tiny_run: Path, tmp_path: Path) -> None:
    import keras

    data = make_image_folder(tmp_path / "data")
    first = tiny_run / "model.keras"
    # Learning rate 0: the kernels of the second stage's model are exactly those it started from.
    config = TrainConfig(
        data=str(data), run_dir=str(tmp_path / "stage2"), epochs=1, learning_rate=0.0, init_from=str(first),
        batch_size=8, validation_fraction=0.25,
    )  # fmt: skip
    run_dir = train(config)
    assert json.loads((run_dir / "run.json").read_text())["init_from"] == str(first)
    started, finished = keras.saving.load_model(first), keras.saving.load_model(run_dir / "model.keras")
    for before, after in zip(started.trainable_weights, finished.trainable_weights, strict=True):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))

    from training.card import combined_history, training_stages
    from training.train import load_initial_weights

    stages = training_stages(run_dir)
    assert [(stage["run_dir"], stage["epochs"]) for stage in stages] == [(str(tiny_run), 6), (str(run_dir), 1)]
    assert [row["epoch"] for row in combined_history(stages)] == list(range(7))
    with pytest.raises(RunError, match="do not fit this architecture"):
        load_initial_weights(build_model("resnet9-w16", (32, 32, 3), 3), first)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_initial_weights(started, tmp_path / "missing.keras")


def test_cli_second_stage_from_another_architecture_is_a_clear_error(tiny_run: Path, tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4)
    result = run_cli(
        "train", "--data", str(data), "--run-dir", str(tmp_path / "run"), "--architecture", "resnet9-w16",
        "--init-from", str(tiny_run / "model.keras"), "--epochs", "1",
    )  # fmt: skip
    assert result.returncode == 2
    assert "do not fit this architecture" in result.stderr and "Traceback" not in result.stderr


def test_flops_of_the_baseline_by_hand() -> None:
    from training.models import count_flops

    model = build_model("baseline", (32, 32, 3), 10)
    convolutions = 2 * (30 * 30 * 9 * 3 * 32 + 13 * 13 * 9 * 32 * 64 + 4 * 4 * 9 * 64 * 128)
    dense = 2 * (512 * 128 + 128 * 10)
    assert count_flops(model) == convolutions + dense == 10_278_144


def test_model_card_for_a_run(tiny_run: Path, tmp_path: Path) -> None:
    from training.card import build_card, card_paths, write_card

    card = build_card(
        tiny_run, tiny_run / "model.onnx", reproduce="make it", trained_on_machine="here", latency_seconds=0.05
    )
    paths = card_paths(tiny_run / "model.onnx", tmp_path)
    write_card(card, paths)
    markdown, data = paths.markdown, paths.data
    assert (markdown.name, data.name) == ("model.card.md", "model.card.json")
    written = json.loads(data.read_text())
    assert written["name"] == "tiny-colours" and written["classes"] == ["blue", "green", "red"]
    assert written["parameters"] > 0 and written["flops_per_image"] > 0
    assert written["validation"]["accuracy"] == json.loads((tiny_run / "metrics.json").read_text())["accuracy"]
    assert written["training"]["epochs_run"] == 6
    assert written["latency_onnxruntime_cpu"]["batch1_ms"] > 0
    text = markdown.read_text()
    assert "tiny-colours" in text and "make it" in text and "| red |" in text


def test_flip_averaging_is_blind_to_mirroring_and_averages_the_network() -> None:
    from training.models import base_network, count_flops, with_flip_averaging

    network = build_model("resnet9-w16", (32, 32, 3), 10)
    model = with_flip_averaging(network)
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    averaged = model.predict(images, verbose=0)
    by_hand = (network.predict(images, verbose=0) + network.predict(images[:, :, ::-1], verbose=0)) / 2
    assert np.abs(averaged - by_hand).max() <= 1e-6
    assert np.abs(model.predict(images[:, :, ::-1], verbose=0) - averaged).max() <= 1e-6
    assert base_network(model) is network and base_network(network) is network
    assert count_flops(model) == 2 * count_flops(network)


@pytest.fixture(scope="module")
def int8_export(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("int8") / "model.onnx"
    export_run(tiny_run, output, name="tiny-int8", flip_averaging=True, quantize=True, max_accuracy_drop=1.0)
    return output


def test_int8_flip_averaged_export_states_what_it_is_and_its_own_accuracy(int8_export: Path, tiny_run: Path) -> None:
    import keras
    import onnxruntime as ort

    metadata = ort.InferenceSession(str(int8_export), providers=["CPUExecutionProvider"]).get_modelmeta()
    properties = metadata.custom_metadata_map
    assert properties["quantization"].startswith("int8") and "flip" in properties["test_time_augmentation"]
    assert properties["calibration_images"] == "27"  # every training image of the tiny run: fewer than 512
    assert 0.0 <= float(properties["float_int8_top1_agreement"]) <= 1.0
    op_types = {node.op_type for node in onnx.load(int8_export).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= op_types

    validation = RunDirectory(tiny_run).load_splits().validation
    probabilities = onnx_predictor(onnx_model(int8_export))(validation.images)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == validation.labels))
    assert float(properties["eval_accuracy"]) == pytest.approx(accuracy, abs=1e-4)
    assert properties["eval_examples"] == str(len(validation))
    mirrored = onnx_predictor(onnx_model(int8_export))(np.ascontiguousarray(validation.images[:, :, ::-1]))
    assert np.abs(mirrored - probabilities).max() <= 1e-6

    # The Keras copy beside it is the float flip-averaged model, without optimizer state.
    reference = keras.saving.load_model(int8_export.with_suffix(".keras"))
    assert reference.name.endswith("_flip_averaged") and getattr(reference, "optimizer", None) is None
    keras_top = reference.predict(validation.images, verbose=0).argmax(axis=1)
    assert np.mean(keras_top == probabilities.argmax(axis=1)) >= float(properties["float_int8_top1_agreement"]) - 1e-9


def test_int8_that_loses_too_much_accuracy_is_refused_and_nothing_is_written(tiny_run: Path, tmp_path: Path) -> None:
    output = tmp_path / "model.onnx"
    # A negative allowance cannot be met: the gate must refuse even a lossless quantization.
    with pytest.raises(ExportError, match="int8 quantization loses"):
        export_run(tiny_run, output, quantize=True, max_accuracy_drop=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_model_card_of_an_int8_flip_averaged_export(tiny_run: Path, int8_export: Path, tmp_path: Path) -> None:
    from training.card import build_card, card_paths, write_card

    card = build_card(tiny_run, int8_export, reproduce="make it", trained_on_machine="here", latency_seconds=0.05)
    paths = card_paths(int8_export, tmp_path)
    write_card(card, paths)
    markdown = paths.markdown
    assert card["serving_graph"]["quantization"].startswith("int8")
    stated = onnx.load(int8_export).metadata_props
    assert card["validation"]["accuracy"] == pytest.approx(
        float(next(prop.value for prop in stated if prop.key == "eval_accuracy")), abs=1e-4
    )
    network_flops = build_card(
        tiny_run, tiny_run / "model.onnx", reproduce="x", trained_on_machine="x", latency_seconds=0.05
    )["flops_per_image"]
    assert card["flops_per_image"] == 2 * network_flops
    assert "int8 static QDQ" in markdown.read_text() and "horizontal flip" in markdown.read_text()


def test_mixed_precision_trains_in_bfloat16_and_exports_float32(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4)
    config = TrainConfig(
        data=str(data), run_dir=str(tmp_path / "run"), architecture="resnet9-w16", epochs=1, batch_size=8,
        validation_fraction=0.25, precision="mixed_bfloat16",
    )  # fmt: skip
    run_dir = train(config)
    trained = keras.saving.load_model(run_dir / "model.keras")
    convolutions = [layer for layer in trained.layers if isinstance(layer, keras.layers.Conv2D)]
    assert {layer.compute_dtype for layer in convolutions} == {"bfloat16"}
    assert trained.output.dtype == "float32"  # the softmax (and so the loss) stays float32
    assert keras.config.dtype_policy().name == "float32"  # the policy was set only while the network was built
    assert json.loads((run_dir / "run.json").read_text())["precision"] == "mixed_bfloat16"

    export_run(run_dir, run_dir / "model.onnx")  # through the parity gate, against the network in float32
    proto = onnx.load(run_dir / "model.onnx")
    bfloat16 = onnx.TensorProto.BFLOAT16
    assert all(tensor.data_type != bfloat16 for tensor in proto.graph.initializer)
    assert not [node.name for node in proto.graph.node if node.op_type == "Cast" and node.attribute[0].i == bfloat16]


def test_airbench_trains_from_whitened_start_and_exports_through_the_gates(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=8)
    config = TrainConfig(
        data=str(data), run_dir=str(tmp_path / "run"), architecture="airbench-w64", epochs=1, batch_size=8,
        optimizer="sgd", learning_rate=0.1, bias_learning_rate_scale=64, translate=2, validation_fraction=0.25,
    )  # fmt: skip
    run_dir = train(config)
    trained = keras.saving.load_model(run_dir / "model.keras")
    whiten = trained.get_layer("whiten").kernel.numpy()
    assert np.allclose(whiten[..., 12:], -whiten[..., :12]) and np.abs(whiten).max() > 1  # set from the data, kept
    assert json.loads((run_dir / "run.json").read_text())["bias_learning_rate_scale"] == 64

    output = export_run(run_dir, tmp_path / "model.onnx", flip_averaging=True, quantize=True, max_accuracy_drop=1.0)
    assert onnx_model(output).info.metadata["architecture"] == "airbench-w64"


def test_a_teachers_probabilities_are_mixed_into_the_targets() -> None:
    from training.data import Dataset
    from training.train import make_dataset

    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    data = Dataset(images, np.array([0, 1, 2, 0, 1, 2]), ["a", "b", "c"])
    teacher = build_model("resnet9-w16", (32, 32, 3), 3)
    batches = make_dataset(
        data, batch_size=4, training=False, augment=False, seed=0, teacher=teacher, distillation=0.3
    )  # fmt: skip
    targets = np.concatenate([batch_targets.numpy() for _, batch_targets in batches])
    expected = 0.7 * np.eye(3)[data.labels] + 0.3 * teacher.predict(images, verbose=0)
    np.testing.assert_allclose(targets, expected, atol=1e-6)


def test_a_teacher_of_other_classes_is_refused_before_anything_is_written_one_of_the_same_teaches(
    tiny_run: Path, tmp_path: Path
) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4)
    shutil.rmtree(data / "blue")
    run_dir = tmp_path / "run"
    config = TrainConfig(
        data=str(data), run_dir=str(run_dir), epochs=1, batch_size=8, teacher=str(tiny_run / "model.keras")
    )  # fmt: skip
    with pytest.raises(RunError, match="it gives 3 probabilities, this run has 2 classes"):
        train(config)
    assert not run_dir.exists() or not any(run_dir.iterdir())

    shutil.copytree(tiny_run.parent / "data" / "blue", data / "blue")  # now the teacher's classes: it teaches
    train(config)
    assert json.loads((run_dir / "run.json").read_text())["teacher"] == str(tiny_run / "model.keras")


def test_a_model_of_another_input_size_is_exported_evaluated_and_carded_at_its_size(tmp_path: Path) -> None:
    from training.card import build_card

    data = make_image_folder(tmp_path / "data", per_class=4, size=(40, 40))
    config = TrainConfig(
        data=str(data), run_dir=str(tmp_path / "run"), epochs=1, batch_size=8, validation_fraction=0.25,
        image_size=(24, 24),
    )  # fmt: skip
    run_dir = train(config)
    export_run(run_dir, run_dir / "model.onnx")
    assert onnx_model(run_dir / "model.onnx").info.height == 24
    card = build_card(run_dir, run_dir / "model.onnx", reproduce="x", trained_on_machine="x", latency_seconds=0.05)
    assert card["input"].startswith("image: uint8 [batch, 24, 24, 3]")
    # evaluate reads the input size from the model, not from a default of 32x32
    from training.cli import main

    for model in ("model.onnx", "model.keras"):
        report = tmp_path / model
        main(["evaluate", "--model", str(run_dir / model), "--data", str(data), "--out", str(report)])
        assert json.loads((report / "metrics.json").read_text())["examples"] == 3
