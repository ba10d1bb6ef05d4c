"""Errors that carry their HTTP status; one handler in `service.app` renders them as JSON."""


class ServiceError(Exception):
    """Base class: `error` is a stable machine-readable code, the message is for people."""

    status_code = 500
    error = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers: dict[str, str] = {}


class RetryLater(ServiceError):
    """Base class of refusals a client should retry (here after a while, or on another replica): Retry-After."""

    status_code = 503

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after_s)}


class InvalidRequest(ServiceError):
    """The request is not what the endpoint takes: no files, a form field instead of a file, a wrong body type."""

    status_code = 422
    error = "invalid_request"


class MalformedBody(ServiceError):
    """The body says multipart/form-data but cannot be parsed as such."""

    status_code = 400
    error = "bad_request"


class Unauthorized(ServiceError):
    """No API key where one is required."""

    status_code = 401
    error = "unauthorized"


class Forbidden(ServiceError):
    """An API key that is not one of the configured keys."""

    status_code = 403
    error = "forbidden"


class InvalidImage(ServiceError):
    """The upload is not an image Pillow can decode, or it is truncated or corrupt."""

    status_code = 415
    error = "invalid_image"


class EmptyFile(ServiceError):
    """A zero-byte upload."""

    status_code = 422
    error = "empty_file"


class TooManyImages(ServiceError):
    """More files in one request than `max_images_per_request`."""

    status_code = 413
    error = "too_many_images"


class FileTooLarge(ServiceError):
    """One file over `max_image_bytes`."""

    status_code = 413
    error = "file_too_large"


class ImageTooLarge(ServiceError):
    """Width x height over `max_image_pixels`, or an estimated decode over `max_decode_bytes`: decompression
    bombs end here, before decoding."""

    status_code = 413
    error = "image_too_large"


class NotReady(ServiceError):
    """The model is not loaded (yet)."""

    status_code = 503
    error = "not_ready"


class Overloaded(RetryLater):
    """Already `max_concurrent_requests` requests past their upload: refused at once, with Retry-After."""

    status_code = 503
    error = "overloaded"


class QueueFull(RetryLater):
    """The batch queue has no room for this request's images: refused at once, with Retry-After."""

    status_code = 503
    error = "overloaded"


class QueueTimeout(ServiceError):
    """An image waited in the queue past its deadline."""

    status_code = 504
    error = "timeout"


class RequestTimedOut(ServiceError):
    """The whole request (its upload included) took longer than `request_timeout_s`."""

    status_code = 504
    error = "timeout"


class ShuttingDown(RetryLater):
    """The server is draining: no new work is accepted (retry on another replica)."""

    status_code = 503
    error = "shutting_down"


class ClientDisconnected(ServiceError):
    """The client went away before its answer was ready; its queued images were dropped (logged as 499)."""

    status_code = 499
    error = "client_disconnected"


class BatcherStopped(RetryLater):
    """The batcher's loop ended unexpectedly: a server fault; the process is exiting to be restarted."""

    status_code = 503
    error = "unavailable"


class InferenceFailed(ServiceError):
    """ONNX Runtime raised while running a batch: a server fault, not the client's."""

    status_code = 500
    error = "inference_failed"


class ModelLoadError(Exception):
    """The model file is missing, not ONNX, or not a model this service can serve; fatal at startup."""


class ProviderUnavailable(Exception):
    """A GPU was required (`require_gpu`) but ONNX Runtime could not use CUDA; fatal at startup."""
