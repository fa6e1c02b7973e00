"""``bench app``'s constrained-decoding lever: JSON answers with and without the schema's
token masks (:mod:`infer_lab.app.constrained`), parsed and validated with ``jsonschema``.

Each schema is asked for by a few prompts (the instruct model's chat template where it
has one). Unconstrained answers are parsed leniently: the first ``{`` onwards through
``json.JSONDecoder.raw_decode`` (so a code fence or text after the object does not count
against it); constrained answers must parse as they are. The overhead is mask + advance
per token over a decode forward per token (:class:`~infer_lab.app.constrained.StepTimes`),
on a second pass once the first has built the masks of the states it visited (a server
keeps them); the first pass's figure, mask building included, is printed beside it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .app_levers import Lever

SCHEMAS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("person", {"type": "object", "required": ["name", "age", "city"], "properties": {
        "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
        "city": {"type": "string", "maxLength": 20}}},
     ["Describe Alice, 30, from Paris, as a JSON object with keys name, age and city.",
      "Give me a JSON object (name, age, city) for Bob, a 45-year-old from Lima.",
      "Return only JSON with name, age and city for a person you make up."]),
    ("product", {"type": "object", "required": ["name", "price", "in_stock"], "properties": {
        "name": {"type": "string", "maxLength": 24}, "price": {"type": "number"},
        "in_stock": {"type": "boolean"}}},
     [("A red mug costs 7.5 dollars and is in stock. Write it as JSON with keys name, price "
      "and in_stock."), "Output a JSON object for a laptop: name, price, in_stock.",
      "As JSON (name, price, in_stock): a sold-out bicycle at 300 dollars."]),
    ("event", {"type": "object", "required": ["title", "year", "tags"], "properties": {
        "title": {"type": "string", "maxLength": 30}, "year": {"type": "integer"},
        "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 12}}}},
     ["The moon landing was in 1969. Give a JSON object with title, year and a list of tags.",
      "Write JSON for an event: keys title, year, tags (a list of short strings).",
      "Describe the first modern Olympics (1896) as JSON with title, year and tags."]),
]


def _prompt(tok, chat: bool, request: str, schema: dict) -> list[int]:
    from ..chat import chat_prompt

    if chat:
        return tok.encode(chat_prompt(tok, [{"role": "user", "content": request}]))
    # A completion model: a comment stating the request, then an assignment to continue.
    return tok.encode(f"# {request}\n# schema: {json.dumps(schema)}\nimport json\nanswer = ")


def _valid(text: str, schema: dict, lenient: bool) -> bool:
    import jsonschema

    try:
        if lenient:
            start = text.index("{")
            value, _ = json.JSONDecoder().raw_decode(text[start:])
        else:
            value = json.loads(text)
        jsonschema.validate(value, schema)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


def constrained(model, tok, chat: bool, n_schemas: int, n_prompts: int,
                max_new_tokens: int) -> Lever:
    """Valid-JSON rate, tokens and seconds per answer with and without the schema's masks,
    and the masking overhead per token as a fraction of a decode step."""
    from tqdm.auto import tqdm

    from ..app.constrained import StepTimes, constrained_generate, schema_constraint
    from ..app.token_mask import Vocabulary
    from ..generate import generate

    vocab = Vocabulary.from_tokenizer(tok, model.config.vocab_size)  # shared by all schemas
    jobs = [(name, schema, req) for name, schema, reqs in SCHEMAS[:n_schemas]
            for req in reqs[:n_prompts]]
    constraints = {name: schema_constraint(schema, tok, vocab=vocab)
                   for name, schema, _ in SCHEMAS[:n_schemas]}
    stats = {k: {"valid": 0, "tokens": 0, "seconds": 0.0} for k in ("unconstrained", "constrained")}
    cold, warm = StepTimes(), StepTimes()
    examples: dict[str, str] = {}
    generate(model, [_prompt(tok, chat, jobs[0][2], jobs[0][1])], 2)  # warm-up
    with tqdm(total=3 * len(jobs), desc="constrained", leave=False) as bar:
        for name, schema, req in jobs:
            ids = _prompt(tok, chat, req, schema)
            t0 = time.perf_counter()
            [out] = generate(model, [ids], max_new_tokens, eos_id=tok.eos_id)
            dt = time.perf_counter() - t0
            out = [t for t in out if t != tok.eos_id]
            text = tok.decode(out)
            _add(stats["unconstrained"], _valid(text, schema, lenient=True), len(out), dt)
            examples.setdefault(f"{name} unconstrained", text)
            bar.update(1)
            # The first pass builds the masks of the states it visits (cold); the second,
            # timed, one finds them cached, as a server that keeps its constraints would.
            _merge(cold, constrained_generate(model, tok, ids, constraints[name],
                                              max_new_tokens).times)
            bar.update(1)
            t0 = time.perf_counter()
            res = constrained_generate(model, tok, ids, constraints[name], max_new_tokens)
            dt = time.perf_counter() - t0
            _merge(warm, res.times)
            _add(stats["constrained"], _valid(res.text, schema, lenient=False),
                 len(res.tokens), dt)
            examples.setdefault(f"{name} constrained", res.text)
            bar.update(1)
    n = len(jobs)
    rows = [[k, s["valid"] / n, f"{s['valid']}/{n}", s["tokens"] / n, s["seconds"] / n * 1e3]
            for k, s in stats.items()]
    notes = [(f"{n} prompts ({n_schemas} schemas x {n_prompts}), greedy, at most "
             f"{max_new_tokens} new tokens; unconstrained parsed leniently (first '{{' on), "
             "constrained strictly; validated with jsonschema"),
             f"masking, warm (masks cached): {warm.summary()}",
             f"masking, cold (first visit builds each state's mask): {cold.summary()}"]
    notes += [f"  e.g. {k}: {v[:90]!r}" for k, v in examples.items()]
    figures = {"answers": n, "max_new_tokens": max_new_tokens, "chat_template": chat,
               "rows": {r[0]: {"valid_rate": r[1], "tokens_per_answer": r[3],
                               "ms_per_answer": r[4]} for r in rows},
               "overhead_warm": _times_dict(warm), "overhead_cold": _times_dict(cold),
               "examples": examples}
    return Lever("constrained decoding (JSON schema -> regex -> DFA -> token masks)",
                 ["decoding", "valid rate", "valid", "tokens/answer", "ms/answer"], rows, notes,
                 figures,
                 {"constrained_valid_rate": stats["constrained"]["valid"] / n,
                  "unconstrained_valid_rate": stats["unconstrained"]["valid"] / n,
                  "constrained_overhead_per_token": warm.overhead_ratio,
                  "constrained_overhead_per_token_cold": cold.overhead_ratio},
                 {"constrained: unconstrained answers": [stats["unconstrained"]["seconds"]],
                  "constrained: constrained answers": [stats["constrained"]["seconds"]]})


def _add(s: dict, valid: bool, tokens: int, seconds: float) -> None:
    s["valid"] += int(valid)
    s["tokens"] += tokens
    s["seconds"] += seconds


def _merge(total, t) -> None:
    """Add one generation's StepTimes into ``total`` (the ratio is of sums, not a mean of
    per-answer ratios, so a short answer does not weigh as much as a long one)."""
    for f in ("tokens", "forwards", "prefill_s", "forward_s", "mask_s", "advance_s",
              "sample_s"):
        setattr(total, f, getattr(total, f) + getattr(t, f))


def _times_dict(t) -> dict[str, float]:
    return {"tokens": t.tokens, "forwards": t.forwards, "mask_s": t.mask_s,
            "advance_s": t.advance_s, "forward_s": t.forward_s,
            "overhead_per_token_ms": t.overhead_per_token_s * 1e3,
            "forward_per_token_ms": t.forward_per_token_s * 1e3,
            "overhead_ratio": t.overhead_ratio}
