"""infer-lab: LLM inference optimization, from scratch, one technique per file.

    >>> import infer_lab
    >>> model, tok = infer_lab.load("code-m")
    >>> infer_lab.complete(model, tok, "def read_config(path):")

Importing the package has no side effects and loads no torch: each public name is
imported the first time it is used (PEP 562 ``__getattr__``), and so is a submodule
read as an attribute (``infer_lab.telemetry.connect()`` after ``import infer_lab``).
So a torch-free part, such as :mod:`infer_lab.exercises.progress` or
:mod:`infer_lab.observe`, can be imported on its own, cheaply (the JupyterLab extension's
server does). Nothing connects to JupyterLab by itself: a lab's setup cell calls
``infer_lab.telemetry.connect()``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .config import PRESETS, ModelConfig, get_config
    from .generate import GREEDY, Sampling, generate
    from .chat import chat
    from .streaming import complete, stream
    from .kv_cache import KVCache
    from .model import Transformer
    from .tokenizer import Tokenizer

__all__ = ["load", "ModelConfig", "PRESETS", "get_config", "Transformer", "KVCache",
           "Tokenizer", "Sampling", "GREEDY", "generate", "stream", "complete", "chat"]
__version__ = "0.1.0"

# Where each public name lives; it is imported from there when first asked for.
_HOMES = {"ModelConfig": "config", "PRESETS": "config", "get_config": "config",
          "Transformer": "model", "KVCache": "kv_cache", "Tokenizer": "tokenizer",
          "Sampling": "sampling", "GREEDY": "sampling",
          "generate": "generate", "stream": "streaming", "complete": "streaming",
          "chat": "chat"}


def __getattr__(name: str) -> Any:
    """A public name, imported on first use (and kept); or a submodule, imported."""
    if name in _HOMES:
        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
        globals()[name] = value
        return value
    if name.isidentifier() and not name.startswith("_") \
            and importlib.util.find_spec(f"{__name__}.{name}"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(ModuleType):
    """This package's module type: ``infer_lab.generate`` stays the function.

    Importing a submodule binds it on its package (``infer_lab.generate = <module>``);
    the eager ``from .generate import generate`` used to rebind the function over it. Now
    that nothing is imported eagerly, the binding of that one submodule is skipped
    instead (it stays importable as ``infer_lab.generate`` in :data:`sys.modules`).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _HOMES and isinstance(value, ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def load(name: str, device: torch.device | str | None = None,
         dtype: torch.dtype | None = None, keep_quantized: bool = False
         ) -> tuple[Transformer, Tokenizer]:
    """A model and its tokenizer: a zoo name ("code-s", "code-m"), a packaged real model
    ("smollm2-135m", from its GGUF file), a path to a ``.gguf`` file, a local Hugging
    Face checkpoint folder, or a hub name when the machine is online.

    Device and dtype default to the best this machine has (see :mod:`infer_lab.hardware`).
    ``keep_quantized`` (GGUF files only) keeps the file's quantized blocks instead of
    dequantizing them: the model then takes the file's size in memory, and ``dtype`` is
    what the blocks decode to.
    """
    import torch

    from .hardware import default_device, default_dtype
    from .zoo import ZOO, load_zoo

    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    from .gguf import PACKAGED, load_gguf_with_tokenizer

    is_gguf = name in PACKAGED or str(name).endswith(".gguf")
    if keep_quantized and not is_gguf:
        raise ValueError(f"keep_quantized applies to GGUF files ({', '.join(PACKAGED)} or a "
                         f".gguf path), not {name!r}: quantize other models with "
                         f"infer_lab.quant.quantize_model")
    if name in ZOO:
        return load_zoo(name, device, dtype)
    if is_gguf:  # a real model, from its GGUF file
        return load_gguf_with_tokenizer(name, dtype=dtype, device=device,
                                        keep_quantized=keep_quantized)
    from .checkpoints import load_hf  # transformers is imported only for real checkpoints

    return load_hf(name, device=device, dtype=dtype)
