"""GPT translation of a dataset through any OpenAI-compatible server: cached, resumable, exact-once.

One job translates the items of one dataset into one language
(``results/translated/{dataset}/{lang}.parquet``) with the official ``openai``
client; ``base_url`` selects the server (OpenAI, Azure OpenAI's ``/openai/v1/``
endpoint, vLLM, Ollama, any server speaking the chat-completions API). The API
key is read from the environment variable named by ``api_key_env`` and only
handed to the client: it is never logged, written to a table, the cache or the
report (every message that could echo it is scrubbed).

Decisions:

- **Items.** ``bundled``: paragraphs of the source language of the bundled
  corpus, cleaned like the prepared corpus and restricted to its hash split
  (``subset``, default ``eval``); ``local``: a ``.jsonl``/``.parquet``/``.csv``/``.txt``
  file; ``huggingface``: a dataset streamed through ``datasets``. Finite sources
  are ordered by a hash of the item id (the order the parallel condition uses)
  and cut to ``max_items``; a hub dataset is streamed and cut (never downloaded
  whole). The target language equal to ``source_lang`` is the source itself
  (``translator: source``), so the parallel condition reads one table per language.
- **Exact once.** Every finished item is appended at once to a JSON-lines cache
  (``results/translated/.cache/{dataset}/{lang}.jsonl``, flushed and fsync'ed per
  line, outside the Snakemake output so a failed job never deletes it), keyed by
  sha256 of (model, prompt_version, source text, target language). A run first
  takes every cached item, then pays only for the rest; a killed run resumes
  where it stopped. An exclusive lock on the cache stops a second run of the same
  job. The only possible duplicate is a reply the server sent but the process
  never persisted because it was killed in that instant (at most ``concurrency``
  items per kill): chat completions have no idempotency key.
- **Retries.** The client runs with ``max_retries=0``; this module retries 429,
  408/409 and 5xx replies, timeouts, connection errors, malformed JSON, empty
  choices and empty content, up to ``max_retries`` times, with exponential backoff
  and jitter; a ``Retry-After`` (or ``retry-after-ms``) header is honoured and
  pauses every worker. 401/403/404 stop the run (every item would fail); other
  4xx replies and ``content_filter`` fail the item without retry. Failed items are
  reported (log and error message), never written as translations; the job fails
  if more than ``max_failed`` items failed (the successes stay cached).
- **Budget.** ``budget.max_items`` (items paid for in this run) and
  ``budget.max_tokens`` (tokens of this run; calls in flight may overshoot by up
  to ``concurrency`` replies) stop new requests cleanly; what is done stays
  cached and the job fails with a message saying how many items are cached and
  how to continue, so nothing half-finished looks complete.
- **Quality.** ``detected_lang`` is the offline identifier's answer
  (:class:`~workflow_scripts.langid.TokenLanguageClassifier` over
  ``langid_languages`` plus the source and target), ``lang_ok`` whether it is the
  target. ``length_ratio`` = characters of the translation / of the source;
  ``length_outlier`` flags a ratio outside ``length_ratio_bounds`` times the
  median ratio of the table (the median absorbs the script: Chinese is shorter
  than English in characters). Flagged rows are kept, never silently dropped.
- **Cost.** ``price_per_1k_tokens`` (prompt, completion) only feeds the estimate in
  the progress bar and the report.
"""

from __future__ import annotations

import contextlib
import csv
import email.utils
import fcntl
import hashlib
import json
import logging
import os
import random
import signal
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from workflow_scripts.data.corpus import clean, doc_rank, read_bundled, read_huggingface, split_of
from workflow_scripts.io import atomic_path, write_parquet
from workflow_scripts.languages import check_language, language_name

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "resources" / "schemas" / "config.schema.yaml"
BUNDLED_CORPUS = REPO / "resources" / "corpus" / "bundled.parquet"
CACHE_DIR = "results/translated/.cache"
MAX_RETRY_AFTER = 600.0  # seconds: a longer Retry-After is capped (and logged)
COLUMNS = [
    "id",
    "source_lang",
    "source_text",
    "text",
    "translator",
    "prompt_version",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "detected_lang",
    "lang_ok",
    "length_ratio",
    "length_outlier",
]


