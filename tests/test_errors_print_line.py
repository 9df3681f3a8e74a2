"""Ranks under torchrun share one stderr pipe: each one-line error must reach it in one write(2),
or two ranks' lines can run into one (seen in CI: `...resume=autoperfkit train: rank 0: ...`)."""
import os
import subprocess
import sys

WRITER = """
import os, sys
from perfkit.errors import print_line
calls = []
real_write = os.write
def write(fd, data):
    calls.append(bytes(data))
    return real_write(fd, data)
os.write = write
print("printed before", file=sys.stderr)  # with PYTHONUNBUFFERED: its own writes, not yet logged
print_line("perfkit train: rank 1: " + "x" * 5000)
print_line("second\\n")
sys.stdout.write(repr(calls))
"""


def test_a_line_goes_out_in_one_write_after_what_was_printed_before():
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # print() writes the text and its newline apart
    r = subprocess.run([sys.executable, "-c", WRITER], capture_output=True, env=env, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    calls = eval(r.stdout)  # the os.write calls print_line made, in order
    assert calls == [b"perfkit train: rank 1: " + b"x" * 5000 + b"\n", b"second\n"]
    assert r.stderr == "printed before\nperfkit train: rank 1: " + "x" * 5000 + "\nsecond\n"
