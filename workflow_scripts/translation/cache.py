"""The exact-once cache: one fsync'ed JSON line per finished item, under an exclusive lock.

Keyed by sha256 of (model, prompt_version, source text, target language); it lives
outside the Snakemake outputs, so a failed or killed job keeps what it paid for.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workflow_scripts.translation.errors import TranslationError


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