class TranslationError(RuntimeError):
    """A run that cannot go on (bad key, unknown model, budget reached, failed items)."""


def schema_defaults(section: str) -> dict[str, Any]:
    """Defaults of one top-level object section of the config schema (one source of truth)."""
    schema = yaml.safe_load(SCHEMA.read_text())
    props = schema["definitions"][section]["properties"]
    out: dict[str, Any] = {}
    for key, prop in props.items():
        if "default" in prop:
            out[key] = prop["default"]
        elif prop.get("type") == "object" and "properties" in prop:
            out[key] = {k: p["default"] for k, p in prop["properties"].items() if "default" in p}
    return out


def settings_with_defaults(settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``translation`` settings over the schema defaults (nested objects merged)."""
    out = schema_defaults("translation")
    for key, value in (settings or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def validate_sections(config: Mapping[str, Any]) -> None:
    """Check ``translation`` and every ``datasets`` entry against the schema (for the CLI;
    the workflow validates the whole config)."""
    import jsonschema

    root = yaml.safe_load(SCHEMA.read_text())
    checks = [("translation", config.get("translation") or {})]
    checks += [("dataset", spec) for spec in (config.get("datasets") or {}).values()]
    for name, value in checks:
        schema = {"$ref": f"#/definitions/{name}", "definitions": root["definitions"]}
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as err:
            where = "/".join(str(p) for p in err.absolute_path)
            raise ValueError(f"config {name} {where}: {err.message}") from None


def dataset_with_defaults(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A ``datasets`` entry over the schema defaults."""
    return {**schema_defaults("dataset"), **spec}


# ----------------------------------------------------------------------------- source items


@dataclass(frozen=True)
class Item:
    """One source item: a stable id and its text."""

    id: str
    text: str


def _local_records(path: Path, text_field: str, id_field: str | None) -> Iterator[dict[str, str]]:
    """Records of a local file; a missing text or id field is one clear error."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            yield {"doc_id": f"{path.name}:{i}", "text": line}
        return
    if suffix == ".jsonl":
        rows: Iterable[Mapping[str, Any]] = (
            json.loads(line) for line in path.open(encoding="utf-8") if line.strip()
        )
    elif suffix in (".csv", ".tsv"):
        rows = csv.DictReader(
            path.open(encoding="utf-8", newline=""),
            dialect="excel-tab" if suffix == ".tsv" else "excel",
        )
    elif suffix == ".parquet":
        from workflow_scripts.io import read_parquet

        rows = read_parquet(path).to_pylist()
    else:
        raise ValueError(f"local dataset file {path}: use .jsonl, .parquet, .csv, .tsv or .txt")
    for i, row in enumerate(rows):
        for name in (text_field, id_field):
            if name is not None and name not in row:
                raise ValueError(
                    f"local dataset file {path} has no field {name!r} (fields: {sorted(row)}); "
                    "set text_field / id_field"
                )
        doc_id = str(row[id_field]) if id_field else f"{path.name}:{i}"
        yield {"doc_id": doc_id, "text": row[text_field]}


def load_items(spec: Mapping[str, Any], name: str = "") -> list[Item]:
    """The items of a ``datasets`` entry, in their stable order, cut to ``max_items``.

    Raises ``ValueError`` naming the dataset when the source has no such text
    field or nothing is left after cleaning.
    """
    spec = dataset_with_defaults(spec)
    lang = check_language(spec["source_lang"])
    source, limit = spec["source"], spec["max_items"]
    stream = source == "huggingface"
    if source == "bundled":
        path = spec.get("path", str(BUNDLED_CORPUS))
        records: Iterable[dict[str, str]] = read_bundled({"path": path}, lang)
        if spec["subset"] != "all":
            frac = spec["eval_fraction"]
            records = (r for r in records if split_of(r["group_id"], frac) == spec["subset"])
    elif source == "local":
        if "path" not in spec:
            raise ValueError(f"dataset {name!r}: source local needs a path")
        path = Path(spec["path"].format(lang=lang))
        if not path.exists():
            raise FileNotFoundError(f"dataset {name!r}: local file {path} does not exist")
        records = _local_records(path, spec["text_field"], spec.get("id_field"))
    elif source == "huggingface":
        if "dataset" not in spec:
            raise ValueError(f"dataset {name!r}: source huggingface needs dataset: (a hub id)")
        records = read_huggingface({**spec, "split": spec.get("split", "train")}, lang)
    else:
        raise ValueError(f"dataset {name!r}: unknown source {source!r}")
    kept = clean(records, spec["min_chars"], spec["max_chars"], max_docs=limit if stream else None)
    items = [Item(str(r["doc_id"]), r["text"]) for r in kept]
    if not stream:
        items = sorted(items, key=lambda it: doc_rank(it.id))[:limit]
    if not items:
        raise ValueError(
            f"dataset {name!r}: no item left in {lang!r} after cleaning "
            f"(min_chars={spec['min_chars']}, max_chars={spec['max_chars']})"
        )
    return items


# ----------------------------------------------------------------------------- cache


def cache_key(model: str, prompt_version: str, source_text: str, target_lang: str) -> str:
    """sha256 of (model, prompt version, source text, target language)."""
    raw = json.dumps([model, prompt_version, source_text, target_lang], ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


class TranslationCache:
    """Append-only JSON-lines cache of finished items, one fsync'ed line per item.

    Opening takes an exclusive lock (a second run of the same job fails at
    once), reads every complete line (a line cut by a crash is skipped and
    closed with a newline) and keeps the file open for appending.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.path.with_suffix(".lock"), "w")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            raise TranslationError(
                f"{self.path} is locked: another run is translating this dataset and language"
            ) from None
        self.entries: dict[str, dict[str, Any]] = {}
        self.skipped = 0
        if self.path.exists():
            with self.path.open("rb") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        self.entries[rec["key"]] = rec
                    except (ValueError, KeyError, TypeError):
                        self.skipped += 1
        self._fh = self.path.open("ab")
        if self._fh.tell() and not self._tail_is_newline():
            self._fh.write(b"\n")  # close a line cut by a crash
            self._sync()
        self._write_lock = threading.Lock()

    def _tail_is_newline(self) -> bool:
        with self.path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def add(self, record: Mapping[str, Any]) -> None:
        """Persist one finished item (thread-safe; durable when this returns).

        The line reaches the operating system at once (it survives a killed
        process); the fsync (which a machine crash needs) runs outside the lock,
        so one worker's fsync never delays another's write.
        """
        line = json.dumps(record, ensure_ascii=False).encode() + b"\n"
        with self._write_lock:
            self._fh.write(line)
            self._fh.flush()
            self.entries[record["key"]] = dict(record)
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()
        self._lock_fh.close()

    def __enter__(self) -> TranslationCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- client


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


