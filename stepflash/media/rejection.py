"""The one way a media check says no; the caller adds which part it was."""

from __future__ import annotations


class MediaRejected(Exception):
    """The bytes cannot be used. `unsupported` marks a format problem (unsupported_content_type)
    rather than a bound or a broken file (request_params_invalid)."""

    def __init__(self, message: str, *, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported
