"""`perfkit inspect FILE --windows S ...` lists exactly what the train loader hands that rank."""

import json
import pickle
import struct

import numpy as np
import torch

from perfkit.config import DataConfig
from perfkit.data import inspect_windows_cmd as inspect_samples
from perfkit.data.loader import build_train_loader


def write_pbin(path, tokens):
    data = np.asarray(tokens, dtype="<u2").tobytes()
    path.write_bytes(struct.pack("<QI", len(data), 2) + data + pickle.dumps([(0, len(data))], protocol=4))
    return str(path)


def test_json_matches_the_loader_after_a_skip(tmp_path, capsys):
    tokens = list(range(3000))
    path = write_pbin(tmp_path / "d.pbin", tokens)
    S, W, rank, skip = 20, 3, 2, 6 * 3  # resume after 6 steps of 1 sample per rank
    rc = inspect_samples.main([path, "--windows", str(S), "--seed", "7", "--rank", str(rank),
                               "--world-size", str(W), "--skip", str(skip), "--show", "5",
                               "--first-tokens", "3", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["num_samples"] == (3000 - 21) // 20 + 1 and r["token_width"] == 2
    loader = build_train_loader(DataConfig(train=[path], seed=7), seq_len=S, micro_batch_size=1,
                                rank=rank, world_size=W, device=torch.device("cpu"))
    loader.load_state_dict({"epoch": 0, "consumed_in_epoch": skip})
    for s in r["samples"]:
        x, _ = loader.next_batch()
        assert x[0, :3].tolist() == s["first_tokens"] == tokens[s["token_offset"]:s["token_offset"] + 3]
        assert s["token_offset"] == s["index"] * S
    loader.close()
    assert r["rank_samples_left"] == (r["num_samples"] - skip) // W


def test_text_output_and_bad_input(tmp_path, capsys):
    path = write_pbin(tmp_path / "d.pbin", list(range(100)))
    assert inspect_samples.main([path, "--windows", "9", "--no-shuffle", "--show", "2"]) == 0
    out = capsys.readouterr().out
    assert "11 samples" in out and "[0, 1, 2, 3, 4, 5, 6, 7]" in out and "[9, 10, 11" in out
    assert inspect_samples.main([path, "--windows", "500"]) == 1
    assert "d.pbin" in capsys.readouterr().err
    assert inspect_samples.main([path, "--windows", "9", "--rank", "2", "--world-size", "2"]) == 1
    assert "--rank 2" in capsys.readouterr().err
    assert inspect_samples.main([str(tmp_path / "missing.pbin"), "--windows", "9"]) == 1
    assert "missing.pbin" in capsys.readouterr().err
