"""Chat with an instruct model: render the conversation with its template, then stream.

An instruct model was trained on conversations laid out one exact way (SmolLM2 uses
ChatML: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message); the model file ships
that layout as a jinja2 template (``tokenizer.chat_template``). :func:`chat_prompt`
renders it with ``add_generation_prompt`` (the opening of the assistant's turn), and
:func:`chat` decodes from there until the end-of-turn token, which is the tokenizer's EOS.

The template runs in jinja2's sandbox: a model file is data, and its template must not
reach Python's internals.
"""

from __future__ import annotations

from collections.abc import Iterator

from .sampling import GREEDY, Sampling
from .streaming import TokenEvent, stream
from .tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")


def check_messages(messages: list[dict[str, str]]) -> None:
    """A non-empty list of {"role": system|user|assistant, "content": str}."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise ValueError(f"messages[{i}] must be a dict with exactly 'role' and "
                             f"'content', got {m!r:.80}")
        if m["role"] not in ROLES or not isinstance(m["content"], str):
            raise ValueError(f"messages[{i}]: role must be one of {ROLES} and content a "
                             f"string, got {m['role']!r}")


def chat_prompt(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> str:
    """The text the model continues: the conversation, then the assistant's turn opening."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if tokenizer.chat_template is None:
        raise ValueError("this tokenizer has no chat template: the model is a completion "
                         "model (use infer_lab.complete), not an instruct model")
    check_messages(messages)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(tokenizer.chat_template).render(
        messages=messages, add_generation_prompt=True, bos_token="", eos_token="")


def chat_stream(model, tokenizer: Tokenizer, messages: list[dict[str, str]],
                max_new_tokens: int = 128, sampling: Sampling = GREEDY) -> Iterator[TokenEvent]:
    """The assistant's reply, token by token (stops at the end of its turn)."""
    return stream(model, tokenizer, chat_prompt(tokenizer, messages), max_new_tokens,
                  sampling)


def chat(model, tokenizer: Tokenizer, messages: list[dict[str, str]],
         max_new_tokens: int = 128, sampling: Sampling = GREEDY) -> str:
    """The assistant's reply to ``messages`` as one string."""
    return "".join(e.text for e in chat_stream(model, tokenizer, messages, max_new_tokens,
                                               sampling))
