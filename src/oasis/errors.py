"""The one exception tree of oasis.

Every error a lower layer can raise is an ``OasisError``; each class carries the HTTP status and
the OpenAI error ``type``/``code`` it maps to, so the HTTP error handler and the CLI can turn it
into output without matching on message text.
"""

from __future__ import annotations

from typing import Any, ClassVar


def shorten(text: str, limit: int = 200) -> str:
    """Client text quoted in an error message, cut to ``limit`` characters."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class OasisError(Exception):
    """Base class: an error with an OpenAI-shaped envelope."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        """The body OpenAI sends: ``{"error": {message, type, param, code}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(OasisError):
    """400: the request is malformed, has a wrong type or an out-of-range value."""

    status = 400
    error_type = "invalid_request_error"


class UnsupportedParameterError(InvalidRequestError):
    """400: a documented OpenAI parameter that oasis does not support (yet)."""

    default_code = "unsupported_parameter"


class ContextLengthExceededError(InvalidRequestError):
    """400: prompt plus requested completion do not fit the model's context window."""

    default_code = "context_length_exceeded"


class FileTooLargeError(InvalidRequestError):
    """413: an uploaded file (``/v1/files``) is over the server's limit."""

    status = 413
    default_code = "file_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The file is too large: this server accepts files of at most {limit} bytes "
            "(OASIS_MAX_FILE_BYTES).",
            param="file",
        )


class AuthenticationError(OasisError):
    """401: missing or wrong API key."""

    status = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(OasisError):
    """403: a valid key that may not do this (a non-admin key on the admin API)."""

    status = 403
    error_type = "invalid_request_error"
    default_code = "insufficient_permissions"


class NotFoundError(OasisError):
    """404: unknown route or object."""

    status = 404
    error_type = "invalid_request_error"


class ModelNotFoundError(NotFoundError):
    """404: the requested model does not exist here."""

    default_code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{shorten(model)}` does not exist or you do not have access to it.",
            param="model",
        )


class MethodNotAllowedError(OasisError):
    """405: the route exists but not for this HTTP method."""

    status = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class OverloadedError(OasisError):
    """503: the engine's wait queue is full; retry after a moment."""

    status = 503
    error_type = "server_error"
    default_code = "server_overloaded"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class EngineError(OasisError):
    """500: the inference engine failed while serving a request."""

    status = 500
    error_type = "server_error"


class ModelLoadError(OasisError):
    """503: a model that loads on demand could not be loaded (a broken file, too little
    memory); the next request for it tries again."""

    status = 503
    error_type = "server_error"
    default_code = "model_load_failed"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class ModelBusyError(OasisError):
    """409: an admin asked to unload a model that is serving requests (or cannot be
    unloaded); it unloads by itself once idle for its ``keep_alive``."""

    status = 409
    error_type = "invalid_request_error"
    default_code = "model_busy"


class UpstreamError(OasisError):
    """502: the upstream servers of a model failed (connection refused or reset, a 5xx, an
    answer that is not OpenAI's shape) and every retry and fallback was spent."""

    status = 502
    error_type = "server_error"
    default_code = "upstream_error"


class UpstreamUnavailableError(UpstreamError):
    """503: no replica of the model can take a request now (all ejected, or cooling down
    after a 429); ``Retry-After`` says when one may."""

    status = 503
    default_code = "upstream_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class UpstreamConfigError(UpstreamError):
    """502: an upstream refused oasis itself (401, 403, 404, a redirect): its key or
    ``upstream_model`` is wrong. Not the client's fault, and no fallback hides it."""


class UpstreamTimeoutError(UpstreamError):
    """504: the upstream did not answer (or send its first byte) in time."""

    status = 504
    default_code = "upstream_timeout"


class ConfigError(Exception):
    """Invalid configuration (bad model path, unreadable oasis.toml); raised at start-up."""


class InvalidModelFileError(InvalidRequestError):
    """400: a file offered as a model is not a usable GGUF file (not GGUF, truncated, a header
    that does not parse); raised by the model store (``oasis.models.store``)."""

    default_code = "invalid_model_file"


class ModelPullError(OasisError):
    """502: fetching a model from a hub failed (repository not found, gated without a token,
    hub unreachable, a download whose checksum does not match). ``code`` says which."""

    status = 502
    error_type = "server_error"
    default_code = "model_pull_failed"
