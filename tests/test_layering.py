"""The dependency direction of docs/architecture.md, read from the source (imports inside functions count):

cli -> every command module; prep (JSONL -> .pbin, torch-free) -> formats; data (.pbin -> batches)
-> formats, config; train -> model, data, formats, checkpoint, metrics, config; checkpoint -> model, formats, config
(its hf_tokenizer -> prep.tokenizer); model -> kernels;
kernels -> torch and triton only; config -> errors only; formats, errors and ranks -> nothing of ours
but errors (and atomic); prep and data never import each other; nothing imports cli or bench.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# package folder on disk -> its import name
PACKAGES = {"perfkit": "perfkit", "kernels": "perfkit.kernels", "bench": "perfkit.bench"}

# importer (module name prefix) -> perfkit parts it may import (prefixes); the first match wins
ALLOWED = [
    ("perfkit.cli", None),                 # the front door may import anything
    ("perfkit.demo_cmd", ("perfkit.prep", "perfkit.train", "perfkit.config")),  # fetch, pack, train
    ("perfkit.inspect_cmd", ("perfkit.formats", "perfkit.prep", "perfkit.data", "perfkit.errors")),
    ("perfkit.generate_cmd", ("perfkit.checkpoint", "perfkit.model", "perfkit.prep", "perfkit.config",
                              "perfkit.errors")),
    ("perfkit.bench", None),
    ("perfkit.errors", ()),
    ("perfkit.ranks", ()),                 # rank / world size helpers: torch.distributed only
    ("perfkit.process_exit", ()),          # how a process that ran a process group ends: stdlib only
    ("perfkit.config", ("perfkit.errors",)),
    ("perfkit.atomic", ()),
    ("perfkit.kernels", ("perfkit.kernels",)),
    ("perfkit.model", ("perfkit.model", "perfkit.kernels", "perfkit.config", "perfkit.errors")),
    ("perfkit.formats", ("perfkit.formats", "perfkit.atomic", "perfkit.errors")),
    ("perfkit.prep", ("perfkit.prep", "perfkit.formats", "perfkit.atomic", "perfkit.errors")),
    ("perfkit.data", ("perfkit.data", "perfkit.formats", "perfkit.config", "perfkit.atomic", "perfkit.errors")),
    ("perfkit.metrics_wandb", ("perfkit.config", "perfkit.atomic", "perfkit.errors")),
    ("perfkit.metrics", ("perfkit.metrics_wandb", "perfkit.config", "perfkit.atomic", "perfkit.errors")),
    ("perfkit.plot_cmd", ("perfkit.errors",)),
    # the HF export writes the tokenizer the data was packed with: it resolves it as pack does (and
    # shares its GPT-2 byte alphabet)
    ("perfkit.checkpoint.hf_tokenizer", ("perfkit.prep.tokenizer", "perfkit.prep.tokenizer_convert", "perfkit.formats",
                                         "perfkit.errors")),
    ("perfkit.checkpoint", ("perfkit.checkpoint", "perfkit.model", "perfkit.formats", "perfkit.config",
                            "perfkit.atomic", "perfkit.errors", "perfkit.ranks")),
    # bits per byte needs the bytes of each token id of the tokenizer that packed the val files;
    # prep/tokenizer.py is the one resolver of tokenizer names (torch-free, so no cycle)
    ("perfkit.train.bits_per_byte", ("perfkit.data", "perfkit.formats", "perfkit.errors", "perfkit.prep.tokenizer")),
    ("perfkit.train", ("perfkit.train", "perfkit.model", "perfkit.data", "perfkit.formats", "perfkit.checkpoint",
                       "perfkit.metrics", "perfkit.config", "perfkit.atomic", "perfkit.errors",
                       "perfkit.ranks", "perfkit.process_exit")),
]


def modules():
    for folder, name in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([name, *parts]), path, path.name == "__init__.py"


def perfkit_imports(module: str, path: Path, is_package: bool) -> set[str]:
    package = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("perfkit")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("perfkit"):
                found |= {f"{base}.{a.name}" if base in ("perfkit", "perfkit.data", "perfkit.train",
                                                           "perfkit.model", "perfkit.checkpoint",
                                                           "perfkit.prep", "perfkit.formats")
                          else base for a in node.names}
    return found


def allowed_for(module: str):
    if module == "perfkit":
        return ()  # the package's __init__: no import-time side effects, no imports of its parts
    for prefix, allowed in ALLOWED:
        if module == prefix or module.startswith(prefix + "."):
            return allowed
    raise AssertionError(f"{module} has no layering rule: add one to tests/test_layering.py")


def test_imports_follow_the_dependency_direction():
    problems = []
    for module, path, is_package in modules():
        allowed = allowed_for(module)
        for imported in perfkit_imports(module, path, is_package):
            if imported.startswith(("perfkit.cli", "perfkit.bench")) and not module.startswith(
                    ("perfkit.cli", "perfkit.bench")):
                problems.append(f"{module} imports {imported}: nothing imports cli or bench")
            elif allowed is not None and not any(imported == a or imported.startswith(a + ".")
                                                 for a in allowed):
                problems.append(f"{module} imports {imported}")
    assert not problems, "\n".join(problems)


def test_the_rule_table_sees_the_code():
    """Guards the test itself: the walk finds the packages and real edges."""
    edges = {m: perfkit_imports(m, p, pkg) for m, p, pkg in modules()}
    assert len(edges) > 40
    assert any(i.startswith("perfkit.kernels") for m, e in edges.items() if m.startswith("perfkit.model") for i in e)
    assert any(i.startswith("perfkit.data") for m, e in edges.items() if m.startswith("perfkit.train") for i in e)


def test_corpus_preparation_and_the_pbin_format_never_import_torch():
    """prep/ and formats/ are the torch-free half (`perfkit pack` and `perfkit index` run without it)."""
    problems = []
    for folder in ("prep", "formats"):
        for path in sorted((ROOT / "perfkit" / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                problems += [f"{path.relative_to(ROOT)} imports {n}" for n in names if n.split(".")[0] == "torch"]
    assert not problems, "\n".join(problems)
    assert (ROOT / "perfkit" / "prep" / "pack_cmd.py").is_file() and (ROOT / "perfkit" / "formats" / "pbin.py").is_file()
