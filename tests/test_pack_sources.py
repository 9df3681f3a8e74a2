"""`perfkit pack SRC...`: several files, folders and globs into one .pbin, in the order given
(folders and globs sorted), documents in order within and across files (issue 14)."""

import json

import pytest

from perfkit.prep import pack_cmd as pack
from perfkit.prep.sources import expand_sources, source_format
from test_pack import reference_pbin


def jsonl(path, texts):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def run(*args):
    return pack.main([*map(str, args), "--tokenizer", "gpt2", "--no-progress"])


@pytest.fixture
def corpus(tmp_path):
    """Three files whose names sort differently from their creation order."""
    b = jsonl(tmp_path / "data" / "b.jsonl", [f"b{i} " * i for i in range(40)])
    a = jsonl(tmp_path / "data" / "a.jsonl", ["a0", "", "a2 ünïcode"])
    c = jsonl(tmp_path / "data" / "sub" / "c.jsonl", [f"c{i}" for i in range(7)])
    (tmp_path / "data" / "README.md").write_text("not a corpus file")
    (tmp_path / "data" / ".hidden.jsonl").write_text("{broken\n")
    return a, b, c


def concat(tmp_path, *files):
    out = tmp_path / "concat.jsonl"
    out.write_bytes(b"".join(f.read_bytes() for f in files))
    return out


def test_files_in_the_order_given(tmp_path, corpus, capsys):
    a, b, c = corpus
    dst = tmp_path / "o.pbin"
    assert run(c, a, b, "-o", dst, "--workers", "2", "--chunk-mb", "0.0005") == 0
    assert dst.read_bytes() == reference_pbin(concat(tmp_path, c, a, b))
    out = capsys.readouterr().out
    assert f"  {c}: 7 documents" in out and f"  {b}: 40 documents" in out and "packed 50 documents" in out
    # sources on both sides of the flags, as a shell glob expands them
    assert pack.main([str(c), "-o", str(tmp_path / "x.pbin"), str(a), "--tokenizer", "gpt2", str(b),
                      "--no-progress"]) == 0
    assert (tmp_path / "x.pbin").read_bytes() == dst.read_bytes()


def test_a_folder_and_a_glob_expand_in_sorted_order(tmp_path, corpus):
    a, b, c = corpus
    assert [s.path for s in expand_sources([str(tmp_path / "data")])] == [a, b, c]
    assert [s.path for s in expand_sources([str(tmp_path / "data" / "*.jsonl"), str(c)])] == [a, b, c]
    assert [s.path for s in expand_sources([str(tmp_path / "data" / "**" / "c.jsonl")])] == [c]
    dst = tmp_path / "o.pbin"
    assert run(tmp_path / "data", "-o", dst, "--workers", "2") == 0
    assert dst.read_bytes() == reference_pbin(concat(tmp_path, a, b, c))


def test_formats_follow_the_name():
    assert [source_format(n) for n in ["x.jsonl", "x.JSONL.GZ", "x.json.zst", "x.zstd", "x.parquet", "x.pq",
                                       "x.txt"]] == ["jsonl", "jsonl.gz", "jsonl.zst", "jsonl.zst", "parquet",
                                                     "parquet", "jsonl"]


def test_sources_that_name_nothing(tmp_path, corpus, capsys):
    (tmp_path / "empty").mkdir()
    cases = [(tmp_path / "nomatch*.jsonl", "no file matches the pattern"),
             (tmp_path / "empty", "is a directory holding no corpus files"),
             (tmp_path / "missing.jsonl", "no such file")]
    for src, reason in cases:
        assert run(corpus[0], src, "-o", tmp_path / "o.pbin") == 1
        assert f"{src}: {reason}" in capsys.readouterr().err
        assert not (tmp_path / "o.pbin").exists()


def test_index_needs_exactly_one_jsonl(tmp_path, corpus, capsys):
    a, b, _ = corpus
    idx = tmp_path / "a.idx"
    idx.write_bytes(b"")
    assert run(a, b, "--index", idx, "-o", tmp_path / "o.pbin") == 1
    assert "--index names the lines of one JSONL file" in capsys.readouterr().err


def test_the_output_may_not_be_one_of_the_sources(tmp_path, corpus, capsys):
    a, b, _ = corpus
    assert run(a, b, "-o", b, "--force") == 1
    assert "the output is the input file" in capsys.readouterr().err


def test_config_src_path_list_and_glob(tmp_path, corpus):
    a, b, c = corpus
    cfg = tmp_path / "tok.toml"
    dst = tmp_path / "cfg.pbin"
    cfg.write_text(f'[settings]\nsrc_path = ["{c}", "{tmp_path / "data" / "*.jsonl"}"]\ndst_path = "{dst}"\n'
                   'num_cpus = 2\n[tokenizer]\nname = "gpt2"\n')
    assert pack.main(["--config", str(cfg), "--no-progress"]) == 0
    assert dst.read_bytes() == reference_pbin(concat(tmp_path, c, a, b))
    cfg.write_text('[settings]\nsrc_path = []\n[tokenizer]\nname = "gpt2"\n')
    assert pack.main(["--config", str(cfg), "--no-progress"]) == 1