def make_client(settings: Mapping[str, Any], key: str):
    """The official ``openai`` client for ``base_url``, without its own retries."""
    import openai

    return openai.OpenAI(
        api_key=key,
        base_url=settings["base_url"],
        timeout=float(settings["timeout"]),
        max_retries=0,
    )


def _redactor(key: str):
    def redact(text: object) -> str:
        text = str(text)
        return text.replace(key, "***") if key and len(key) >= 4 else text

    return redact


def preflight(client, settings: Mapping[str, Any], redact=str) -> None:
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


# ----------------------------------------------------------------------------- the run


@dataclass
class Outcome:
    """What one item came to: a cache record, or a failure reason."""

    item: Item
    record: dict[str, Any] | None = None
    error: str = ""


@dataclass
class RunStats:
    """Counters of one run (thread-safe through ``lock``)."""

    calls: int = 0
    translated: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def cost(self, prices: Mapping[str, float]) -> float:
        return (
            self.prompt_tokens * prices.get("prompt", 0.0)
            + self.completion_tokens * prices.get("completion", 0.0)
        ) / 1000


class _Fatal(Exception):
    """An error every further item would hit too (bad key, unknown model)."""


class Translator:
    """Translates items into one language with a pool of ``concurrency`` workers."""

    def __init__(
        self,
        client,
        settings: Mapping[str, Any],
        cache: TranslationCache,
        source_lang: str,
        target_lang: str,
        redact=str,
        seed: int | None = None,
    ):
        self.client, self.s, self.cache = client, settings, cache
        self.source_lang, self.target_lang = source_lang, target_lang
        self.redact = redact
        self.stats = RunStats()
        self.stop = threading.Event()
        self._pause_until = 0.0
        self._pause_lock = threading.Lock()
        self._rng = random.Random(seed)
        self.prompt_sha = hashlib.sha256(
            (settings.get("system_prompt", "") + "\0" + settings["prompt_template"]).encode()
        ).hexdigest()[:16]

    def key(self, item: Item) -> str:
        return cache_key(self.s["model"], self.s["prompt_version"], item.text, self.target_lang)

    # --------------------------------------------------------------- one item
    def _pause(self, seconds: float) -> None:
        with self._pause_lock:
            self._pause_until = max(self._pause_until, time.monotonic() + seconds)

    def _wait_for_pause(self) -> None:
        while not self.stop.is_set():
            left = self._pause_until - time.monotonic()
            if left <= 0:
                return
            self.stop.wait(min(left, 0.5))

    def _count(self, kind: str | None = None, usage=None) -> None:
        with self.stats.lock:
            if kind is not None:
                self.stats.retries[kind] += 1
            if usage is not None:
                self.stats.prompt_tokens += usage.prompt_tokens or 0
                self.stats.completion_tokens += usage.completion_tokens or 0

    def translate_item(self, item: Item) -> Outcome:
        """Call until a good reply (persisted at once), a final failure, or a stop."""
        import openai

        s = self.s
        messages = build_messages(s, item.text, self.source_lang, self.target_lang)
        kwargs: dict[str, Any] = {
            "model": s["model"],
            "messages": messages,
            "temperature": s["temperature"],
        }
        if s.get("max_reply_tokens"):
            kwargs["max_tokens"] = s["max_reply_tokens"]
        error = ""
        for attempt in range(s["max_retries"] + 1):
            self._wait_for_pause()
            if self.stop.is_set():
                return Outcome(item, error=f"stopped after {attempt} attempt(s) {error}".strip())
            with self.stats.lock:
                self.stats.calls += 1
            wait_s: float | None = None
            try:
                reply = self.client.chat.completions.create(**kwargs)
            except openai.RateLimitError as err:
                kind, error = "429", f"HTTP 429: {self.redact(err.message)}"
                wait_s = retry_after(err.response.headers)
                if wait_s is not None:
                    wait_s = min(wait_s, MAX_RETRY_AFTER)
                    self._pause(wait_s)
            except openai.APIStatusError as err:
                status, msg = err.status_code, self.redact(err.message)
                if status in (401, 403):
                    raise _Fatal(
                        f"HTTP {status} from the server (API key / access): {msg}"
                    ) from None
                if status == 404:
                    raise _Fatal(f"HTTP 404 (unknown model {s['model']!r}?): {msg}") from None
                if status < 500 and status not in (408, 409):
                    return Outcome(item, error=f"HTTP {status}: {msg}")  # the item itself is bad
                kind, error = str(status), f"HTTP {status}: {msg}"
                wait_s = retry_after(err.response.headers)
            except openai.APITimeoutError:
                kind, error = "timeout", f"no reply within {s['timeout']} s"
            except openai.APIConnectionError as err:
                kind, error = "connection", f"connection error: {self.redact(err)}"
            except (
                ValueError,
                TypeError,
                AttributeError,
                openai.APIResponseValidationError,
            ) as err:
                # not JSON, or JSON of the wrong shape
                kind, error = "malformed", f"malformed reply: {self.redact(err)[:200]}"
            else:
                self._count(usage=reply.usage)
                text, finish, problem = _reply_text(reply)
                if problem is None:
                    record = {
                        "key": self.key(item),
                        "model": s["model"],
                        "prompt_version": s["prompt_version"],
                        "prompt_sha": self.prompt_sha,
                        "target_lang": self.target_lang,
                        "text": text,
                        "finish_reason": finish,
                        "prompt_tokens": getattr(reply.usage, "prompt_tokens", 0) or 0,
                        "completion_tokens": getattr(reply.usage, "completion_tokens", 0) or 0,
                        "reply_model": reply.model,
                        "time": time.time(),
                    }
                    self.cache.add(record)
                    with self.stats.lock:
                        self.stats.translated += 1
                    return Outcome(item, record)
                if finish == "content_filter":
                    return Outcome(item, error="refused by the server's content filter")
                kind, error = "malformed", problem
            self._count(kind)
            if attempt == s["max_retries"]:
                break
            delay = backoff_delay(attempt, s["backoff"], s["max_backoff"], self._rng)
            if wait_s is not None:  # honour Retry-After, with a little jitter
                delay = wait_s * (1 + 0.1 * self._rng.random())
            log.debug("item %s: %s; retry in %.2f s", item.id, error, delay)
            self.stop.wait(delay)
        return Outcome(item, error=f"gave up after {s['max_retries'] + 1} attempts: {error}")

    # --------------------------------------------------------------- many items
    def run(self, items: Sequence[Item], progress: bool = True) -> tuple[list[Outcome], str]:
        """Translate ``items`` (none of them cached); returns outcomes and why it stopped
        (``''`` = all done, else the budget or stop reason)."""
        s = self.s
        budget = s.get("budget") or {}
        max_items, max_tokens = budget.get("max_items"), budget.get("max_tokens")
        prices = s.get("price_per_1k_tokens") or {}
        outcomes: list[Outcome] = []
        reason, fatal = "", None
        bar = _progress_bar(len(items), f"translate {self.target_lang}", progress)
        last_log = time.monotonic()
        i = 0
        with ThreadPoolExecutor(s["concurrency"], thread_name_prefix="translate") as pool:
            pending: set[Future] = set()
            try:
                while True:
                    while len(pending) < s["concurrency"] and i < len(items):
                        if self.stop.is_set():
                            break
                        if max_items is not None and i >= max_items:
                            reason = f"budget.max_items={max_items} reached"
                            break
                        if max_tokens is not None and self.stats.tokens >= max_tokens:
                            reason = f"budget.max_tokens={max_tokens} reached"
                            break
                        pending.add(pool.submit(self.translate_item, items[i]))
                        i += 1
                    if not pending:
                        break
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    for fut in done:
                        try:
                            outcomes.append(fut.result())
                        except _Fatal as err:
                            fatal = fatal or str(err)
                            self.stop.set()
                    if bar is not None and done:
                        bar.update(len(done))
                        bar.set_postfix(
                            tokens=self.stats.tokens,
                            cost=f"${self.stats.cost(prices):.4f}",
                            retries=sum(self.stats.retries.values()),
                            refresh=False,
                        )
                    if time.monotonic() - last_log > 30:
                        last_log = time.monotonic()
                        log.info(
                            "%d/%d items, %d calls, %d tokens, ~$%.4f",
                            len(outcomes),
                            len(items),
                            self.stats.calls,
                            self.stats.tokens,
                            self.stats.cost(prices),
                        )
            except BaseException:  # a bug, a full disk, Ctrl-C: no new calls, then out
                self.stop.set()
                raise
        if bar is not None:
            bar.close()
        if fatal:
            raise TranslationError(
                f"stopped: {fatal}; {self.stats.translated} item(s) of this run are cached"
            )
        if self.stop.is_set() and not reason:
            reason = "interrupted"
        if len(outcomes) < len(items) and not reason:
            reason = "stopped early"
        return outcomes, reason


def _reply_text(reply) -> tuple[str, str, str | None]:
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


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", mininterval=1.0, dynamic_ncols=True)


@contextlib.contextmanager
def _graceful_sigterm(stop: threading.Event) -> Iterator[None]:
    """SIGTERM (a cancelled job) stops new requests; calls in flight finish and are kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(_signum, _frame) -> None:
        log.warning("SIGTERM: finishing the calls in flight, then stopping")
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- quality


def quality_columns(
    source_texts: Sequence[str],
    texts: Sequence[str],
    target_lang: str,
    languages: Sequence[str],
    bounds: Sequence[float],
) -> dict[str, list[Any]]:
    """``detected_lang``, ``lang_ok``, ``length_ratio``, ``length_outlier`` of translations."""
    from workflow_scripts.langid import TokenLanguageClassifier

    classifier = TokenLanguageClassifier(list(dict.fromkeys([*languages, target_lang])))
    detected = classifier.classify_many(texts)
    ratios = [len(t) / max(1, len(s)) for s, t in zip(source_texts, texts, strict=True)]
    median = statistics.median(ratios) if ratios else 1.0
    lo, hi = bounds
    outlier = [not (lo * median <= r <= hi * median) for r in ratios]
    return {
        "detected_lang": detected,
        "lang_ok": [d == target_lang for d in detected],
        "length_ratio": ratios,
        "length_outlier": outlier,
    }


# ----------------------------------------------------------------------------- entry point


def translate_dataset(
    dataset: str,
    spec: Mapping[str, Any],
    lang: str,
    settings: Mapping[str, Any],
    out: str | os.PathLike,
    report: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Translate dataset ``dataset`` into ``lang``; write the table (and the report) atomically.

    Order of checks, all before any paid call: the language, the dataset's
    source (its text field), the cache, then, if anything is left to
    translate, the API key and a free pre-flight request to the server.
    Returns the report.
    """
    t0 = time.monotonic()
    spec = dataset_with_defaults(spec)
    s = settings_with_defaults(settings)
    lang = check_language(lang)
    source_lang = check_language(spec["source_lang"])
    targets = [check_language(c) for c in spec["languages"]]
    if lang not in targets and lang != source_lang:
        raise ValueError(
            f"dataset {dataset!r}: {lang!r} is not one of its languages "
            f"({', '.join([source_lang, *targets])})"
        )
    items = load_items(spec, dataset)
    log.info("dataset %s: %d %s items -> %s", dataset, len(items), source_lang, lang)
    report_data: dict[str, Any] = {
        "dataset": dataset,
        "source_lang": source_lang,
        "lang": lang,
        "items": len(items),
        "model": s["model"],
        "prompt_version": s["prompt_version"],
    }
    if lang == source_lang:
        identity = {"translator": "source", "prompt_version": "", "finish_reason": "source"}
        rows = [
            {"text": it.text, **identity, "prompt_tokens": 0, "completion_tokens": 0}
            for it in items
        ]
        report_data.update(cached=0, translated=0, calls=0, failed=[])
    else:
        cache = cache or Path(CACHE_DIR) / dataset / f"{lang}.jsonl"
        rows, run_report = _translate_items(items, source_lang, lang, s, cache, progress)
        report_data.update(run_report)
    ok_items = [it for it, row in zip(items, rows, strict=True) if row is not None]
    ok_rows = [row for row in rows if row is not None]
    quality = quality_columns(
        [it.text for it in ok_items],
        [r["text"] for r in ok_rows],
        lang,
        [*s["langid_languages"], source_lang],
        s["length_ratio_bounds"],
    )
    table = {
        "id": [it.id for it in ok_items],
        "source_lang": [source_lang] * len(ok_items),
        "source_text": [it.text for it in ok_items],
        **{c: [r[c] for r in ok_rows] for c in COLUMNS[3:9]},
        **quality,
    }
    report_data.update(
        rows=len(ok_rows),
        lang_ok=sum(quality["lang_ok"]),
        length_outliers=sum(quality["length_outlier"]),
        wall_seconds=round(time.monotonic() - t0, 3),
    )
    meta_keys = "dataset source_lang lang model prompt_version rows lang_ok length_outliers"
    meta = {k: report_data[k] for k in meta_keys.split()}
    write_parquet(table, out, metadata=meta)
    if report is not None:
        with atomic_path(report) as tmp:
            tmp.write_text(json.dumps(report_data, indent=1, ensure_ascii=False) + "\n")
    log.info(
        "%s/%s: %d rows (%d language ok, %d length outliers)",
        dataset,
        lang,
        len(ok_rows),
        report_data["lang_ok"],
        report_data["length_outliers"],
    )
    return report_data


