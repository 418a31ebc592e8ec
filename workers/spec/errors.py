"""Error types. The split that matters to the flow: bad input is permanent (record a failed row, move
on), a service that is down is transient (retry with backoff)."""

from __future__ import annotations


class EmoframeError(Exception):
    """Base class for errors emoframe raises on purpose."""


class BadInputError(EmoframeError):
    """The input itself is unusable; retrying will not help. ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class ServiceUnavailableError(EmoframeError):
    """A service (Triton, storage) could not be reached or is not ready; worth retrying later."""


class ContractMismatchError(EmoframeError):
    """The served model expects different inputs than this client prepares (a different contract)."""


class StorageUnavailableError(ServiceUnavailableError):
    """The storage holding a source or the output could not be read or written; worth retrying later."""
