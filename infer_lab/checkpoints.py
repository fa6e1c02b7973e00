"""Finding and reading a checkpoint: a local folder, or a hub name when online.

A folder holds ``config.json``, safetensors files and ``tokenizer.json``; :mod:`infer_lab.hf`
translates what is in them into our :class:`~infer_lab.model.Transformer`. Nothing is
downloaded unless the name is not a folder and the machine is online
(``HF_HUB_OFFLINE`` unset); offline, a missing name says which models work offline.
``huggingface_hub`` is imported only for a download.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .hf import SUPPORTED, _check_type, build_model, config_from_hf, state_dict_from_hf
from .model import Transformer
from .tokenizer import Tokenizer

__all__ = ["CheckpointNotFoundError", "SUPPORTED", "load_hf", "load_tokenizer",
           "read_safetensors", "resolve_checkpoint"]

HUB_FILES = ["config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json",
             "model*.safetensors", "model.safetensors.index.json"]
OFFLINE_HINT = ("The embedded models 'code-s' and 'code-m' work offline: "
                "infer_lab.load('code-m').")


class CheckpointNotFoundError(FileNotFoundError, ValueError):
    """Neither a local folder nor a hub checkpoint this machine can get.

    Also a ValueError: to the caller, an unknown model name is bad input.
    """



def load_hf(name_or_path: str | Path, device: torch.device | str | None = None,
            dtype: torch.dtype | None = None) -> tuple[Transformer, Tokenizer]:
    """A local checkpoint folder, or a hub name (cache first; download only when online)."""
    from .hardware import default_device, default_dtype

    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    folder = resolve_checkpoint(name_or_path)
    raw = json.loads((folder / "config.json").read_text())
    _check_type(raw.get("model_type"))
    from transformers import AutoConfig

    cfg = config_from_hf(AutoConfig.from_pretrained(folder))
    hf_state = read_safetensors(folder, device, dtype)
    if hf_state is None:  # only pickled .bin weights: transformers unpickles them safely
        if not list(folder.glob("pytorch_model*.bin")):
            raise FileNotFoundError(f"{folder} has no model.safetensors (or shards) and no "
                                    "pytorch_model.bin")
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        hf_state = {k: v.to(device) for k, v in hf.state_dict().items()}
    return build_model(cfg, state_dict_from_hf(hf_state, cfg)), load_tokenizer(folder)


def read_safetensors(folder: Path, device: torch.device, dtype: torch.dtype) -> dict | None:
    """All tensors of ``model.safetensors`` (or its shards), cast one at a time."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    elif index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        return None
    state = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt", device="cpu") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                state[k] = t.to(device, dtype if t.is_floating_point() else t.dtype)
    return state


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """The folder holding a checkpoint: a local path, else the HF cache, else a download."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face checkpoint")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    name = str(name_or_path)
    try:
        return Path(snapshot_download(name, local_files_only=True, allow_patterns=HUB_FILES))
    except HFValidationError as e:
        raise CheckpointNotFoundError(f"{name!r} is neither a local folder nor a hub model "
                                      f"name. {OFFLINE_HINT}") from e
    except LocalEntryNotFoundError:
        pass
    if _offline():
        raise CheckpointNotFoundError(
            f"{name!r} was not found locally (no such folder, not in the Hugging Face cache) "
            f"and this machine is offline (HF_HUB_OFFLINE), so it cannot be downloaded. "
            f"{OFFLINE_HINT}")
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except (OSError, ValueError) as e:  # connection errors, missing or gated repos
        raise CheckpointNotFoundError(
            f"{name!r} was not found locally and could not be downloaded from the Hugging "
            f"Face hub ({type(e).__name__}: {e}). If this machine is offline: "
            f"{OFFLINE_HINT}") from e


def _offline() -> bool:
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "")
    return constants.HF_HUB_OFFLINE or env.upper() in ("1", "ON", "YES", "TRUE")


def load_tokenizer(folder: Path) -> Tokenizer:
    """The checkpoint's tokenizer, with the EOS token its generation config names."""
    from tokenizers import Tokenizer as RawTokenizer

    if (folder / "tokenizer.json").exists():
        raw = RawTokenizer.from_file(str(folder / "tokenizer.json"))
    else:  # e.g. only a sentencepiece model: transformers can convert it to a fast one
        try:
            from transformers import AutoTokenizer

            raw = AutoTokenizer.from_pretrained(folder).backend_tokenizer
        except Exception as e:
            raise FileNotFoundError(f"{folder} has no tokenizer.json, and transformers could "
                                    "not build a fast tokenizer from its other files") from e
    return Tokenizer(raw, eos_token=_eos_token(folder, raw))


def _eos_token(folder: Path, raw) -> str | None:
    """EOS from generation_config.json, then config.json, then tokenizer_config.json."""
    def read(name: str) -> dict:
        p = folder / name
        return json.loads(p.read_text()) if p.exists() else {}

    for name in ("generation_config.json", "config.json"):
        ids = read(name).get("eos_token_id")
        for i in ids if isinstance(ids, list) else [ids]:  # several: the first is the main one
            token = raw.id_to_token(i) if isinstance(i, int) else None
            if token is not None:
                return token
    token = read("tokenizer_config.json").get("eos_token")
    token = token.get("content") if isinstance(token, dict) else token
    return token if token is not None and raw.token_to_id(token) is not None else None
