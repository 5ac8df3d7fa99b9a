"""The root of the domain's exceptions: messages tell a person what to do next."""

from __future__ import annotations


class CoreError(Exception):
    """Base for every error raised by core."""


class ConfigError(CoreError):
    """A setting is missing, unknown or of the wrong kind; the message names the key."""


class DeliveryError(CoreError):
    """A channel could not deliver a message."""


class RetryLater(DeliveryError):
    """Temporary (5xx, timeout, 429): try again, after retry_after seconds if the provider said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentFailure(DeliveryError):
    """Will never work (bot blocked, invalid number): stop and mark the address unreachable."""


class RaceLost(CoreError):
    """Another process made the same row at the same moment: try the transaction again."""
