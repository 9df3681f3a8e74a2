"""JSONL reading for pack and index: byte-range chunks of whole lines, the text field, bad lines.

A chunk [start, end) of the file owns the lines whose first byte lies in [start, end); a worker
finds them itself (one small read before `start` and a read-ahead past `end` to finish the last
line), so no process ever scans the whole file to cut it.

The text field is decoded with one msgspec call per line (only the text field materialised);
when any line of a chunk fails, the chunk is classified line by line to name every bad line and
its reason. (Each line is decoded on its own on purpose: joining a chunk's lines into one JSON
array let a line split in two plus a line holding two objects decode as the right number of
"documents", packing malformed lines silently. Per line costs no more than the joined call.)
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import msgspec
import numpy as np

from perfkit.errors import UserError

# Reasons a line is bad, as printed in errors and the summary's skipped counts.
BLANK = "blank line"
MALFORMED = "malformed JSON"
NOT_OBJECT = "not a JSON object"
MISSING = "missing text field"
NOT_STRING = "text field is not a string"
BAD_UTF8 = "invalid UTF-8"
TRUNCATED = "truncated last line"
BOM = "UTF-8 byte-order mark (BOM) before the JSON; save the file without it"
TOO_DEEP = "JSON nested too deeply"   # msgspec (like Python's json) stops near 1,000 levels
REASONS = (BLANK, MALFORMED, NOT_OBJECT, MISSING, NOT_STRING, BAD_UTF8, TRUNCATED, BOM, TOO_DEEP)

READ_AHEAD = 1 << 20  # bytes read at a time to finish a chunk's last line


class BadLineError(UserError):
    """A bad line under --on-bad-line error: `path:line: reason`."""


class BadLineReport:
    """The one place pack and index act on a bad line: raise under --on-bad-line error, else count
    it per reason and print the first MAX_EXAMPLES as warnings on stderr."""

    MAX_EXAMPLES = 10

    def __init__(self, stop_at_first_bad: bool, skipped: dict[str, int]):
        self.stop, self.skipped, self.examples = stop_at_first_bad, skipped, 0

    def add(self, where: str, reason: str) -> None:
        """where: `path:line` or `path: index entry N (byte offset B)`."""
        if self.stop:
            raise BadLineError(f"{where}: {reason}")
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if self.examples < self.MAX_EXAMPLES:
            print(f"warning: {where}: {reason} (skipped)", file=sys.stderr)
            self.examples += 1


def parse_text_key(key: str, what: str = "--text-key") -> tuple[str, ...]:
    """`text`, `.text` (jq style, as in Modalities' jq_pattern) or `meta.body.text` -> path parts.

    what: how errors name the setting (the flag, or a config key such as `$.settings.jq_pattern`)."""
    parts = tuple(key[1:].split(".") if key.startswith(".") else key.split("."))
    if not key or any(not p for p in parts):
        raise UserError(f"{what} {key!r}: expected a key or a dotted path such as 'text' or 'meta.text'")
    # Only object keys can be followed: jq indexing (`.a[0].text`) and quoted keys would otherwise
    # read as a key never found ("missing text field" on line 1), or crash msgspec's field renaming.
    bad = next((c for c in key if c in '[]"\\' or ord(c) < 0x20), None)
    if bad is not None:
        raise UserError(f"{what} {key!r}: {bad!r} is not supported; give object keys only, "
                         "e.g. 'meta.text' (array indexing and quoted jq keys are not followed)")
    return parts


@dataclass
class LineChunk:
    """The whole lines of one chunk. body[starts[i]:starts[i]+lengths[i]] is line i ('\\n' excluded)."""

    body: bytes
    base: int                 # file offset of body[0]
    starts: np.ndarray        # (n,) int64, relative to body
    lengths: np.ndarray       # (n,) int64
    unterminated_last: bool   # the last line ends at EOF without '\n'
    contiguous: bool = True   # lines are exactly body split at '\n' (byte-range chunks): split fast

    @property
    def num_lines(self) -> int:
        return int(self.starts.shape[0])

    def line(self, i: int) -> bytes:
        s = int(self.starts[i])
        return self.body[s:s + int(self.lengths[i])]


def read_line_chunk(fd: int, start: int, end: int, file_size: int) -> LineChunk:
    """Read the lines whose first byte is in [start, end) with pread (no shared file position)."""
    end = min(end, file_size)
    if start > 0:
        head = os.pread(fd, end - start + 1, start - 1)  # bytes [start-1, end)
        nl = head.find(b"\n")
        first = start + nl if nl >= 0 else end           # a line starts right after a '\n'
        data = head[nl + 1:] if nl >= 0 else b""
    else:
        first, data = 0, os.pread(fd, end, 0)
    pieces = [data]
    pos = end
    if data and not data.endswith(b"\n"):                # finish the last line past `end`
        while pos < file_size:
            more = os.pread(fd, READ_AHEAD, pos)
            if not more:
                break
            cut = more.find(b"\n")
            if cut >= 0:
                pieces.append(more[:cut + 1])
                break
            pieces.append(more)
            pos += len(more)
    body = b"".join(pieces) if len(pieces) > 1 else data
    return split_lines(body, first)


def split_lines(body: bytes, base: int) -> LineChunk:
    newlines = np.flatnonzero(np.frombuffer(body, dtype=np.uint8) == 0x0A)
    unterminated = bool(body) and not body.endswith(b"\n")
    ends = np.append(newlines, len(body)) if unterminated else newlines
    starts = np.concatenate([[0], newlines + 1])[:ends.shape[0]].astype(np.int64)
    return LineChunk(body, base, starts, (ends - starts).astype(np.int64), unterminated)


class TextExtractor:
    """Pulls the text field (a key path) out of JSON lines."""

    def __init__(self, key_path: tuple[str, ...]):
        self.key_path = key_path
        self.key = ".".join(key_path)
        leaf: type = str
        for depth, part in reversed(list(enumerate(key_path))):
            # Each level is a struct with one field renamed to the JSON key; other keys are skipped
            # without being materialised.
            leaf = msgspec.defstruct(f"Level{depth}", [("value", leaf)], rename={"value": part})
        self._root = leaf
        self._one = msgspec.json.Decoder(leaf).decode
        # float_hook=float: a number beyond the float range (1e400) is inf, as json.loads reads it.
        # Without it msgspec's untyped decoder calls the line malformed while the typed one above
        # (which only skips the number) accepts it, so a good line was dropped or failed the run
        # whenever another line of its chunk sent the chunk to classify() (tests/test_pack_fuzz.py).
        self._any = msgspec.json.Decoder(float_hook=float)

    def _unwrap(self, obj) -> str:
        for _ in self.key_path:
            obj = obj.value
        return obj

    def texts_fast(self, chunk: LineChunk) -> list[str] | None:
        """All texts of a chunk, or None if any line is bad (then use classify)."""
        if chunk.num_lines == 0:
            return []
        body = chunk.body
        try:
            body.decode("utf-8")  # msgspec does not validate skipped fields; ~1 GB/s
        except UnicodeDecodeError:
            return None
        if chunk.contiguous:
            lines = body.split(b"\n")
            if not chunk.unterminated_last:
                lines.pop()       # the empty piece after the final '\n'
        else:
            lines = [chunk.line(i) for i in range(chunk.num_lines)]
        one, unwrap = self._one, self._unwrap
        try:
            return [unwrap(one(line)) for line in lines]
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None

    def classify(self, line: bytes, last_unterminated: bool) -> tuple[str | None, str | None]:
        """(text, None) for a good line, (None, reason) for a bad one."""
        if not line.strip():
            return None, BLANK
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return None, BAD_UTF8
        if line.startswith(b"\xef\xbb\xbf"):  # an editor's BOM: valid-looking JSON that fails
            return None, BOM
        # A line texts_fast() accepts must be good here too, with the same text: a line's verdict
        # may not depend on which other lines share its chunk (the chunk size and worker count).
        # The untyped decode below only names the reason, or reads what the typed one cannot
        # (a duplicated key whose first value is not a string, as json.loads keeps the last).
        try:
            return self._unwrap(self._one(line)), None
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            pass
        try:
            obj = self._any.decode(line)
        except msgspec.DecodeError:
            return None, TRUNCATED if last_unterminated else MALFORMED
        except RecursionError:  # a traceback from the worker otherwise
            return None, TOO_DEEP
        if not isinstance(obj, dict):
            return None, NOT_OBJECT
        for part in self.key_path:
            if not isinstance(obj, dict) or part not in obj:
                return None, MISSING
            obj = obj[part]
        if not isinstance(obj, str):
            return None, NOT_STRING
        return obj, None


def extract_texts(chunk: LineChunk, extractor: TextExtractor, stop_at_first_bad: bool
                  ) -> tuple[list[str], np.ndarray, list[tuple[int, str]]]:
    """(texts of the good lines, (n,) bool mask of good lines, [(line index, reason)] of bad lines).

    With stop_at_first_bad the scan ends at the first bad line (the run is failing anyway)."""
    texts = extractor.texts_fast(chunk)
    good = np.ones(chunk.num_lines, dtype=bool)
    if texts is not None:
        return texts, good, []
    texts, bad = [], []
    last = chunk.num_lines - 1
    for i in range(chunk.num_lines):  # slow path: only for chunks holding a bad line
        text, reason = extractor.classify(chunk.line(i), chunk.unterminated_last and i == last)
        if reason is None:
            texts.append(text)
        else:
            good[i] = False
            bad.append((i, reason))
            if stop_at_first_bad:
                good[i + 1:] = False
                break
    return texts, good, bad
