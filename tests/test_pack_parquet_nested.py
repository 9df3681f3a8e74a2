"""A dotted --text-key on parquet names a struct field, as it names a nested object in a JSONL:
the same documents give the same bytes, a null struct is a null text, and the tasks are sized
from the field's own column chunk (not the column of the same top-level position)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from perfkit.prep import pack_cmd as pack
from perfkit.prep.parquet_source import RowGroupReader, _leaf_index, check_text_column, open_parquet
from test_pack import TRICKY, reference_pbin

TEXTS = [r["text"] for r in TRICKY if "text" in r] * 3


def run(*args):
    return pack.main([*map(str, args), "--tokenizer", "gpt2", "--no-progress", "--workers", "2"])


def test_struct_field_packs_like_the_nested_jsonl(tmp_path):
    jsonl = tmp_path / "n.jsonl"
    jsonl.write_text("".join(json.dumps({"meta": {"text": t, "n": i}}, ensure_ascii=False) + "\n"
                             for i, t in enumerate(TEXTS)), encoding="utf-8")
    table = pa.table({"id": list(range(len(TEXTS))),
                      "tags": pa.array([{"a": i, "b": [i, i]} for i in range(len(TEXTS))]),   # 2 leaves first
                      "meta": pa.array([{"n": i, "text": t} for i, t in enumerate(TEXTS)])})
    src = tmp_path / "n.parquet"
    pq.write_table(table, src, row_group_size=7)
    assert run(src, "-o", tmp_path / "o.pbin", "--text-key", "meta.text", "--chunk-mb", "0.001") == 0
    assert (tmp_path / "o.pbin").read_bytes() == reference_pbin(jsonl, key=("meta", "text"))
    pf = open_parquet(str(src))
    leaf = _leaf_index(pf.schema_arrow, "meta.text")
    assert pf.metadata.row_group(0).column(leaf).path_in_schema == "meta.text"


def test_a_null_struct_is_a_null_text(tmp_path, capsys):
    src = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"meta": pa.array([{"text": "a"}, None, {"text": None}, {"text": "d"}])}), src)
    texts, bad, _ = RowGroupReader("meta.text").read(str(src), 0, 0, 4, 0)
    assert texts == ["a", "d"] and bad == [(1, "text is null"), (2, "text is null")]
    assert run(src, "-o", tmp_path / "o.pbin", "--text-key", "meta.text") == 1
    assert f"{src}:row 2: text is null" in capsys.readouterr().err


def test_a_top_level_column_with_dots_in_its_name_still_works(tmp_path):
    src = tmp_path / "lit.parquet"
    pq.write_table(pa.table({"meta": pa.array([{"x": 1}, {"x": 2}]), "meta.text": ["one", "two"]}), src)
    assert RowGroupReader("meta.text").read(str(src), 0, 0, 2, 0)[0] == ["one", "two"]


def test_a_field_that_is_not_a_string_names_the_columns(tmp_path):
    src = tmp_path / "x.parquet"
    pq.write_table(pa.table({"meta": pa.array([{"x": 1}])}), src)
    for key in ("meta.x", "meta.text", "meta.x.y"):
        try:
            check_text_column(open_parquet(str(src)), str(src), key)
        except Exception as e:
            assert f"{src}: no string column {key!r} (columns: meta (struct<x: int64>))" in str(e)
        else:
            raise AssertionError(f"{key} was accepted")
