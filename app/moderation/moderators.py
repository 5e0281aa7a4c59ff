"""Moderators: text in, a verdict out (allowed, or flagged with categories).

A moderator checks a list of texts in one call and answers a verdict per text, in
order: one call per window of an answer, whatever the window holds. It may raise;
the caller (``checks.py``) times it, bounds it and applies ``MODERATION_ON_ERROR``.

- ``keywords``: words (``MODERATION_KEYWORDS=a,b``), whole words, any case; or
  ``@path``: a file of regular expressions, one per line (``#`` comments and blank
  lines skipped), matched case-insensitively. Local and deterministic.
- ``openai``: OpenAI's moderation endpoint (``/v1/moderations``) through the
  ``openai`` package, on the upstream or on ``MODERATION_BASE_URL``.
- ``module:function``: any Python callable taking one text; it answers a falsy
  value (allowed), ``True`` (flagged), a category name, or an iterable of category
  names (flagged with those; empty is allowed).
"""

from __future__ import annotations

import importlib
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx2
import openai

from ..providers.transport import StreamingTransport

# The category a keyword match, and a callable's bare True, is counted under.
KEYWORD = "keyword"
FLAGGED = "flagged"


@dataclass(frozen=True)
class Verdict:
    """What a check found of one text. ``failed``: the moderator could not say, and
    ``flagged`` is what ``MODERATION_ON_ERROR`` made of that."""

    flagged: bool
    categories: tuple[str, ...] = ()
    failed: bool = False


ALLOWED = Verdict(False)


class Moderator(Protocol):
    # Whether a check leaves the process or may block its thread: it then runs
    # under the timeout and the concurrency bound, off the event loop.
    remote: bool

    def check(self, texts: list[str]) -> list[Verdict]:
        """A verdict per text, in order."""
        ...


class ConfigError(ValueError):
    """A moderation setting that cannot work; the server does not start."""


class KeywordModerator:
    """Flags a text holding any of the words or patterns."""

    remote = False

    def __init__(self, pattern: re.Pattern[str]):
        self.pattern = pattern

    @classmethod
    def from_setting(cls, setting: str) -> KeywordModerator:
        """``MODERATION_KEYWORDS``: comma-separated words, or ``@path`` to a file of
        regular expressions, one per line."""
        setting = setting.strip()
        if setting.startswith("@"):
            return cls(_patterns_from(Path(setting[1:])))
        words = [word.strip() for word in setting.split(",") if word.strip()]
        if not words:
            raise ConfigError(
                "MODERATION_KEYWORDS: MODERATION=keywords needs comma-separated "
                "words or @path to a file of regular expressions"
            )
        # Longest first, so that of two words where one starts the other the
        # longer matches; \b only where the word itself begins or ends with one.
        words.sort(key=len, reverse=True)
        alternatives = "|".join(_whole_word(word) for word in words)
        return cls(re.compile(alternatives, re.IGNORECASE))

    def check(self, texts: list[str]) -> list[Verdict]:
        return [
            Verdict(True, (KEYWORD,)) if self.pattern.search(text) else ALLOWED
            for text in texts
        ]


def _whole_word(word: str) -> str:
    escaped = re.escape(word)
    head = r"\b" if re.match(r"\w", word) else ""
    tail = r"\b" if re.search(r"\w$", word) else ""
    return head + escaped + tail


def _patterns_from(path: Path) -> re.Pattern[str]:
    where = f"MODERATION_KEYWORDS: @{path}"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.strerror})") from None
    patterns = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            re.compile(line)
        except re.error as exc:
            raise ConfigError(f"{where}, line {number}: {exc}") from None
        patterns.append(f"(?:{line})")
    if not patterns:
        raise ConfigError(f"{where}: holds no regular expression")
    return re.compile("|".join(patterns), re.IGNORECASE)


