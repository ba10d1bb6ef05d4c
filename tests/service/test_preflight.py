"""The checks made before uvicorn starts: what they refuse is in tests/system/test_startup_mistakes.py; here, what
they must let through, and how cheaply."""

import socket
from pathlib import Path

import pytest

from service import preflight
from service.preflight import StartupMistake, check_model_file, listening_sockets
from tests.conftest import BUNDLED_MODEL


def test_a_model_that_starts_as_onnx_does_is_not_loaded_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert BUNDLED_MODEL.read_bytes().startswith(preflight.ONNX_START)

    def loaded(path: Path) -> str | None:
        raise AssertionError("the app's startup loads the model; the check must not load it too")

    monkeypatch.setattr(preflight, "_onnx_runtime_refusal", loaded)
    check_model_file(BUNDLED_MODEL)


def test_a_valid_model_with_its_fields_in_another_order_is_not_refused(tmp_path: Path) -> None:
    # Protobuf lets fields come in any order: the IR version (the first two bytes here) moved to the end is the same
    # model, which ONNX Runtime loads, so the check asks it rather than refusing on the first byte.
    data = BUNDLED_MODEL.read_bytes()
    assert data[:2] == b"\x08" + bytes([data[1]]) and data[1] < 0x80
    reordered = tmp_path / "reordered.onnx"
    reordered.write_bytes(data[2:] + data[:2])
    check_model_file(reordered)


def test_a_port_in_use_names_another_to_pick() -> None:
    (listener,) = listening_sockets("127.0.0.1", 0)
    try:
        port = listener.getsockname()[1]
        with pytest.raises(StartupMistake) as mistake:
            listening_sockets("127.0.0.1", port)
    finally:
        listener.close()
    assert str(mistake.value).endswith(f"pick another port: CLASSIFIER_PORT={port + 1}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # free again once closed


def test_the_port_is_held_from_the_check_on() -> None:
    """Bound and listening at once: another server binding the port while the model loads is refused (bound but
    not yet listening, it had let a second socket take the port, and the server then listened on nothing)."""
    (listener,) = listening_sockets("127.0.0.1", 0)
    with listener, socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError):
            other.bind(listener.getsockname())


def test_an_empty_host_means_every_interface() -> None:
    listeners = listening_sockets("", 0)
    try:
        addresses = {sock.getsockname()[0] for sock in listeners}
        assert "0.0.0.0" in addresses and addresses <= {"0.0.0.0", "::"}  # and IPv6's where the machine has it
    finally:
        for sock in listeners:
            sock.close()


def test_an_address_not_of_this_machine_says_which_to_use() -> None:
    with pytest.raises(StartupMistake, match=r"cannot listen on CLASSIFIER_HOST=192\.0\.2\.1 .*127\.0\.0\.1 for this"):
        listening_sockets("192.0.2.1", 8000)  # TEST-NET-1: documentation only, never an address of a machine


@pytest.mark.parametrize("refused", ["stat", "open"])
def test_a_model_path_that_cannot_be_read_is_said_so(refused: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests run as root, who may read anything: the refusal the system would give another user is made here.
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, refused, denied)
    with pytest.raises(StartupMistake, match=r"cannot be read \(Permission denied\); let the user running the server"):
        check_model_file(BUNDLED_MODEL)
