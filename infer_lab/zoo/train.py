"""Train a zoo model on the standard library: ``python -m infer_lab.zoo.train code-m``.

Next-token prediction with cross-entropy, AdamW (Loshchilov & Hutter 2019), linear
warmup then cosine decay, gradient clipping; nanoGPT's recipe at toy scale. Checkpoints
are written atomically every few minutes and training resumes from the last one, so a
run can span several sessions. At the end the weights, the tokenizer and a model card
(seed, data rule, hyperparameters, validation loss, bits per byte, time) are written
beside each other in ``infer_lab/zoo/weights/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import get_config
from ..model import Transformer
from ..tokenizer import EOS, Tokenizer
from . import data

WEIGHTS_DIR = Path(__file__).parent / "weights"
RUNS_DIR = Path(os.environ.get("INFER_LAB_RUNS", Path.cwd() / "runs"))


@dataclass
class TrainConfig:
    steps: int = 6000
    batch_size: int = 16
    seq_len: int = 512
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 500
    eval_tokens: int = 65536
    checkpoint_minutes: float = 5.0
    seed: int = 1337
    bf16: bool = True  # autocast matmuls to bf16 where the CPU has native support


TRAIN_PRESETS = {
    "code-s": TrainConfig(steps=1200, lr=3e-3, min_lr=3e-4),
    "code-m": TrainConfig(steps=2000, lr=2e-3, min_lr=2e-4),
}


# -- data -------------------------------------------------------------------------------
def train_tokenizer(path: Path, vocab_size: int = 4096) -> Tokenizer:
    """Byte-level BPE over the training split only."""
    from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers

    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator((f.text for f in data.iter_files("train")), trainer)
    tok.save(str(path))
    return Tokenizer(tok)


def load_tokens(tok: Tokenizer, split: str, cache_dir: Path) -> np.ndarray:
    """The split as one token stream (files separated by EOS), cached as .npy."""
    cache = cache_dir / f"{split}.npy"
    if cache.exists():
        return np.load(cache)
    files = data.iter_files(split)
    ids: list[int] = []
    for enc in tok.encode_batch([f.text for f in files]):
        ids.extend(enc)
        ids.append(tok.eos_id)
    arr = np.asarray(ids, dtype=np.uint16)
    atomic_save(lambda p: np.save(p, arr), cache, suffix=".npy")
    return arr


def get_batch(tokens: np.ndarray, batch: int, seq: int, gen: torch.Generator):
    ix = torch.randint(len(tokens) - seq - 1, (batch,), generator=gen).tolist()
    x = torch.from_numpy(np.stack([tokens[i:i + seq] for i in ix]).astype(np.int64))
    y = torch.from_numpy(np.stack([tokens[i + 1:i + 1 + seq] for i in ix]).astype(np.int64))
    return x, y


# -- loop -------------------------------------------------------------------------------
def lr_at(step: int, tc: TrainConfig) -> float:
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    t = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


@torch.no_grad()
def evaluate(model: Transformer, tokens: np.ndarray, seq: int, max_tokens: int | None,
             bf16: bool = False) -> float:
    """Mean next-token cross-entropy (nats) over consecutive windows of ``tokens``."""
    model.eval()
    n = len(tokens) - 1 if max_tokens is None else min(len(tokens) - 1, max_tokens)
    total, count = 0.0, 0
    for i in range(0, n - 1, seq):
        j = min(i + seq, n)
        x = torch.from_numpy(tokens[i:j].astype(np.int64))[None]
        y = torch.from_numpy(tokens[i + 1:j + 1].astype(np.int64))[None]
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            logits = model(x)
        total += F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1),
                                 reduction="sum").item()
        count += y.numel()
    model.train()
    return total / count


def atomic_save(write, path: Path, suffix: str = ".tmp") -> None:
    """Write to a temporary file then rename: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial" + suffix)
    write(tmp)
    os.replace(tmp, path)


