"""Property tests: whatever bytes arrive, decoding yields the model's input or one of our client errors."""

import warnings

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.error_responses import http_status
from service.errors import ServiceError
from service.imaging import decode_image
from tests.conftest import encode, noisy_image

SIZE = (32, 32)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(data: bytes) -> None:
    """The property: an array of the input shape and dtype, or a 4xx ServiceError; nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about some corrupt files; only exceptions matter here
        try:
            array = decode_image(data, filename="fuzz", size=SIZE, max_pixels=4_000_000)
        except ServiceError as error:
            assert 400 <= http_status(error) < 500, error
            return
    assert array.shape == (*SIZE, 3)
    assert array.dtype == np.uint8


SEEDS = {
    fmt: encode(noisy_image((200, 40, 90), (24, 18), seed=3).convert(mode), fmt, **options)
    for fmt, mode, options in [
        ("PNG", "RGBA", {}),
        ("JPEG", "RGB", {"quality": 80}),
        ("GIF", "P", {}),
        ("BMP", "RGB", {}),
        ("WEBP", "RGB", {"quality": 80}),
        ("TIFF", "RGB", {}),
        ("ICO", "RGBA", {}),
    ]
}


@FUZZ
@given(st.binary(max_size=2048))
def test_any_bytes(data: bytes) -> None:
    check(data)


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_valid_images_with_corrupted_bytes(fmt: str, data: st.DataObject) -> None:
    original = bytearray(SEEDS[fmt])
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(original) - 1))
        original[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(original)))
    check(bytes(original[:cut]))


@FUZZ
@given(
    st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"]),
    st.sampled_from(["PNG", "TIFF", "JPEG", "WEBP", "BMP", "GIF"]),
    st.integers(1, 300),
    st.integers(1, 300),
)
def test_every_mode_size_and_format_that_pillow_writes_decodes(mode: str, fmt: str, width: int, height: int) -> None:
    image = Image.new(mode, (width, height))
    try:
        data = encode(image, fmt)
    except (OSError, ValueError, KeyError):
        assume(False)  # Pillow cannot write this mode in this format: not an input anyone could send
    array = decode_image(data, filename="generated", size=SIZE, max_pixels=4_000_000)
    assert array.shape == (*SIZE, 3) and array.dtype == np.uint8


def test_seeded_mutations_of_every_format_give_an_image_or_a_client_error() -> None:
    """A few thousand cases of benchmarks/fuzz_decode.py (which runs 200,000 offline); the same seed each run."""
    from benchmarks.fuzz_decode import run_cases

    with warnings.catch_warnings():
        outcomes, failures = run_cases(seed=20261129, cases=3000)
    assert failures == []
    assert sum(outcomes.values()) == 3000
    assert outcomes["ok"] > 100 and outcomes["invalid_image"] > 100  # the mutations reach both outcomes
