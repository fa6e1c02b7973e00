"""The request schemas of ``POST /v1/completions`` and ``POST /v1/chat/completions``:
OpenAI's bodies, declared.

A pydantic model declares the fields, their JSON types (strict: ``"stream": "yes"`` is
not true, ``"max_tokens": 2.0`` is not an int) and that no other field is allowed (a
typo such as ``temprature``, or a parameter we do not implement such as ``logprobs``,
must not be silently ignored). The value rules are the Python API's own
(:mod:`infer_lab.validate`, :class:`~infer_lab.sampling.Sampling`), called from the
validators, so the server refuses exactly what ``generate`` refuses.

Parsing order: bytes -> strict JSON (:func:`decode_body`: no NaN/Infinity literals, a
size limit, UTF-8) -> :class:`CompletionRequest` (or :class:`ChatCompletionRequest`,
whose ``messages`` the tokenizer's chat template renders into the prompt,
:func:`infer_lab.chat.chat_prompt`) -> :class:`ParsedRequest` (token ids and a
Sampling). Every failure is a :class:`BadRequest` whose message names the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from pydantic import ValidationError, field_validator

from ..sampling import Sampling
from ..validate import token_ids

MAX_BODY_BYTES = 1 << 20  # a prompt of a million bytes is far past any context here
MAX_STOP = 16


class BadRequest(ValueError):
    """The client's fault: answered with a 400 and this message."""


class _Sampled(BaseModel):
    """The parameters both endpoints share: OpenAI's we honour, plus vLLM's top_k and
    ignore_eos."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_tokens: StrictInt = Field(16, ge=1)
    temperature: float = 1.0
    top_p: float | None = None
    top_k: StrictInt | None = None
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = Field(None, validate_default=True)
    stream: StrictBool = False
    ignore_eos: StrictBool = False
    n: Literal[1] = 1
    model: StrictStr = "infer-lab"
    user: StrictStr | None = None
    # OpenAI's structured outputs: {"type": "json_schema", "json_schema": {"schema": {...}}}
    response_format: dict[StrictStr, Any] | None = None

    @field_validator("response_format")
    @classmethod
    def _format(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None or v.get("type") == "text":
            return None
        if v.get("type") != "json_schema":
            raise ValueError("response_format.type must be 'text' or 'json_schema' (no "
                             "'json_object': give the schema the answer must follow)")
        schema = (v.get("json_schema") or {}).get("schema") if isinstance(
            v.get("json_schema"), dict) else None
        if not isinstance(schema, dict):
            raise ValueError("response_format.json_schema.schema must be a JSON Schema object")
        return schema

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        stop = [] if v is None else [v] if isinstance(v, str) else v
        if not all(stop):
            raise ValueError("stop strings must be non-empty")
        if len(stop) > MAX_STOP:
            raise ValueError(f"{len(stop)} stop strings; at most {MAX_STOP}")
        return stop

    def sampling(self) -> Sampling:
        """The Python API's rule for each sampling parameter (ValueError if refused)."""
        opt = {k: getattr(self, k) for k in ("top_k", "top_p", "seed")
               if getattr(self, k) is not None}
        return Sampling(temperature=self.temperature, **opt)


class CompletionRequest(_Sampled):
    """``POST /v1/completions``: a prompt (text or token ids) to continue."""

    prompt: StrictStr | list[StrictInt]


class ChatCompletionRequest(_Sampled):
    """``POST /v1/chat/completions``: a conversation for an instruct model to answer."""

    messages: list[dict[StrictStr, StrictStr]]


@dataclass(frozen=True)
class ParsedRequest:
    """A request the engine can run: token ids, sampling, and how to answer."""

    ids: list[int]
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    stream: bool
    ignore_eos: bool
    model: str
    chat: bool = False  # answer as a chat.completion (message/delta), not text_completion
    schema: dict[str, Any] | None = None  # constrained output: the answer is JSON of it


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not a valid JSON number (JSON has no NaN or Infinity)")


def decode_body(raw: bytes) -> Any:
    """Bytes -> JSON value; BadRequest for anything that is not strict JSON."""
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"body of {len(raw)} bytes exceeds the limit of {MAX_BODY_BYTES}")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    except BadRequest:
        raise
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise BadRequest(f"malformed JSON: {e}") from None


def _explain(err: ValidationError, schema: type[BaseModel]) -> str:
    """pydantic's errors as one line that names each field."""
    parts = []
    for e in err.errors(include_url=False):
        # loc names union branches too ("str", "list[int]"): keep the field's path only
        where = ".".join(str(x) for x in e["loc"] if str(x) != "str"
                         and not str(x).startswith("list["))
        if e["type"] == "extra_forbidden":
            parts.append(f"unsupported field {where!r}; this server takes "
                         f"{', '.join(schema.model_fields)}")
        elif e["type"] == "missing":
            parts.append(f"{where!r} is required")
        else:
            parts.append(f"{where!r}: {e['msg']} (got {e['input']!r:.60})")
    return "; ".join(dict.fromkeys(parts))  # a union repeats its message per branch


def _prompt_ids(prompt: str | list[int], tokenizer: Any) -> list[int]:
    if isinstance(prompt, list):  # pre-tokenized, as the OpenAI API allows
        return token_ids("'prompt'", prompt, tokenizer.vocab_size)
    if not prompt:
        raise ValueError("'prompt' is empty: give at least one character")
    try:
        ids = tokenizer.encode(prompt)
    except Exception as e:  # noqa: BLE001 - e.g. a lone surrogate; the client hears why
        raise ValueError(f"'prompt' cannot be tokenized: {e}") from None
    if not ids:
        raise ValueError("'prompt' encodes to no tokens")
    return ids


def _validate(body: Any, schema: type[_Sampled]) -> Any:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        return schema.model_validate(body)
    except ValidationError as e:
        raise BadRequest(_explain(e, schema)) from None


def _schema(req: _Sampled) -> dict[str, Any] | None:
    if req.response_format is not None and req.ignore_eos:
        raise ValueError("response_format and ignore_eos: a constrained answer ends at EOS")
    return req.response_format


def parse_request(body: Any, tokenizer: Any) -> ParsedRequest:
    """Validate a decoded completions body; BadRequest with a message that says why."""
    req = _validate(body, CompletionRequest)
    try:
        return ParsedRequest(_prompt_ids(req.prompt, tokenizer), req.max_tokens,
                             req.sampling(), req.stop, req.stream, req.ignore_eos, req.model,
                             schema=_schema(req))
    except ValueError as e:
        raise BadRequest(str(e)) from None


def parse_chat_request(body: Any, tokenizer: Any) -> ParsedRequest:
    """Validate a chat completions body and render its messages with the tokenizer's chat
    template; BadRequest for bad messages or a model without a template."""
    from ..chat import chat_prompt

    req = _validate(body, ChatCompletionRequest)
    try:
        ids = _prompt_ids(chat_prompt(tokenizer, req.messages), tokenizer)
        return ParsedRequest(ids, req.max_tokens, req.sampling(), req.stop, req.stream,
                             req.ignore_eos, req.model, chat=True, schema=_schema(req))
    except ValueError as e:
        raise BadRequest(str(e)) from None
