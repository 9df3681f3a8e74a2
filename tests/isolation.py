"""Run test modules marked `isolated` in a child pytest process, one child per module.

Why: after transformers has built and loaded models in a process (torch 2.13 CPU, transformers 5),
the first call of a perfkit custom op later in that process fails about one time in three with
`ValueError: vector::reserve`, `MemoryError: std::bad_alloc` or a segmentation fault inside
torch's op binding (`_get_operation_for_overload_or_packet`): memory that the op's binding reads has
been overwritten. The dispatcher's own view of the op is intact, no torch.library registration is
removed, and the failure never happens with address randomisation off, which is why a clean run
can pass and the next fail. Keeping transformers out of the main test process keeps every other
test's memory clean; the marked modules run whole in their own process.

The child writes one JSON line per test phase (setup, call, teardown) into a file; the parent
replays them as its own reports, so -x, -k, the summary and failure tracebacks work as usual. A
child that dies (a crash, a timeout) fails every test of its module that it did not report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

CHILD_ENV = "PERFKIT_ISOLATED_REPORT"  # set in the child: the file its reports go to
CHILD_TIMEOUT_S = 900

_results: dict[str, list[dict]] = {}  # nodeid -> the child's reports for it
_finished_modules: dict[str, str] = {}  # module path -> what the child printed last (for a crash)


def in_child() -> bool:
    return CHILD_ENV in os.environ


def child_import(name: str):
    """The module `name` in the child (skipping the module's tests when it is missing); None in the
    parent, which collects the tests but must never import it."""
    return pytest.importorskip(name) if in_child() else None


def record_child_report(report: pytest.TestReport) -> None:
    """In the child: append one phase's report, as JSON, to the parent's file."""
    entry = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
             "longrepr": report.longreprtext if report.failed else "",
             "skip": list(report.longrepr) if report.skipped and isinstance(report.longrepr, tuple) else None,
             "duration": report.duration, "sections": list(report.sections)}
    with open(os.environ[CHILD_ENV], "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def _run_module(session: pytest.Session, module: str) -> None:
    """Run the selected isolated tests of `module` in one child pytest; fill _results."""
    nodeids = [it.nodeid for it in session.items
               if it.nodeid.split("::")[0] == module and it.get_closest_marker("isolated")]
    with tempfile.TemporaryDirectory(prefix="perfkit-isolated-") as tmp:
        report_file = Path(tmp) / "reports.jsonl"
        report_file.touch()
        env = {**os.environ, CHILD_ENV: str(report_file)}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(session.config.rootpath),
               *nodeids]
        try:
            proc = subprocess.run(cmd, cwd=session.config.rootpath, env=env, capture_output=True, text=True,
                                  timeout=CHILD_TIMEOUT_S)
            tail = f"child pytest exited with {proc.returncode}:\n" + (proc.stdout + proc.stderr)[-4000:]
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            tail = f"child pytest ran past {CHILD_TIMEOUT_S} s:\n" + out[-4000:]
        for line in report_file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short by the child's death
                continue
            _results.setdefault(entry["nodeid"], []).append(entry)
    _finished_modules[module] = tail


def _replay(item: pytest.Item, entry: dict) -> pytest.TestReport:
    if entry["outcome"] == "skipped" and entry["skip"]:
        longrepr = tuple(entry["skip"])
    else:
        longrepr = entry["longrepr"] or None
    return pytest.TestReport(item.nodeid, item.location, {k: 1 for k in item.keywords}, entry["outcome"],
                             longrepr, entry["when"], sections=[tuple(s) for s in entry["sections"]],
                             duration=entry["duration"])


def run_isolated(item: pytest.Item) -> bool | None:
    """pytest_runtest_protocol for a marked item in the parent: report what its child reported."""
    if in_child() or item.get_closest_marker("isolated") is None:
        return None
    module = item.nodeid.split("::")[0]
    if module not in _finished_modules:
        _run_module(item.session, module)
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    entries = list(_results.get(item.nodeid, []))
    if not any(e["when"] == "teardown" for e in entries):  # the child died in or before this test
        entries = [e for e in entries if e["when"] == "setup" and e["outcome"] == "passed"]
        entries.append({"when": "call", "outcome": "failed", "skip": None, "duration": 0.0, "sections": [],
                        "longrepr": f"the isolated child did not finish {item.nodeid}; "
                                    f"{_finished_modules[module]}"})
    for entry in entries:
        item.ihook.pytest_runtest_logreport(report=_replay(item, entry))
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