def train(name: str, tc: TrainConfig, run_dir: Path, out_dir: Path = WEIGHTS_DIR) -> dict:
    """Train (or resume) the zoo model ``name``; export weights and card at the end."""
    torch.manual_seed(tc.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    data_dir = run_dir.parent / "data"  # tokenizer and token streams, shared by the zoo
    data_dir.mkdir(parents=True, exist_ok=True)
    tok_path = data_dir / "tokenizer.json"
    tok = Tokenizer.from_file(tok_path) if tok_path.exists() else train_tokenizer(tok_path)
    train_ids = load_tokens(tok, "train", data_dir)
    valid_ids = load_tokens(tok, "valid", data_dir)
    cfg = get_config(name, vocab_size=tok.vocab_size)
    model = Transformer(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=tc.lr, betas=(0.9, 0.95), fused=False)
    gen = torch.Generator().manual_seed(tc.seed)
    ckpt_path = run_dir / "ckpt.pt"
    state = {"step": 0, "elapsed": 0.0, "history": []}
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        state = ck["state"]
        print(f"resumed {name} at step {state['step']}")

    def save_ckpt():
        ck = {"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
              "state": state, "train_config": asdict(tc)}
        atomic_save(lambda p: torch.save(ck, p), ckpt_path)

    print(f"{name}: {cfg.n_params / 1e6:.2f}M params, {len(train_ids) / 1e6:.2f}M train tokens")
    t_last, t_ck = time.time(), time.time()
    bar = tqdm(range(state["step"], tc.steps), initial=state["step"], total=tc.steps, desc=name)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tc)
        x, y = get_batch(train_ids, tc.batch_size, tc.seq_len, gen)
        with torch.autocast("cpu", torch.bfloat16, enabled=tc.bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        now = time.time()
        state["elapsed"] += now - t_last
        t_last = now
        state["step"] = step + 1
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % tc.eval_every == 0 or step + 1 == tc.steps:
            vl = evaluate(model, valid_ids, tc.seq_len, tc.eval_tokens, tc.bf16)
            state["history"].append({"step": step + 1, "train_loss": loss.item(),
                                     "valid_loss": vl, "minutes": state["elapsed"] / 60})
            tqdm.write(f"step {step + 1}: train {loss.item():.3f} valid {vl:.3f} "
                       f"({state['elapsed'] / 60:.1f} min)")
        if now - t_ck > tc.checkpoint_minutes * 60:
            save_ckpt()
            t_ck = time.time()
    save_ckpt()
    return export(name, model, tok, tc, state, valid_ids, out_dir)


def export(name: str, model: Transformer, tok: Tokenizer, tc: TrainConfig, state: dict,
           valid_ids: np.ndarray, out_dir: Path) -> dict:
    """Write <name>.safetensors, <name>.json/.md (config + card) and the shared tokenizer.

    Weights ship in fp16 (half the bytes of fp32; the zoo must fit in 30 MB), so the
    card is measured on the fp16-rounded weights that users actually load.
    """
    from safetensors.torch import save_file

    from .card import render_card, sample_completion

    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    valid_loss = evaluate(model, valid_ids, tc.seq_len, None, bf16=False)
    valid_bytes = len(data.held_out_text().encode())
    n_tok = len(valid_ids) - 1
    card = {
        "name": name,
        "params": model.config.n_params,
        "config": model.config.to_dict(),
        "valid_loss_nats": round(valid_loss, 4),
        "valid_perplexity": round(math.exp(valid_loss), 3),
        "valid_bits_per_byte": round(valid_loss * n_tok / (valid_bytes * math.log(2)), 4),
        "valid_tokens": n_tok,
        "train_steps": state["step"],
        "train_tokens": state["step"] * tc.batch_size * tc.seq_len,
        "train_minutes": round(state["elapsed"] / 60, 1),
        "train_config": asdict(tc),
        "data_rule": data.RULE,
        "python": ".".join(map(str, __import__("sys").version_info[:3])),
        "torch": torch.__version__,
        "history": state["history"],
    }
    sd = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()
          if not (model.config.tie_embeddings and k == "lm_head.weight")}
    atomic_save(lambda p: save_file(sd, str(p)), out_dir / f"{name}.safetensors")
    atomic_save(lambda p: p.write_text(json.dumps(card, indent=2)), out_dir / f"{name}.json")
    atomic_save(lambda p: tok.save(p), out_dir / "tokenizer.json")
    completion = sample_completion(model.eval(), tok)
    atomic_save(lambda p: p.write_text(render_card(card, completion)), out_dir / f"{name}.md")
    print(json.dumps({k: v for k, v in card.items() if k not in ("history", "config")},
                     indent=2))
    return card


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=sorted(TRAIN_PRESETS))
    ap.add_argument("--steps", type=int, help="override the preset's step count")
    ap.add_argument("--run-dir", type=Path, help="checkpoints (default runs/<name>)")
    ap.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tc = TRAIN_PRESETS[args.name]
    if args.steps:
        tc = TrainConfig(**{**asdict(tc), "steps": args.steps})
    train(args.name, tc, args.run_dir or RUNS_DIR / args.name, args.out_dir)


if __name__ == "__main__":
    main()
