"""The user docs name only config keys and commands that exist (so a renamed key cannot leave a
stale page behind). docs/configuration.md has its own, stricter check in test_config.py."""

import re
from pathlib import Path

import msgspec
import pytest

from perfkit import cli
from perfkit.config import Config, SchedulerConfig

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["getting-started.md", "from-modalities.md", "multi-node.md"]
SECTIONS = [f.name for f in msgspec.structs.fields(Config)]
KEY = re.compile(r"(?<![\w./-])(?:--)?(" + "|".join(SECTIONS) + r")\.([a-z0-9_]+)\b")  # keys may hold digits (float8)
# Look like keys but are not: a file name, and a YAML path of the Modalities tutorial.
NOT_KEYS = {"model.pt", "model.model_initializer"}
COMMAND = re.compile(r"`perfkit ([a-z]+)")


def _fields(section: str) -> set[str]:
    if section == "scheduler":
        return {"kind"} | {f.name for t in SchedulerConfig.__args__ for f in msgspec.structs.fields(t)}
    tp = next(f.type for f in msgspec.structs.fields(Config) if f.name == section)
    return {f.name for f in msgspec.structs.fields(tp)}


@pytest.mark.parametrize("page", PAGES)
def test_config_keys_named_in_docs_exist(page):
    path = DOCS / page
    if not path.exists():
        pytest.skip(f"{page} not written yet")
    text = path.read_text(encoding="utf-8")
    found = {(m.group(1), m.group(2)) for m in KEY.finditer(text) if m.group(0).lstrip("-") not in NOT_KEYS}
    assert found, f"{page} names no config key"
    unknown = sorted(f"{s}.{k}" for s, k in found if k not in _fields(s))
    assert not unknown, f"{page} names keys that perfkit/config.py does not have: {unknown}"


@pytest.mark.parametrize("page", PAGES)
def test_commands_named_in_docs_exist(page):
    path = DOCS / page
    if not path.exists():
        pytest.skip(f"{page} not written yet")
    names = {name for name, _, _ in cli.COMMANDS}
    used = set(COMMAND.findall(path.read_text(encoding="utf-8")))
    assert not used - names, f"{page} names commands that do not exist: {sorted(used - names)}"
