"""The Decoder's scheduling: small cheap images on the event loop, others on a thread in one hop, within the memory
budget, in upload order."""

import asyncio

import numpy as np
import pytest
from PIL import Image

from service.errors import ImageTooLarge, InvalidImage
from service.imaging import INLINE_PIXELS, Decoder, decode_image, open_image
from tests.conftest import encode, noisy_image

SIZE = (32, 32)
LIMITS = {"size": SIZE, "max_pixels": 10**8, "max_decode_bytes": 2**31}
RED = (230, 30, 30)


def small_png(seed: int = 0) -> bytes:
    return encode(noisy_image(RED, (32, 32), seed=seed), "PNG")


def progressive_jpeg() -> bytes:
    return encode(noisy_image(RED, (40, 40)), "JPEG", progressive=True)


def large_png() -> bytes:
    return encode(noisy_image(RED, (400, 300)), "PNG")


def expected(*files: bytes) -> np.ndarray:
    return np.stack([decode_image(data, filename="x", size=SIZE, max_pixels=10**8) for data in files])


def prepare(decoder: Decoder, *files: bytes) -> np.ndarray:
    named = [(f"{index}.img", data) for index, data in enumerate(files)]
    return asyncio.run(decoder.prepare(named, **LIMITS))  # type: ignore[arg-type]


def test_small_cheap_images_are_decoded_on_the_loop_without_a_thread() -> None:
    decoder = Decoder(memory_bytes=2**30, processes=1, cpu_seconds=2)
    decoder.close()  # a thread hop would now fail: these must not need one
    files = [small_png(seed) for seed in range(3)]
    assert np.array_equal(prepare(decoder, *files), expected(*files))
    assert INLINE_PIXELS >= 3 * 32 * 32


@pytest.mark.parametrize("make", [large_png, progressive_jpeg], ids=["large", "progressive-jpeg"])
def test_larger_or_costlier_images_go_to_a_thread(make: object) -> None:
    data = make()  # type: ignore[operator]
    closed = Decoder(memory_bytes=2**30, processes=1, cpu_seconds=2)
    closed.close()
    with pytest.raises(RuntimeError, match="shutdown"):
        prepare(closed, data)
    decoder = Decoder(memory_bytes=2**30, processes=1, cpu_seconds=2)
    try:
        assert np.array_equal(prepare(decoder, data), expected(data))
        assert decoder.budget.reserved == 0  # the reservation came back once the thread finished
    finally:
        decoder.close()


def test_a_mixed_request_keeps_upload_order() -> None:
    files = [small_png(1), progressive_jpeg(), small_png(2), large_png()]
    decoder = Decoder(memory_bytes=2**30, processes=2, cpu_seconds=2)
    try:
        assert np.array_equal(prepare(decoder, *files), expected(*files))
    finally:
        decoder.close()


def test_a_request_waits_for_room_in_the_budget_then_decodes() -> None:
    data = large_png()
    need = open_image(data, filename="x", **LIMITS).decode_bytes  # type: ignore[arg-type]

    async def scenario() -> tuple[bool, np.ndarray]:
        decoder = Decoder(memory_bytes=need, processes=1, cpu_seconds=2)
        try:
            assert decoder.budget.try_acquire(1)  # someone else holds a byte: the request cannot fit now
            waiting = asyncio.ensure_future(decoder.prepare([("x", data)], **LIMITS))  # type: ignore[arg-type]
            await asyncio.sleep(0.2)
            was_waiting = not waiting.done()
            decoder.budget.release(1)
            result = await asyncio.wait_for(waiting, 30)
            # Posted from the thread before its result, so already run.
            assert decoder.budget.reserved == 0
            return was_waiting, result
        finally:
            decoder.close()

    was_waiting, result = asyncio.run(scenario())
    assert was_waiting
    assert np.array_equal(result, expected(data))


def test_a_request_that_could_never_fit_the_budget_is_refused() -> None:
    data = large_png()
    need = open_image(data, filename="x", **LIMITS).decode_bytes  # type: ignore[arg-type]
    decoder = Decoder(memory_bytes=need * 2 - 1, processes=1, cpu_seconds=2)
    try:
        with pytest.raises(ImageTooLarge, match="send them in several requests"):
            prepare(decoder, data, data)
    finally:
        decoder.close()


def test_a_bad_file_is_named_whichever_path_it_takes() -> None:
    decoder = Decoder(memory_bytes=2**30, processes=1, cpu_seconds=2)
    try:
        with pytest.raises(InvalidImage, match=r"'1\.img'"):
            prepare(decoder, small_png(), b"\x89PNG not really")
        with pytest.raises(InvalidImage, match=r"'1\.img'"):
            prepare(decoder, large_png(), large_png()[:5000])
    finally:
        decoder.close()


def test_an_image_with_a_transparent_palette_is_decoded_alike_on_either_path() -> None:
    image = Image.new("P", (20, 20))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    data = encode(image, "PNG", transparency=0)
    decoder = Decoder(memory_bytes=2**30, processes=1, cpu_seconds=2)
    try:
        assert np.array_equal(prepare(decoder, data), expected(data))
    finally:
        decoder.close()


def many_scans(side: int) -> bytes:
    """A progressive JPEG whose last scan is repeated to 99 scans: about a second of decoding at 4000x4000."""
    data = encode(Image.new("RGB", (side, side), (200, 30, 30)), "JPEG", progressive=True)
    last_scan = data.rindex(b"\xff\xda")
    return data[:-2] + data[last_scan:-2] * 89 + data[-2:]


def test_a_request_cancelled_twice_hands_its_process_on_only_once_it_is_done() -> None:
    """A timeout and a client gone at once cancel a request twice within milliseconds: the second cancel must not
    hand the process (still being killed by its thread) to the next request, which then failed (found by a hostile
    review: 415 or a TypeError for innocent files)."""
    costly, files = many_scans(4000), [large_png(), progressive_jpeg(), large_png(), progressive_jpeg()]

    async def scenario() -> tuple[int, list[np.ndarray]]:
        decoder = Decoder(memory_bytes=2**31, processes=3, cpu_seconds=60)  # free threads for the next requests
        try:
            request = asyncio.ensure_future(decoder.prepare([("scans.jpg", costly)], **LIMITS))  # type: ignore[arg-type]
            await asyncio.sleep(0.3)  # well into its decoding
            request.cancel()
            await asyncio.sleep(0.005)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            reserved = decoder.budget.reserved
            later = [decoder.prepare([(f"{index}.img", data)], **LIMITS) for index, data in enumerate(files)]  # type: ignore[arg-type]
            return reserved, list(await asyncio.gather(*later))
        finally:
            decoder.close()

    reserved, results = asyncio.run(scenario())
    assert reserved == 0
    for data, result in zip(files, results, strict=True):
        assert np.array_equal(result, expected(data))


def test_a_request_refused_after_its_check_leaves_nothing_in_the_process() -> None:
    """Checked but never decoded (its images could never fit the budget): the process holding its files is killed,
    and the next request gets a new one."""
    data = large_png()
    need = open_image(data, filename="x", **LIMITS).decode_bytes  # type: ignore[arg-type]
    decoder = Decoder(memory_bytes=need * 2 - 1, processes=1, cpu_seconds=60)
    try:
        with pytest.raises(ImageTooLarge):
            prepare(decoder, data, data)
        assert np.array_equal(prepare(decoder, data), expected(data))
    finally:
        decoder.close()
