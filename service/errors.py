"""The service's errors, in its own terms: what went wrong, not how a protocol says it. Each front end maps them to
its statuses in one table (`service.gateway.HTTP_STATUS` for HTTP) and renders them its own way."""


class ServiceError(Exception):
    """Base class: `error` is a stable machine-readable code, the message (`detail`) is for people. `refusal`, where
    set, is the reason the metrics count it under: a request refused or cut short, not a client's mistake."""

    error = "internal_error"
    refusal: str | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class RetryLater(ServiceError):
    """Base class of refusals a client should retry, after `retry_after_s` or on another replica."""

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class InvalidRequest(ServiceError):
    """The request is not what the endpoint takes: no files, a form field instead of a file, a wrong body type."""

    error = "invalid_request"


class MalformedBody(ServiceError):
    """The body says multipart/form-data but cannot be parsed as such."""

    error = "bad_request"


class Unauthorized(ServiceError):
    """No API key where one is required; `header` names where it goes."""

    error = "unauthorized"

    def __init__(self, detail: str, header: str) -> None:
        super().__init__(detail)
        self.header = header


class Forbidden(ServiceError):
    """An API key that is not one of the configured keys."""

    error = "forbidden"


class InvalidImage(ServiceError):
    """The upload is not an image Pillow can decode, or it is truncated or corrupt."""

    error = "invalid_image"


class EmptyFile(ServiceError):
    """A zero-byte upload."""

    error = "empty_file"


class TooManyImages(ServiceError):
    """More files in one request than `max_images_per_request`."""

    error = "too_many_images"


class FileTooLarge(ServiceError):
    """One file over `max_image_bytes`."""

    error = "file_too_large"


class ImageTooLarge(ServiceError):
    """Width x height over `max_image_pixels`, or an estimated decode over `max_decode_bytes`: decompression
    bombs end here, before decoding."""

    error = "image_too_large"


class UnsupportedEncoding(ServiceError):
    """A request body with a Content-Encoding (gzip, deflate) this service does not decompress."""

    error = "unsupported_encoding"


class UnknownModel(ServiceError):
    """A model name or version this server does not serve."""

    error = "not_found"


class NotReady(ServiceError):
    """The model is not loaded (yet)."""

    error = "not_ready"
    refusal = "not_ready"


class Overloaded(RetryLater):
    """Already `max_concurrent_requests` requests past their upload: refused at once, with Retry-After."""

    error = "overloaded"
    refusal = "overloaded"


class QueueFull(RetryLater):
    """The batch queue has no room for this request's images: refused at once, with Retry-After."""

    error = "overloaded"
    refusal = "queue_full"


class QueueTimeout(ServiceError):
    """An image waited in the queue past its deadline."""

    error = "timeout"
    refusal = "timeout"


class RequestTimedOut(ServiceError):
    """The whole request (its upload included) took longer than `request_timeout_s`."""

    error = "timeout"
    refusal = "timeout"


class ShuttingDown(RetryLater):
    """The server is draining: no new work is accepted (retry on another replica)."""

    error = "shutting_down"
    refusal = "shutting_down"


class ClientDisconnected(ServiceError):
    """The client went away before its answer was ready; its queued images were dropped (logged as 499)."""

    error = "client_disconnected"
    refusal = "client_disconnected"


class BatcherStopped(RetryLater):
    """The batcher's loop ended unexpectedly: a server fault; the process is exiting to be restarted."""

    error = "unavailable"
    refusal = "unavailable"


class InferenceFailed(ServiceError):
    """ONNX Runtime raised while running a batch: a server fault, not the client's."""

    error = "inference_failed"


class BodyTooLarge(ServiceError):
    """The request body is over `max_body_bytes`."""

    error = "body_too_large"


class BodyOverBudget(RetryLater):
    """The bodies of all requests in progress would go over their budget (`body_memory_bytes`)."""

    error = "overloaded"
    refusal = "overloaded"


class BodyStalled(ServiceError):
    """The upload made no progress for `body_idle_timeout_s`."""

    error = "upload_stalled"
    refusal = "upload_stalled"


class ModelLoadError(Exception):
    """The model file is missing, not ONNX, or not a model this service can serve; fatal at startup."""


class ProviderUnavailable(Exception):
    """A GPU was required (`require_gpu`) but ONNX Runtime could not use CUDA; fatal at startup."""
