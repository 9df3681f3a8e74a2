"""perfkit.atomic: a failed write leaves the old destination and no temporary file behind."""

import pytest

from perfkit.atomic import atomic_output, write_atomic


def test_write_atomic_replaces_whole_content(tmp_path):
    dst = tmp_path / "sub" / "out.bin"
    write_atomic(dst, b"old")
    write_atomic(dst, iter([b"new ", b"pieces"]))
    assert dst.read_bytes() == b"new pieces"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["out.bin"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    dst = tmp_path / "out.bin"
    write_atomic(dst, b"old")

    def pieces():
        yield b"partial"
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(dst, pieces())
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(dst) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert dst.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
