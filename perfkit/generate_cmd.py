"""`perfkit generate CHECKPOINT_OR_EXPORT --prompt "..." [--max-new-tokens N] [--top-k K]`.

Greedy decoding by default; with --top-k K, samples from the K most likely tokens (softmax at
--temperature). Meant for eyeballing a model, so it re-runs the whole context per token (no KV
cache) and crops the context to the model's sequence_length.
"""

from __future__ import annotations

import argparse
import math
import sys

import tiktoken
import torch

from perfkit.errors import UserError
from perfkit.checkpoint.export import load_model


@torch.no_grad()
def generate(model: torch.nn.Module, prompt_ids: list[int], max_new_tokens: int, *, top_k: int = 0,
             temperature: float = 1.0, vocab_limit: int | None = None, stop_id: int | None = None,
             generator: torch.Generator | None = None) -> list[int]:
    """Token ids after the prompt. `vocab_limit` masks the padded logits the tokenizer cannot decode."""
    device = next(model.parameters()).device
    context = model.cfg.sequence_length
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T)
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(ids[:, -context:])[0, -1].float()  # (V,) logits of the next token
        if vocab_limit is not None:
            logits[vocab_limit:] = float("-inf")
        if top_k and top_k > 0:
            values, indices = torch.topk(logits / max(temperature, 1e-6), min(top_k, logits.numel()))
            choice = torch.multinomial(torch.softmax(values, -1).cpu(), 1, generator=generator)
            nxt = int(indices[choice.item()])
        else:
            nxt = int(torch.argmax(logits))
        out.append(nxt)
        if stop_id is not None and nxt == stop_id:
            break
        ids = torch.cat([ids, torch.tensor([[nxt]], device=device)], dim=1)
    return out


def _device_problem(name: str) -> str | None:
    """Why `name` cannot run the model here, or None."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        return f"not a device name ({(str(e).splitlines() or [''])[0]}); use cpu or cuda"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available here (no GPU visible, or a CPU-only torch); use --device cpu"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"there are only {torch.cuda.device_count()} CUDA devices (cuda:0..)"
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="perfkit generate", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="an export file (perfkit export), a checkpoint folder or a run folder")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=0, help="0: greedy (default); K > 0: top-k sampling")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (top-k only)")
    parser.add_argument("--tokenizer", default="r50k_base", help="tiktoken encoding (GPT-2: r50k_base)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 0 or args.top_k < 0:
        parser.error("--max-new-tokens and --top-k must be >= 0")
    if not (math.isfinite(args.temperature) and args.temperature > 0):  # `> 0` alone lets nan through
        parser.error(f"--temperature must be a finite number > 0, got {args.temperature}")
    problem = _device_problem(args.device)
    if problem:  # before the model is read: a wrong device fails in a second
        print(f"perfkit generate: --device {args.device}: {problem}", file=sys.stderr)
        return 1

    # the tokenizer first: a wrong name fails in a second, before a large model is read
    try:
        enc = tiktoken.get_encoding(args.tokenizer)
    except Exception as e:  # unknown name (ValueError), or ranks not cached and no network
        print(f"perfkit generate: --tokenizer {args.tokenizer!r} cannot be loaded: "
              f"{(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
        return 1
    try:
        model, info = load_model(args.source, args.device)
    except (UserError, OSError) as e:  # CheckpointError is a UserError
        print(f"perfkit generate: {e}", file=sys.stderr)
        return 1
    prompt = enc.encode_ordinary(args.prompt)
    if not prompt:
        parser.error("--prompt encodes to no tokens")
    model_vocab = model.cfg.vocab_size  # the real vocabulary; logits beyond it are padding
    if max(prompt) >= model_vocab:
        print(f"perfkit generate: the prompt has token id {max(prompt)} but the model's vocab_size is "
              f"{model_vocab}: was it trained with another tokenizer than {args.tokenizer!r}?", file=sys.stderr)
        return 1
    eot = enc.eot_token if enc.eot_token < model_vocab else None
    gen = torch.Generator().manual_seed(args.seed)
    new = generate(model, prompt, args.max_new_tokens, top_k=args.top_k, temperature=args.temperature,
                   vocab_limit=min(enc.n_vocab, model_vocab), stop_id=eot, generator=gen)
    text = enc.decode([t for t in new if t != eot])
    print(f"[step {info['step']}, {'greedy' if not args.top_k else f'top-{args.top_k}'}]", file=sys.stderr)
    print(args.prompt + text)
    return 0