def _translate_items(
    items: Sequence[Item],
    source_lang: str,
    lang: str,
    s: Mapping[str, Any],
    cache_path: str | os.PathLike,
    progress: bool,
) -> tuple[list[dict[str, Any] | None], dict[str, Any]]:
    """Rows per item (``None`` = failed) from the cache plus this run's calls."""
    prices = s.get("price_per_1k_tokens") or {}
    with TranslationCache(cache_path) as cache:
        keys = [cache_key(s["model"], s["prompt_version"], it.text, lang) for it in items]
        todo = [it for it, k in zip(items, keys, strict=True) if cache.get(k) is None]
        n_cached = len(items) - len(todo)
        log.info(
            "%d of %d items cached (%s), %d to translate",
            n_cached,
            len(items),
            cache.path,
            len(todo),
        )
        stats, failures, reason = RunStats(), [], ""
        if todo:
            key = api_key(s)
            redact = _redactor(key)
            client = make_client(s, key)
            preflight(client, s, redact)
            translator = Translator(client, s, cache, source_lang, lang, redact)
            _warn_on_prompt_change(cache, keys, translator.prompt_sha)
            with _graceful_sigterm(translator.stop):
                outcomes, reason = translator.run(todo, progress)
            stats = translator.stats
            failures = [o for o in outcomes if o.record is None]
            for o in failures:
                log.error("item %s failed: %s", o.item.id, o.error)
        n_done = sum(cache.get(k) is not None for k in keys)
        run_report = {
            "cached": n_cached,
            "translated": stats.translated,
            "calls": stats.calls,
            "retries": dict(stats.retries),
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
            "estimated_cost": round(stats.cost(prices), 6),
            "failed": [{"id": o.item.id, "error": o.error} for o in failures],
            "concurrency": s["concurrency"],
        }
        log.info("run: %s", json.dumps({k: v for k, v in run_report.items() if k != "failed"}))
        if reason:
            raise TranslationError(
                f"{reason}: {n_done} of {len(items)} items are translated and cached in "
                f"{cache.path} ({stats.translated} in this run, {stats.tokens} tokens, "
                f"~${stats.cost(prices):.4f}); nothing was written. Run again to continue "
                "(cached items are not paid again), or raise translation.budget"
            )
        if len(failures) > s["max_failed"]:
            shown = "; ".join(f"{o.item.id}: {o.error}" for o in failures[:5])
            raise TranslationError(
                f"{len(failures)} item(s) failed (max_failed={s['max_failed']}): {shown}"
                f"{' ...' if len(failures) > 5 else ''}. The {n_done} translated items are cached; "
                "run again to retry only the failed ones"
            )
        rows: list[dict[str, Any] | None] = []
        for k in keys:
            rec = cache.get(k)
            rows.append(
                None
                if rec is None
                else {
                    "text": rec["text"],
                    "translator": rec["model"],
                    "prompt_version": rec["prompt_version"],
                    "prompt_tokens": int(rec.get("prompt_tokens", 0)),
                    "completion_tokens": int(rec.get("completion_tokens", 0)),
                    "finish_reason": rec.get("finish_reason", ""),
                }
            )
    return rows, run_report


