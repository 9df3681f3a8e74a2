"""Parquet sources for `perfkit pack`: one document per row of the text column.

The main process reads only the footer (schema, row groups, sizes) to check the text column and
to plan tasks: a row group, or a slice of one when it holds much more text than a chunk (so a file
with one huge row group still keeps every worker busy). A worker reads its row group's text
column with pyarrow (`iter_batches(row_groups=[i], columns=[text_key])`: one row group, one
column, in batches, never the whole file or even the whole group in memory). A null text is a bad row (`path:row N: text is null`, N counted from 1 over the
whole file), under the same --on-bad-line policy as a bad JSONL line.

pyarrow is the optional dependency `perfkit[parquet]` (its wheel is ~50 MB; JSONL users do not need
it): it is imported inside the functions below, only when a parquet source is packed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perfkit.errors import UserError

NULL_TEXT = "text is null"
BATCH_ROWS = 1024           # rows a worker decodes at a time (a few MB of FineWeb-sized documents)
MAX_TASK_BYTES = 64 << 20   # text per task at most: its tokens wait in the worker for their offset
WHOLE_GROUP_CHUNKS = 8      # a row group of up to this many chunks of text stays one task (see plan_row_slices)
READ_BUFFER_BYTES = 1 << 20  # a column chunk is read through a buffer this size, never whole
INSTALL_HINT = "parquet input needs pyarrow: pip install 'perfkit[parquet]' (or pip install pyarrow)"


class ParquetSourceError(UserError):
    """A parquet file that cannot be read; the message names the file (and the row)."""


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.parquet
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return pyarrow


def open_parquet(path: str):
    """The file with bounded reads: pyarrow's defaults (pre_buffer, buffer_size=0) read a row
    group's whole column chunk into memory before the first batch, which for one 10 GB row group
    is 10 GB per worker; a 1 MiB read buffer streams it (and decoded a 364 MB chunk in half the CPU
    time here)."""
    pa = _pyarrow()
    try:
        return pa.parquet.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
    except (pa.ArrowException, OSError) as e:
        raise ParquetSourceError(f"{path}: not a readable parquet file ({e})") from None


def text_field(schema, column: str) -> tuple[str, tuple[str, ...], object] | None:
    """Where the text of `column` (a --text-key, dotted for a nested field) is in an arrow schema:
    (the top-level column to read, the struct fields down to the text, the text's type), or None.
    A dotted key names struct fields first, as it names nested JSON objects in a JSONL; a top-level
    column whose own name has the dots is the fallback."""
    pa = _pyarrow()
    head, *rest = column.split(".")
    field = schema.field(head) if head in schema.names else None
    for name in rest:
        if field is None or not pa.types.is_struct(field.type) or field.type.get_field_index(name) < 0:
            field = None
            break
        field = field.type.field(name)
    if field is not None:
        return head, tuple(rest), field.type
    if rest and column in schema.names:
        return column, (), schema.field(column).type
    return None


def _is_text_type(t) -> bool:
    """string, large_string (polars writes it), string_view, or a dictionary of those (pandas'
    categorical): what pyarrow gives for a parquet UTF8 column under the file's stored arrow schema."""
    pa = _pyarrow()
    if pa.types.is_dictionary(t):
        t = t.value_type
    return any(check(t) for check in (pa.types.is_string, pa.types.is_large_string,
                                      getattr(pa.types, "is_string_view", lambda _t: False)))


def _as_plain_text(arr):
    """A text array as string / large_string: the kinds arrow's compute kernels and to_pylist
    below take (binary_length has no string_view kernel; a dictionary is decoded)."""
    pa = _pyarrow()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.large_string())
    return arr


def check_text_column(pf, path: str, column: str) -> None:
    """UserError unless `column` names a string column (or struct field) of the file."""
    schema = pf.schema_arrow
    found = text_field(schema, column)
    ok = found is not None and _is_text_type(found[2])
    if not ok:
        listed = ", ".join(f"{n} ({schema.field(n).type})" for n in schema.names) or "none"
        raise ParquetSourceError(f"{path}: no string column {column!r} (columns: {listed}); "
                                 "name the text column with --text-key (dotted for a struct field)")


