"""The service's errors, in its own terms: what went wrong, not how a protocol says it. How each is answered over
HTTP (status, headers, body, OpenAPI, the docs' table) is one row of `service.error_responses.ROWS`: adding an
error is a class here and a row there."""


class ServiceError(Exception):
    """Base class: `error` is a stable machine-readable code, the message (`detail`) is for people. `refusal`, where
    set, is the reason the metrics count it under: a request refused or cut short, not a client's mistake."""

    error = "internal_error"
    refusal: str | None = None

    def __init_subclass__(cls, *, error: str | None = None, refusal: str | None = None) -> None:
        """`class QueueFull(RetryLater, error="overloaded", refusal="queue_full")`: the codes beside the name."""
        super().__init_subclass__()
        cls.error = error or cls.error
        cls.refusal = refusal or cls.refusal

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class RetryLater(ServiceError):
    """Base class of refusals a client should retry, after `retry_after_s` or on another replica."""

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class InvalidRequest(ServiceError, error="invalid_request"):
    """The request is not what the endpoint takes: no files, a form field instead of a file, a wrong body type."""


class MalformedBody(ServiceError, error="bad_request"):
    """The body says multipart/form-data but cannot be parsed as such."""


class Unauthorized(ServiceError, error="unauthorized"):
    """No API key where one is required; `header` names where it goes."""

    def __init__(self, detail: str, header: str) -> None:
        super().__init__(detail)
        self.header = header


class Forbidden(ServiceError, error="forbidden"):
    """An API key that is not one of the configured keys."""


class InvalidImage(ServiceError, error="invalid_image"):
    """The upload is not an image Pillow can decode, or it is truncated or corrupt."""


class EmptyFile(ServiceError, error="empty_file"):
    """A zero-byte upload."""


class TooManyImages(ServiceError, error="too_many_images"):
    """More files in one request than `max_images_per_request`."""


class FileTooLarge(ServiceError, error="file_too_large"):
    """One file over `max_image_bytes`."""


class ImageTooLarge(ServiceError, error="image_too_large"):
    """Width x height over `max_image_pixels`, or an estimated decode over `max_decode_bytes`: decompression
    bombs end here, before decoding."""


class UnsupportedEncoding(ServiceError, error="unsupported_encoding"):
    """A request body with a Content-Encoding (gzip, deflate) this service does not decompress."""


class UnknownModel(ServiceError, error="not_found"):
    """A model name or version this server does not serve."""


class NotReady(ServiceError, error="not_ready", refusal="not_ready"):
    """The model is not loaded (yet)."""


class Overloaded(RetryLater, error="overloaded", refusal="overloaded"):
    """Already `max_concurrent_requests` requests past their upload: refused at once, with Retry-After."""


class QueueFull(RetryLater, error="overloaded", refusal="queue_full"):
    """The batch queue has no room for this request's images: refused at once, with Retry-After."""


class QueueTimeout(ServiceError, error="timeout", refusal="timeout"):
    """An image waited in the queue past its deadline."""


class RequestTimedOut(ServiceError, error="timeout", refusal="timeout"):
    """The whole request (its upload included) took longer than `request_timeout_s`."""


class ShuttingDown(RetryLater, error="shutting_down", refusal="shutting_down"):
    """The server is draining: no new work is accepted (retry on another replica)."""


class ClientDisconnected(ServiceError, error="client_disconnected", refusal="client_disconnected"):
    """The client went away before its answer was ready; its queued images were dropped (logged as 499)."""


class BatcherStopped(RetryLater, error="unavailable", refusal="unavailable"):
    """The batcher's loop ended unexpectedly: a server fault; the process is exiting to be restarted."""


class InferenceFailed(ServiceError, error="inference_failed"):
    """ONNX Runtime raised while running a batch: a server fault, not the client's."""


class BodyTooLarge(ServiceError, error="body_too_large"):
    """The request body is over `max_body_bytes`."""


class BodyOverBudget(RetryLater, error="overloaded", refusal="overloaded"):
    """The bodies of all requests in progress would go over their budget (`body_memory_bytes`)."""


class BodyStalled(ServiceError, error="upload_stalled", refusal="upload_stalled"):
    """The upload made no progress for `body_idle_timeout_s`."""


class ModelRefused(ServiceError, error="model_refused"):
    """A new model file failed its checks (it does not open, another input size, no labels, its warm-up or the
    sample images fail); the served model keeps serving."""


class LoadInProgress(ServiceError, error="load_in_progress"):
    """A model is being loaded: one load at a time."""


class ModelControlOff(ServiceError, error="model_control_off"):
    """The model repository API is off (CLASSIFIER_MODEL_CONTROL is not "explicit")."""


class RouteNotFound(ServiceError, error="not_found"):
    """No route at this path (Starlette's 404)."""


class MethodNotAllowed(ServiceError, error="method_not_allowed"):
    """The path exists, the method does not (Starlette's 405)."""


class OtherHttpError(ServiceError, error="http_error"):
    """Another of Starlette's HTTP errors (a static file it may not read, a bad Range): answered with its status."""


# ---- Refusals of the HTTP server itself (service.connections), before any request reaches the app ----


class MalformedHttp(ServiceError, error="bad_request"):
    """Bytes that are not an HTTP/1.1 request (a bad request line, a NUL in a header)."""


class TooManyPipelined(ServiceError, error="too_many_pipelined_requests"):
    """More than `max_pipelined` requests sent ahead of their answers."""


class RequestHeadTooLarge(ServiceError, error="request_head_too_large"):
    """The request line and headers are over `max_head_bytes`."""


class TrailersTooLarge(ServiceError, error="request_trailers_too_large"):
    """A chunked body's chunk headers or trailers are over `max_head_bytes`."""


class TooManyHeaders(ServiceError, error="too_many_headers"):
    """More than `max_headers` headers."""


class RequestHeadTimeout(ServiceError, error="request_head_timeout"):
    """The request line and headers did not arrive within `head_timeout_s`."""


class TooManyConnections(RetryLater, error="too_many_connections"):
    """The server process has `max_connections` connections open."""


class ModelLoadError(Exception):
    """The model file is missing, not ONNX, or not a model this service can serve; fatal at startup."""


class ProviderUnavailable(Exception):
    """A GPU was required (`require_gpu`) but ONNX Runtime could not use CUDA; fatal at startup."""


class StartupFailed(Exception):
    """The app could not start, and its reason is logged already (`event=startup_failed`): the server exits 3
    without a traceback (service.gateway passes uvicorn no text to log)."""
