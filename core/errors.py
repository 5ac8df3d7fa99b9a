"""The root of the domain's exceptions: messages tell a person what to do next."""

from __future__ import annotations


class CoreError(Exception):
    """Base for every error raised by core."""


class ConfigError(CoreError):
    """A setting is missing, unknown or of the wrong kind; the message names the key."""