class OpenAIModerator:
    """OpenAI's moderation endpoint: one request per call, every text its input."""

    remote = True

    def __init__(self, *, api_key: str, base_url: str, model: str, timeout: float):
        self.model = model
        self.client = openai.OpenAI(
            api_key=api_key or "unused",
            base_url=base_url or None,
            timeout=openai.Timeout(timeout, connect=timeout),
            # A failure follows MODERATION_ON_ERROR at once: a retry would hold the
            # answer back longer than the timeout promises.
            max_retries=0,
            http_client=_http_client(base_url, timeout),
        )

    def check(self, texts: list[str]) -> list[Verdict]:
        response = self.client.moderations.create(input=texts, model=self.model)
        if len(response.results) != len(texts):
            raise ValueError(
                f"the moderator answered {len(response.results)} results for "
                f"{len(texts)} inputs"
            )
        return [_openai_verdict(result) for result in response.results]


def _openai_verdict(result: Any) -> Verdict:
    if not result.flagged:
        return ALLOWED
    categories = result.categories.model_dump(by_alias=True)
    named = tuple(sorted(name for name, on in categories.items() if on is True))
    return Verdict(True, named or (FLAGGED,))


def _http_client(base_url: str, timeout: float) -> httpx2.Client | None:
    """The relay's own transport, which every async mode waits on cooperatively;
    httpx's when a proxy is set for the moderator (it honours HTTP(S)_PROXY)."""
    url = urllib.parse.urlsplit(base_url or "https://api.openai.com/v1")
    proxies = urllib.request.getproxies()
    if url.scheme in proxies and not urllib.request.proxy_bypass(url.hostname):
        return None
    return httpx2.Client(
        transport=StreamingTransport(),
        timeout=httpx2.Timeout(timeout),
        follow_redirects=True,
    )


class CallableModerator:
    """A Python callable of the operator's (``module:function``), called per text."""

    remote = True

    def __init__(self, function: Callable[[str], Any]):
        self.function = function

    @classmethod
    def from_setting(cls, setting: str) -> CallableModerator:
        module_name, _, name = setting.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"MODERATION: module {module_name!r} cannot be imported ({exc})"
            ) from None
        function = getattr(module, name, None)
        if not callable(function):
            raise ConfigError(
                f"MODERATION: {module_name!r} has no callable named {name!r}"
            )
        return cls(function)

    def check(self, texts: list[str]) -> list[Verdict]:
        return [_callable_verdict(self.function(text)) for text in texts]


def _callable_verdict(answer: Any) -> Verdict:
    if not answer:
        return ALLOWED
    if answer is True:
        return Verdict(True, (FLAGGED,))
    if isinstance(answer, str):
        return Verdict(True, (answer,))
    if isinstance(answer, Iterable):
        categories = tuple(str(category) for category in answer)
        return Verdict(True, categories) if categories else ALLOWED
    raise TypeError(
        f"a moderation callable answered {type(answer).__name__}: expected a "
        "falsy value, True, a category or categories"
    )


def make_moderator(config: Mapping[str, Any]) -> Moderator | None:
    """The moderator ``MODERATION`` names; None when it is off."""
    choice = (config["MODERATION"] or "off").strip()
    if choice == "off":
        return None
    if choice == "keywords":
        return KeywordModerator.from_setting(config["MODERATION_KEYWORDS"])
    if choice == "openai":
        return OpenAIModerator(
            api_key=config["MODERATION_API_KEY"] or config["OPENAI_API_KEY"],
            base_url=config["MODERATION_BASE_URL"] or config["OPENAI_BASE_URL"],
            model=config["MODERATION_MODEL"],
            timeout=config["MODERATION_TIMEOUT"],
        )
    if re.fullmatch(r"[\w.]+:\w+", choice):
        return CallableModerator.from_setting(choice)
    raise ConfigError(
        f"MODERATION must be off, keywords, openai or module:function, not {choice!r}"
    )
