"""Moderation of the client's messages and of the answer while it streams.

``MODERATION`` chooses the moderator (``moderators.py``); ``stage.py`` checks the
input before the upstream is called and the answer window by window
(``windows.py``), in hold or stream mode; ``checks.py`` runs each check off the
event loop, bounded and counted (``metrics.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .moderators import ConfigError, Verdict, make_moderator
from .stage import Moderation

__all__ = ["ConfigError", "Moderation", "Verdict", "make_moderation"]

MODES = ("hold", "stream")
ON_ERROR = ("block", "allow")


def make_moderation(config: Mapping[str, Any]) -> Moderation | None:
    """The moderation stage ``MODERATION`` asks for; None when it is off. Raises
    ``ConfigError`` naming the setting that cannot work."""
    moderator = make_moderator(config)
    if moderator is None:
        return None
    if config["MODERATION_MODE"] not in MODES:
        raise ConfigError(
            f"MODERATION_MODE must be hold or stream, not {config['MODERATION_MODE']!r}"
        )
    if config["MODERATION_ON_ERROR"] not in ON_ERROR:
        raise ConfigError(
            "MODERATION_ON_ERROR must be block or allow, not "
            f"{config['MODERATION_ON_ERROR']!r}"
        )
    window, overlap = (
        config["MODERATION_WINDOW_CHARS"],
        config["MODERATION_OVERLAP_CHARS"],
    )
    if window < 1 or not 0 <= overlap < window:
        raise ConfigError(
            "MODERATION_WINDOW_CHARS must be 1 or more and MODERATION_OVERLAP_CHARS "
            f"from 0 to less than it (not {window} and {overlap})"
        )
    if config["MODERATION_TIMEOUT"] <= 0 or config["MODERATION_CONCURRENCY"] < 1:
        raise ConfigError(
            "MODERATION_TIMEOUT must be above 0 and MODERATION_CONCURRENCY 1 or more"
        )
    return Moderation(config, moderator)