def _warn_on_prompt_change(cache: TranslationCache, keys: Sequence[str], prompt_sha: str) -> None:
    stale = sum(1 for k in keys if (r := cache.get(k)) and r.get("prompt_sha") != prompt_sha)
    if stale:
        log.warning(
            "%d cached translations were made with another prompt template under the same "
            "prompt_version: they are reused; change translation.prompt_version to re-translate",
            stale,
        )


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workflow_scripts.translation.run --config config.yaml --dataset D --lang fr``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--config", required=True, help="a workflow config file")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--lang", required=True)
    parser.add_argument("--out", help="default results/translated/{dataset}/{lang}.parquet")
    parser.add_argument("--report", help="default: next to --out, .report.json")
    parser.add_argument("--cache", help=f"default {CACHE_DIR}/{{dataset}}/{{lang}}.jsonl")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = yaml.safe_load(Path(args.config).read_text()) or {}
    try:
        validate_sections(config)
    except ValueError as err:
        parser.error(str(err))
    datasets = config.get("datasets") or {}
    if args.dataset not in datasets:
        parser.error(f"unknown dataset {args.dataset!r}: configured are {', '.join(datasets)}")
    out = Path(args.out or f"results/translated/{args.dataset}/{args.lang}.parquet")
    report = args.report or str(out.with_suffix(".report.json"))
    try:
        translate_dataset(
            args.dataset,
            datasets[args.dataset],
            args.lang,
            config.get("translation") or {},
            out,
            report,
            args.cache,
            progress=not args.no_progress,
        )
    except (TranslationError, ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 1
    return 0


_quiet = ("httpx", "httpx2", "openai")
for _name in _quiet:  # one INFO line per request would drown the log
    logging.getLogger(_name).setLevel(logging.WARNING)

if __name__ == "__main__":
    raise SystemExit(main())
