"""The run: translate one dataset into one language and write its table and report.

:func:`translate_dataset` checks everything it can before any paid call, takes what
the cache already holds, then :class:`Translator` translates the rest with a pool of
``concurrency`` workers (retries, the budget, a progress bar, SIGTERM stops new calls).
The decisions behind it are in the package docstring (:mod:`workflow_scripts.translation`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workflow_scripts.io import atomic_path, write_parquet
from workflow_scripts.languages import check_language
from workflow_scripts.translation.cache import TranslationCache, cache_key
from workflow_scripts.translation.client import (
    MAX_RETRY_AFTER,
    Redact,
    api_key,
    backoff_delay,
    build_messages,
    make_client,
    preflight,
    quiet_http_loggers,
    redactor,
    reply_text,
    retry_after,
)
from workflow_scripts.translation.errors import TranslationError
from workflow_scripts.translation.quality import quality_columns
from workflow_scripts.translation.settings import dataset_with_defaults, settings_with_defaults
from workflow_scripts.translation.sources import Item, load_items

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)

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
        client: openai.OpenAI,
        settings: Mapping[str, Any],
        cache: TranslationCache,
        source_lang: str,
        target_lang: str,
        redact: Redact = str,
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
                text, finish, problem = reply_text(reply)
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


def translate_dataset(
    dataset: str,
    spec: Mapping[str, Any],
    lang: str,
    settings: Mapping[str, Any],
    out: str | os.PathLike,
    report: str | os.PathLike | None,
    cache: str | os.PathLike,
    progress: bool = True,
) -> dict[str, Any]:
    """Translate dataset ``dataset`` into ``lang``; write the table (and the report) atomically.

    Order of checks, all before any paid call: the language, the dataset's
    source (its text field), the cache, then, if anything is left to
    translate, the API key and a free pre-flight request to the server.
    Returns the report.
    """
    t0 = time.monotonic()
    quiet_http_loggers()
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
            redact = redactor(key)
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
