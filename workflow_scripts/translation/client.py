"""The OpenAI-compatible server: the key, the client, a free pre-flight, the messages of one
item, retry timing and reading a reply.

The key comes from the environment variable ``api_key_env`` and is only handed to the
client; every message that could echo it goes through a redactor.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from workflow_scripts.languages import language_name
from workflow_scripts.translation.errors import TranslationError

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletion

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 600.0  # seconds: a longer Retry-After is capped (and logged)
QUIET_LOGGERS = ("httpx", "httpx2", "openai")

Redact = Callable[[object], str]


def quiet_http_loggers() -> None:
    """Raise the HTTP client loggers to WARNING: one INFO line per request would drown the log."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def api_key(settings: Mapping[str, Any]) -> str:
    """The key from the environment variable ``api_key_env`` (``''`` = a keyless local server)."""
    env = settings["api_key_env"]
    if not env:
        return "no-key"
    key = os.environ.get(env, "")
    if not key.strip():
        raise TranslationError(
            f"the environment variable {env} (translation.api_key_env) is not set: export "
            f"{env}=<your key> before running, or set api_key_env: '' for a local server "
            "that needs no key"
        )
    return key.strip()


def make_client(settings: Mapping[str, Any], key: str) -> openai.OpenAI:
    """The official ``openai`` client for ``base_url``, without its own retries."""
    import openai

    return openai.OpenAI(
        api_key=key,
        base_url=settings["base_url"],
        timeout=float(settings["timeout"]),
        max_retries=0,
    )


def redactor(key: str) -> Redact:
    """A function that writes ``key`` as ``***`` in any text (a key under 4 characters is kept)."""

    def redact(text: object) -> str:
        text = str(text)
        return text.replace(key, "***") if key and len(key) >= 4 else text

    return redact


def preflight(client: openai.OpenAI, settings: Mapping[str, Any], redact: Redact = str) -> None:
    """A free ``GET /models``: fail before any paid call if the server is unreachable or
    rejects the key. A server that does not list models (404 ...) only gets a warning."""
    import openai

    url = settings["base_url"]
    try:
        models = [m.id for m in client.models.list().data]
    except openai.AuthenticationError as err:
        raise TranslationError(
            f"the server {url} rejected the API key from {settings['api_key_env']} "
            f"(HTTP {err.status_code}): {redact(err.message)}"
        ) from None
    except openai.PermissionDeniedError as err:
        raise TranslationError(
            f"the server {url} denied access (HTTP 403): {redact(err.message)}"
        ) from None
    except openai.APIConnectionError as err:
        raise TranslationError(
            f"the translation server {url} is unreachable ({type(err).__name__}: "
            f"{redact(err)}); check translation.base_url and that the server is running"
        ) from None
    except openai.APIStatusError as err:
        log.warning("%s does not list models (HTTP %s); going on", url, err.status_code)
        return
    except Exception as err:  # a non-JSON /models reply: the chat endpoint may still work
        log.warning("%s: could not list models (%s); going on", url, redact(err))
        return
    if models and settings["model"] not in models:
        log.warning(
            "model %r is not among the %d models %s lists (e.g. %s); going on",
            settings["model"],
            len(models),
            url,
            ", ".join(models[:5]),
        )


def build_messages(
    settings: Mapping[str, Any], text: str, source_lang: str, target_lang: str
) -> list[dict[str, str]]:
    """Chat messages of one item: the system prompt (if any) and the filled template."""
    user = settings["prompt_template"].format(
        text=text,
        source_language=language_name(source_lang),
        target_language=language_name(target_lang),
        source_lang=source_lang,
        target_lang=target_lang,
    )
    system = settings.get("system_prompt") or ""
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        with contextlib.suppress(ValueError):
            return max(0.0, float(ms) / 1000)
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: ``min(maximum, initial * 2**attempt) * U(0.5, 1)``."""
    return min(maximum, initial * 2**attempt) * (0.5 + 0.5 * rng.random())


def reply_text(reply: ChatCompletion) -> tuple[str, str, str | None]:
    """(text, finish_reason, problem): ``problem`` is set for an empty or missing reply."""
    choices = getattr(reply, "choices", None) or []
    if not choices:
        return "", "", "reply without choices"
    choice = choices[0]
    finish = choice.finish_reason or ""
    message = getattr(choice, "message", None)
    text = (getattr(message, "content", None) or "").strip()
    if finish == "content_filter":
        return text, finish, "content filter"
    if not text:
        return "", finish, "empty reply content"
    return text, finish, None
