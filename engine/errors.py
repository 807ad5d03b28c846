"""The one exception tree of Nudge.

::

    NudgeError
    ├── ConfigError          settings file or environment is wrong (names the key)
    ├── ValidationError      inbound data is malformed (names the field)
    │   ├── AuthError        missing or wrong write key, admin token or webhook signature
    │   └── LimitError       a size limit was exceeded (names the limit)
    ├── NotFoundError        a customer, rule or delivery that does not exist
    ├── RenderError          a template failed to render (names the template and line)
    └── StoreError           the database refused or is unreachable
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthError",
    "ConfigError",
    "LimitError",
    "NotFoundError",
    "NudgeError",
    "RenderError",
    "StoreError",
    "ValidationError",
]


class NudgeError(Exception):
    """Root of every error Nudge raises on purpose."""

    code = "error"
    status = 500

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The one JSON error shape of the HTTP API."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class ConfigError(NudgeError):
    code = "config_error"


class ValidationError(NudgeError):
    code = "invalid"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message, details=details)
        if code is not None:
            self.code = code


class AuthError(ValidationError):
    """``challenge`` is the ``WWW-Authenticate`` scheme to answer with (``Basic``, ``Bearer``)."""

    code = "unauthorized"
    status = 401

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        challenge: str | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.challenge = challenge


class LimitError(ValidationError):
    code = "limit_exceeded"
    status = 400


class NotFoundError(NudgeError):
    code = "not_found"
    status = 404


class RenderError(NudgeError):
    """A template failed to render: ``template`` (file name), ``line`` (1-based, or None),
    ``message``."""

    code = "render_error"
    status = 422

    def __init__(self, template: str, line: int | None, message: str) -> None:
        where = f"{template}:{line}" if line is not None else template
        super().__init__(f"{where}: {message}", details={"template": template, "line": line})
        self.template = template
        self.line = line
        self.message = message


class StoreError(NudgeError):
    code = "store_error"
    status = 503