def _leaf_count(t) -> int:
    """Parquet leaf columns of an arrow type (a struct has one per leaf of its children)."""
    pa = _pyarrow()
    if pa.types.is_struct(t):
        return sum(_leaf_count(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _leaf_count(t.key_type) + _leaf_count(t.item_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _leaf_count(t.value_type)
    return 1


def _leaf_index(schema, column: str) -> int:
    """The parquet column chunk (leaf) of the text field: its sizes plan the tasks."""
    top, fields, _ = text_field(schema, column)
    index = sum(_leaf_count(schema.field(i).type) for i in range(schema.get_field_index(top)))
    t = schema.field(top).type
    for name in fields:
        k = t.get_field_index(name)
        index += sum(_leaf_count(t.field(i).type) for i in range(k))
        t = t.field(k).type
    return index


@dataclass(frozen=True)
class RowSlice:
    row_group: int
    row_start: int      # within the row group
    row_stop: int
    file_row: int       # the file's row number of row_start (0-based), for messages
    est_bytes: int      # uncompressed size of the slice's text column (progress)


def plan_row_slices(pf, column: str, min_tasks: int, max_task_bytes: int = MAX_TASK_BYTES) -> list[RowSlice]:
    """Row groups in order, each one task or cut into row slices of about `max_task_bytes` of text
    (pack passes its JSONL chunk size), so that there are about `min_tasks` tasks in all.

    Cutting costs decode time: parquet has no cheap row ranges, so a worker decodes a group's
    column from its first row up to the end of its slice (RowGroupReader streams forward), and
    every worker that gets a slice of the group decodes it once. A group is therefore kept whole
    when the file has at least `min_tasks` groups (the workers are kept busy to the end anyway)
    and it holds at most WHOLE_GROUP_CHUNKS chunks of text (Hugging Face datasets' 1,000-row groups
    of a few MB).
    Larger groups are cut to chunk-sized slices: with 16 slices of one 123 MB group parquet ran at
    0.75x JSONL's speed (one worker finished the last 7.7 MB task alone), with ~1 MiB slices 0.93x
    (2 workers, bench/results/pack_formats_cpu_123mb_2026-12-02.md)."""
    md = pf.metadata
    col = _leaf_index(pf.schema_arrow, column)
    groups = md.num_row_groups
    slices, file_row = [], 0
    for g in range(groups):
        rg = md.row_group(g)
        rows = rg.num_rows
        size = max(1, rg.column(col).total_uncompressed_size)
        if groups >= min_tasks and size <= WHOLE_GROUP_CHUNKS * max_task_bytes:
            want = 1
        else:
            want = max(-(-min_tasks // max(groups, 1)), -(-size // max_task_bytes))
        pieces = int(min(rows, want))
        cuts = np.linspace(0, rows, pieces + 1).round().astype(np.int64) if pieces else []
        for a, b in zip(cuts[:-1], cuts[1:]):
            slices.append(RowSlice(g, int(a), int(b), file_row + int(a), size * int(b - a) // rows))
        file_row += rows
    return slices


class _GroupStream:
    """Batches of one row group's text column, read forward: `pos` is the group row of buf[0]."""

    def __init__(self, pf, path: str, row_group: int, column: str):
        self.key = (path, row_group)
        top, self.fields, _ = text_field(pf.schema_arrow, column)   # checked by the main process
        # use_threads=False: the workers are the parallelism; pyarrow threads would oversubscribe
        self.batches = pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[row_group], columns=[top],
                                       use_threads=False)
        self.pos, self.buf = 0, None

    def _next_texts(self):
        arr = next(self.batches).column(0)   # StopIteration: fewer rows than the footer said
        for name in self.fields:   # flatten(): the child with its parent's nulls applied
            arr = arr.flatten()[arr.type.get_field_index(name)]
        return _as_plain_text(arr)

    def take(self, start: int, stop: int) -> list:
        """Arrays covering group rows [start, stop); start >= self.pos."""
        parts = []
        while start < stop:
            if self.buf is None:
                self.buf = self._next_texts()
            end = self.pos + len(self.buf)
            if start < end:
                a, b = start - self.pos, min(stop, end) - self.pos
                parts.append(self.buf.slice(a, b - a))
                start = self.pos + b
            if start >= end:   # this batch is used up (or skipped: rows of another worker's slice)
                self.pos, self.buf = end, None
        return parts


class RowGroupReader:
    """A worker's view of the parquet sources: the text of a row slice, with the null rows.

    A worker's slices of a row group come in increasing order (tasks are sent in order), so it
    streams the group forward in batches of BATCH_ROWS rows, decoding the rows before its slice
    and dropping them: memory is one batch, not the row group, and each worker decodes each group
    at most once. A slice behind the stream's position starts the group again."""

    def __init__(self, column: str):
        self.column = column
        self.files: dict[str, object] = {}
        self.stream: _GroupStream | None = None

    def read(self, path: str, row_group: int, row_start: int, row_stop: int, file_row: int
             ) -> tuple[list[str], list[tuple[int, str]], int]:
        """(texts of the non-null rows, [(row index in the slice, reason)], UTF-8 bytes of the texts)."""
        pa = _pyarrow()
        try:
            if self.stream is None or self.stream.key != (path, row_group) or self.stream.pos > row_start:
                pf = self.files.get(path) or self.files.setdefault(path, open_parquet(path))
                self.stream = _GroupStream(pf, path, row_group, self.column)
            parts = self.stream.take(row_start, row_stop)
        except (pa.ArrowException, OSError, StopIteration) as e:
            self.stream = None
            why = str(e) or "fewer rows than its footer says"
            raise ParquetSourceError(f"{path}:row {file_row + 1}: cannot read row group {row_group}: {why}") from None
        arr = pa.concat_arrays(parts) if parts else pa.array([], pa.string())
        bad: list[tuple[int, str]] = []
        if arr.null_count:
            nulls = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))
            bad = [(int(i), NULL_TEXT) for i in nulls]
            arr = arr.drop_null()
        text_bytes = pa.compute.sum(pa.compute.binary_length(arr)).as_py() or 0
        try:
            texts = arr.to_pylist()
        except UnicodeDecodeError as e:  # parquet does not promise valid UTF-8 in a string column
            raise ParquetSourceError(f"{path}:row {file_row + 1}: invalid UTF-8 in row group {row_group} ({e})") from None
        return texts, bad, int(text_bytes)
