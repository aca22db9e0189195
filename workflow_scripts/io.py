"""File I/O shared by every step: atomic writes and checked Parquet reads.

Outputs are written to a temporary name beside the target and moved into
place with :func:`os.replace`, so a crash never leaves a file that looks
finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; move it into place on success.

    On an exception the temporary file (or directory) is removed and ``target``
    is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod((0o777 if is_dir else 0o666) & ~umask)  # mkstemp/mkdtemp make it private
        if is_dir and target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_parquet(
    table: pa.Table | dict[str, Any],
    path: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write ``table`` (or a dict of columns) atomically as zstd Parquet.

    ``metadata`` is stored JSON-encoded in the schema under the key ``info``
    and read back by :func:`read_metadata`.
    """
    if not isinstance(table, pa.Table):
        table = pa.table(table)
    if metadata is not None:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), b"info": json.dumps(metadata).encode()}
        )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_parquet(
    path: str | os.PathLike, columns: list[str] | None = None, optional: Sequence[str] = ()
) -> pa.Table:
    """Read a Parquet file, turning a missing, corrupt or incomplete file into one clear error;
    with ``columns``, only those (each required) and the ``optional`` ones the file has."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file does not exist")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from err
    if columns is not None:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; has {table.column_names}")
        table = table.select([*columns, *(c for c in optional if c in table.column_names)])
    return table


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``info`` metadata written by :func:`write_parquet` (empty if none)."""
    raw = (pq.read_schema(path).metadata or {}).get(b"info")
    return json.loads(raw) if raw else {}


def write_frame(frame, csv_path: str | os.PathLike, parquet_path: str | os.PathLike) -> None:
    """A pandas table as CSV and Parquet (the collected tables), each written atomically."""
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False)
    write_parquet(pa.Table.from_pandas(frame, preserve_index=False), parquet_path)
