"""Export round trip: checkpoint -> model.pt -> GPT reproduces the logits; generate from both."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec
import pytest
import torch

from perfkit.checkpoint import Checkpointer, CheckpointError
from perfkit.checkpoint.export import export_checkpoint, load_export, load_model
from perfkit.generate_cmd import generate
from perfkit.cli import main as cli
from perfkit.config import CheckpointConfig, ModelConfig
from perfkit.model import GPT

CFG = ModelConfig(vocab_size=96, sequence_length=16, n_layer=2, n_embd=32, n_head_q=4, n_head_kv=2,
                  ffn_hidden=64, kernels="torch")


def _trained_checkpoint(run_dir, cfg=CFG):
    torch.manual_seed(0)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):  # move the weights off their init so the test cannot pass by accident
        idx = torch.randint(0, cfg.vocab_size, (2, cfg.sequence_length))
        model(idx).float().logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
    ckpt = Checkpointer(CheckpointConfig(), run_dir, model=model, optimizer=opt,
                        progress=SimpleNamespace(step=2), model_config=cfg)
    return model, ckpt.save(2)


@pytest.mark.parametrize("tie", [False, True])
def test_fp32_export_reproduces_logits_exactly(tmp_path, tie):
    cfg = msgspec.structs.replace(CFG, tie_embeddings=tie)
    model, _ = _trained_checkpoint(tmp_path / "run", cfg)
    out = export_checkpoint(tmp_path / "run", tmp_path / "model.pt", dtype="fp32")
    blob = torch.load(out, weights_only=True, map_location="cpu")  # the documented way to read it
    assert blob["model_config"]["tie_embeddings"] is tie and blob["step"] == 2
    fresh = GPT(ModelConfig(**blob["model_config"]))
    fresh.load_state_dict(blob["state_dict"])
    idx = torch.randint(0, cfg.vocab_size, (3, cfg.sequence_length))
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(idx), fresh(idx))


def test_bf16_export_is_half_size_and_close(tmp_path):
    model, ckpt = _trained_checkpoint(tmp_path / "run")
    fp32 = export_checkpoint(ckpt, tmp_path / "a.pt", dtype="fp32")
    bf16 = export_checkpoint(ckpt, tmp_path / "b.pt", dtype="bf16")
    assert all(t.dtype == torch.bfloat16 for t in load_export(bf16)["state_dict"].values())
    assert bf16.stat().st_size < 0.6 * fp32.stat().st_size
    loaded, _ = load_model(bf16)
    idx = torch.randint(0, CFG.vocab_size, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), model.eval()(idx), atol=0.05, rtol=0.05)


def test_generate_same_tokens_from_checkpoint_and_export(tmp_path, capsys):
    _, ckpt = _trained_checkpoint(tmp_path / "run")
    assert cli(["export", str(tmp_path / "run"), "-o", str(tmp_path / "m.pt"), "--dtype", "fp32"]) == 0
    # an existing output is replaced only with --force (exit 2: a usage error, the file untouched)
    before = (tmp_path / "m.pt").read_bytes()
    with pytest.raises(SystemExit) as e:
        cli(["export", str(tmp_path / "run"), "-o", str(tmp_path / "m.pt")])
    assert e.value.code == 2 and "pass --force" in capsys.readouterr().err
    assert (tmp_path / "m.pt").read_bytes() == before
    assert cli(["export", str(tmp_path / "run"), "-o", str(tmp_path / "m.pt"), "--dtype", "fp32", "--force"]) == 0
    from_ckpt, _ = load_model(ckpt)
    from_export, info = load_model(tmp_path / "m.pt")
    assert info["step"] == 2
    prompt = [1, 2, 3]
    greedy = generate(from_ckpt, prompt, 20)  # longer than sequence_length - prompt: context is cropped
    assert greedy == generate(from_export, prompt, 20) and len(greedy) == 20
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    sampled = generate(from_export, prompt, 10, top_k=5, generator=g())
    assert sampled == generate(from_export, prompt, 10, top_k=5, generator=g())
    assert all(t < 50 for t in generate(from_export, prompt, 10, top_k=50, vocab_limit=50, generator=g()))


def test_generate_cli_with_gpt2_tokenizer(tmp_path, capsys):
    cfg = ModelConfig(vocab_size=50257, sequence_length=16, n_layer=1, n_embd=16, n_head_q=2, n_head_kv=2,
                      ffn_hidden=32, kernels="torch")
    _trained_checkpoint(tmp_path / "run", cfg)
    assert cli(["generate", str(tmp_path / "run"), "--prompt", "Hello", "--max-new-tokens", "5",
                "--top-k", "3"]) == 0
    assert capsys.readouterr().out.startswith("Hello")


def test_bad_inputs_are_clear(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable perfkit export"):
        load_model(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a perfkit export"):
        load_export(tmp_path / "other.pt")
    assert cli(["export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.pt")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_warm_start_from_export_and_shape_mismatch(tmp_path):
    model, _ = _trained_checkpoint(tmp_path / "run")
    export_checkpoint(tmp_path / "run", tmp_path / "m.pt", dtype="fp32")
    longer = msgspec.structs.replace(CFG, sequence_length=32, dropout=0.1)  # a fine-tune may change these
    torch.manual_seed(1)
    fresh = GPT(longer)
    opt = torch.optim.AdamW(fresh.parameters())
    progress = SimpleNamespace(step=0)
    ckpt = Checkpointer(CheckpointConfig(warm_start=str(tmp_path / "m.pt")), tmp_path / "new", model=fresh,
                        optimizer=opt, progress=progress, model_config=longer)
    assert ckpt.restore() == tmp_path / "m.pt"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert progress.step == 0 and not opt.state
    wider = msgspec.structs.replace(CFG, n_embd=48, n_head_q=4, n_head_kv=4)
    ckpt = Checkpointer(CheckpointConfig(warm_start=str(tmp_path / "m.pt")), tmp_path / "new",
                        model=GPT(wider), optimizer=None, progress=progress, model_config=wider)
    with pytest.raises(CheckpointError, match=r"tok_emb.weight: checkpoint shape \(128, 32\), model shape \(128, 48\)"):
        ckpt.restore()


def test_export_refuses_an_output_inside_its_checkpoint(tmp_path, capsys):
    # `export RUN -o RUN/checkpoints/step_N/__0_0.distcp --force` replaced its own input
    _, ckpt = _trained_checkpoint(tmp_path / "run")
    shard = next(ckpt.glob("*.distcp"))
    before = {f.name: f.read_bytes() for f in ckpt.iterdir() if f.is_file()}
    (tmp_path / "link").symlink_to(ckpt, target_is_directory=True)
    (tmp_path / "shard.pt").symlink_to(shard)
    for out in (shard, ckpt / "model.pt", tmp_path / "link" / "model.pt", tmp_path / "shard.pt"):
        assert cli(["export", str(tmp_path / "run"), "-o", str(out), "--force"]) == 1
        assert "is inside the checkpoint it exports" in capsys.readouterr().err
        with pytest.raises(CheckpointError, match="inside the checkpoint"):
            export_checkpoint(ckpt, out)
    assert {f.name: f.read_bytes() for f in ckpt.iterdir() if f.is_file()} == before
    assert cli(["export", str(tmp_path / "run"), "-o", str(tmp_path / "run" / "model.pt")]) == 0  # beside it: fine


@pytest.mark.parametrize("args, message", [
    (["--temperature", "nan"], "--temperature must be a finite number > 0, got nan"),
    (["--temperature", "inf"], "--temperature must be a finite number > 0, got inf"),
    (["--temperature", "0"], "--temperature must be a finite number > 0, got 0.0"),
    (["--device", "gpu0"], "--device gpu0: not a device name"),
])
def test_generate_refuses_bad_sampling_and_device_flags(tmp_path, capsys, args, message):
    # checked before any model is read (tmp_path holds none): a one-line error, a non-zero exit
    try:
        code = cli(["generate", str(tmp_path), "--prompt", "hi", "--top-k", "3", *args])
    except SystemExit as e:  # argparse's usage error
        code = e.code
    assert code != 0
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the message a machine without CUDA gives")
def test_generate_on_cuda_without_cuda_says_so(tmp_path, capsys):
    _trained_checkpoint(tmp_path / "run")
    assert cli(["generate", str(tmp_path / "run"), "--prompt", "hi", "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "--device cuda: CUDA is not available here" in err and "Traceback" not in err


def test_generate_names_a_junk_file_plainly(tmp_path, capsys):
    # torch.load's own error for these bytes is a bare KeyError: "... export: 101"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello world, not torch")
    assert cli(["generate", str(junk), "--prompt", "hi", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"perfkit generate: {junk} is not a readable perfkit export: not a torch.save file " \
                  "(it starts with neither a zip nor a pickle header)"
    _, ckpt = _trained_checkpoint(tmp_path / "run")
    export_checkpoint(ckpt, tmp_path / "m.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:2000])  # a torn download
    with pytest.raises(CheckpointError, match=r"cut.pt is not a readable perfkit export: \w+(Error|Exception)"):
        load_export(tmp_path / "cut.pt")
