"""Train a zoo model on the standard library: ``python -m infer_lab.zoo.train code-m``.

Next-token prediction with cross-entropy, AdamW (Loshchilov & Hutter 2019), linear
warmup then cosine decay, gradient clipping; nanoGPT's recipe at toy scale, run by the
package's one training loop (:mod:`.loop`, shared with distillation). Checkpoints are
written atomically every few minutes and training resumes from the last one, so a
run can span several sessions. At the end the weights, the tokenizer and a model card
(seed, data rule, hyperparameters, validation loss, bits per byte, time) are written
beside each other in ``infer_lab/zoo/weights/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import get_config
from ..model import Transformer
from ..tokenizer import EOS, Tokenizer
from . import data
from .loop import (Checkpoint, Run, TrainConfig, adamw, atomic_save, evaluate, get_batch,
                   lr_at, next_token_loss, resume, train_loop)

WEIGHTS_DIR = Path(__file__).parent / "weights"
RUNS_DIR = Path(os.environ.get("INFER_LAB_RUNS", Path.cwd() / "runs"))

# TrainConfig, lr_at, get_batch, evaluate and atomic_save live in .loop, the one training
# loop; they are imported here too, where the zoo's callers have always found them.
__all__ = ["TRAIN_PRESETS", "TrainConfig", "atomic_save", "evaluate", "export", "get_batch",
           "load_tokens", "lr_at", "main", "train", "train_tokenizer"]

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


def _data(run_dir: Path) -> tuple[Tokenizer, np.ndarray, np.ndarray]:
    """The tokenizer and the train / valid token streams, shared by the zoo's runs."""
    data_dir = run_dir.parent / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    tok_path = data_dir / "tokenizer.json"
    tok = Tokenizer.from_file(tok_path) if tok_path.exists() else train_tokenizer(tok_path)
    return tok, load_tokens(tok, "train", data_dir), load_tokens(tok, "valid", data_dir)


def _record(step: int, train_loss: float, valid_loss: float, seconds: float) -> dict:
    """A history entry as the zoo's cards keep it, printed as it is made."""
    tqdm.write(f"step {step}: train {train_loss:.3f} valid {valid_loss:.3f} "
               f"({seconds / 60:.1f} min)")
    return {"step": step, "train_loss": train_loss, "valid_loss": valid_loss,
            "minutes": seconds / 60}


def train(name: str, tc: TrainConfig, run_dir: Path, out_dir: Path = WEIGHTS_DIR) -> dict:
    """Train (or resume) the zoo model ``name``; export weights and card at the end."""
    torch.manual_seed(tc.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    tok, train_ids, valid_ids = _data(run_dir)
    cfg = get_config(name, vocab_size=tok.vocab_size)
    model = Transformer(cfg)
    run = Run(model, adamw(model.named_parameters(), tc), torch.Generator().manual_seed(tc.seed))
    ckpt = Checkpoint(run_dir / "ckpt.pt", every_minutes=tc.checkpoint_minutes,
                      extra=lambda: {"train_config": asdict(tc)})
    if resume(run, ckpt):
        print(f"resumed {name} at step {run.state['step']}")
    print(f"{name}: {cfg.n_params / 1e6:.2f}M params, {len(train_ids) / 1e6:.2f}M train tokens")
    state = train_loop(run, partial(next_token_loss, bf16=tc.bf16), tc, train_ids, valid_ids,
                       ckpt, record=_record, desc=name)
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
