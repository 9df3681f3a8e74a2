"""prep/decompress.py: memory bounded for any input (a gzip or zstd "bomb" included), and a zstd
stream cut anywhere (mid-block, between frames' headers, around skippable frames) is called truncated."""

from __future__ import annotations

import gzip

import pytest
import zstandard

from perfkit.prep.decompress import OUT_BLOCK, TruncatedStream, iter_decompressed, zstd_frames_complete
from perfkit.prep.sources import GZIP, ZSTD

TEXT = b"".join(b'{"text": "document %d"}\n' % i for i in range(60_000))   # ~1.5 MB, several zstd blocks
SKIPPABLE = (0x184D2A57).to_bytes(4, "little") + (6).to_bytes(4, "little") + b"opaque"


def _pieces(path, fmt):
    return list(iter_decompressed(str(path), fmt))


@pytest.mark.parametrize("fmt,compress", [(GZIP, gzip.compress), (ZSTD, zstandard.ZstdCompressor().compress)])
def test_a_bomb_comes_out_in_bounded_pieces(tmp_path, fmt, compress):
    # 256 MiB of zeros compress to a few hundred KB (gzip) or a few KB (zstd): one read block of
    # it used to come out whole
    bomb = b"\0" * (256 << 20)
    path = tmp_path / f"bomb.{fmt}"
    path.write_bytes(compress(bomb) + compress(TEXT))
    assert path.stat().st_size < 1 << 20
    sizes = [len(p) for p in iter_decompressed(str(path), fmt)]
    assert max(sizes) <= OUT_BLOCK and sum(sizes) == len(bomb) + len(TEXT)


def _frames():
    with_checksum = zstandard.ZstdCompressor(write_checksum=True, write_content_size=False)
    return [SKIPPABLE, with_checksum.compress(TEXT[:700_000]), SKIPPABLE,
            zstandard.ZstdCompressor(level=1).compress(TEXT[700_000:]), SKIPPABLE]


def test_frames_and_skippable_frames_read_whole(tmp_path):
    path = tmp_path / "f.jsonl.zst"
    path.write_bytes(b"".join(_frames()))
    assert b"".join(_pieces(path, ZSTD)) == TEXT
    with open(path, "rb") as f:
        assert zstd_frames_complete(f)


def test_every_cut_of_a_zstd_stream_is_truncated(tmp_path):
    data = b"".join(_frames())
    ends, pos = [], 0
    for frame in _frames():
        pos += len(frame)
        ends.append(pos)
    path = tmp_path / "cut.jsonl.zst"
    # cuts inside each frame header, block header, block, checksum and skippable frame; frame ends are whole
    cuts = sorted({*range(1, 40), *range(ends[1] - 12, ends[1] + 12), *range(ends[3] - 12, ends[3] + 12),
                   *range(len(data) - 20, len(data)), len(data) // 3, len(data) // 2})
    for cut in cuts:
        path.write_bytes(data[:cut])
        if cut in ends:
            with open(path, "rb") as f:
                assert zstd_frames_complete(f), cut
            continue
        with pytest.raises((TruncatedStream, zstandard.ZstdError)):
            _pieces(path, ZSTD)
        with open(path, "rb") as f:
            assert not zstd_frames_complete(f), cut


def test_gzip_members_and_a_cut_member(tmp_path):
    path = tmp_path / "m.jsonl.gz"
    data = gzip.compress(TEXT[:1000]) + gzip.compress(TEXT[1000:])
    path.write_bytes(data)
    assert b"".join(_pieces(path, GZIP)) == TEXT
    path.write_bytes(data[:-3])
    with pytest.raises(TruncatedStream):
        _pieces(path, GZIP)
