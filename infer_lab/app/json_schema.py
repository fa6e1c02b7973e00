"""A practical subset of JSON Schema -> a regular expression (the approach of Outlines:
Willard & Louf 2023, "Efficient Guided Generation for Large Language Models").

A schema without recursion describes a regular language of JSON texts, so it compiles to
a regex, then to a DFA (:mod:`.regex_fsm`), then to token masks (:mod:`.token_mask`). What
the regex accepts is always valid for the schema (sound); it is a canonical *subset* of the
valid texts, which is all a generator needs:

* **Whitespace**: none, except one optional space after ``,`` and after ``:``. So both
  ``json.dumps(x)`` (", " and ": ") and ``json.dumps(x, separators=(",", ":"))`` match, and
  no newlines or indentation do (a model cannot spend its budget on blank space).
* **Objects**: the properties in the schema's order; each ``required`` one always, each
  other one present or left out; no other keys (so ``additionalProperties`` never matters).
* **Strings**: any character JSON allows raw, or an escape (``\\n``, ``\\"``, ``\\uXXXX``,
  a surrogate pair, never a lone surrogate), so each unit is one character and
  ``minLength``/``maxLength`` count characters. ``pattern`` must match the whole string (a
  stricter reading of JSON Schema's search, so still sound) and may not use characters JSON
  must escape.
* **Numbers**: JSON's grammar (integer: no fraction or exponent); no bounds.

Supported: ``type`` (one or a list) object / string / integer / number / boolean / null /
array, ``properties``, ``required``, ``items``, ``minItems``, ``maxItems``, ``minLength``,
``maxLength``, ``pattern``, ``enum``, ``const``, ``anyOf``, ``$ref`` into ``$defs`` or
``definitions`` (not recursive: that is not regular). Annotations (title, description,
...) are ignored. Anything else raises ValueError naming the keyword and where it is, rather
than being silently dropped (a dropped ``minimum`` would let invalid answers through).
"""

from __future__ import annotations

import json
from typing import Any

from .regex_fsm import DFA, compile_regex, escape

__all__ = ["compile_schema", "schema_to_regex"]

SP = "[ ]?"  # the one optional space after ',' and ':'
# One character of a JSON string: raw (not '"', '\' or a control character), a short escape,
# \uXXXX outside the surrogates D800-DFFF, or a high-low surrogate pair (one character past
# U+FFFF, as json.dumps writes an emoji); a lone surrogate is not a character.
CHAR = (r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]'
        r'|\\u(?:[0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2})'
        r'|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})')
INTEGER = r"-?(?:0|[1-9][0-9]*)"
NUMBER = INTEGER + r"(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
SCALARS = {"integer": INTEGER, "number": NUMBER, "boolean": "(?:true|false)", "null": "null"}
ANNOTATIONS = {"title", "description", "$schema", "$id", "$comment", "default", "examples",
               "$defs", "definitions", "readOnly", "writeOnly", "deprecated",
               "additionalProperties"}
KEYWORDS = {"string": {"minLength", "maxLength", "pattern"},
            "array": {"items", "minItems", "maxItems"},
            "object": {"properties", "required"},
            "integer": set(), "number": set(), "boolean": set(), "null": set()}


def schema_to_regex(schema: dict[str, Any]) -> str:
    """The regex (for :func:`~.regex_fsm.compile_regex`) of the JSON texts this module emits
    for ``schema``; ValueError for a schema it cannot express."""
    if not isinstance(schema, dict):
        raise ValueError(f"a JSON schema must be a dict, got {type(schema).__name__}")
    return _Compiler(schema).regex(schema, "#", ())


def compile_schema(schema: dict[str, Any], max_states: int = 20_000) -> DFA:
    """The DFA of :func:`schema_to_regex`."""
    return compile_regex(schema_to_regex(schema), max_states)


def literal(value: Any) -> str:
    """The regex of one JSON value, spaced by the policy above (for ``const`` and ``enum``)."""
    if isinstance(value, dict):
        return (r"\{" + f",{SP}".join(escape(json.dumps(k)) + f":{SP}" + literal(v)
                                      for k, v in value.items()) + r"\}")
    if isinstance(value, list):
        return r"\[" + f",{SP}".join(literal(v) for v in value) + r"\]"
    try:
        return escape(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{value!r} is not a JSON value") from e


def _repeat(lo: int, hi: int | None) -> str:
    if hi is None:
        return "*" if lo == 0 else ("+" if lo == 1 else f"{{{lo},}}")
    return "" if lo == hi == 1 else (f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}")


def _count(schema: dict, key: str, where: str) -> int | None:
    value = schema.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                              or value < 0):
        raise ValueError(f"{where}: {key} must be an integer >= 0, got {value!r}")
    return value


class _Compiler:
    """Walks a schema; ``root`` resolves $ref, ``refs`` is the chain of refs being expanded."""

    def __init__(self, root: dict[str, Any]):
        self.root = root

    def regex(self, s: Any, where: str, refs: tuple[str, ...]) -> str:
        if s is True or s == {}:
            raise ValueError(f"{where}: an unconstrained value (any JSON) has no regular "
                             "language (nesting is unbounded); give it a type")
        if not isinstance(s, dict):
            raise ValueError(f"{where}: a schema must be a dict, got {s!r}")
        if "$ref" in s:
            return self.ref(s, where, refs)
        if "const" in s:
            return literal(s["const"])
        if "enum" in s:
            if not isinstance(s["enum"], list) or not s["enum"]:
                raise ValueError(f"{where}: enum must be a non-empty list")
            return "(?:" + "|".join(literal(v) for v in s["enum"]) + ")"
        if "anyOf" in s:
            if set(s) - ANNOTATIONS - {"anyOf"}:
                raise ValueError(f"{where}: anyOf next to other keywords "
                                 f"({sorted(set(s) - ANNOTATIONS - {'anyOf'})}) is not "
                                 "supported; move them into each branch")
            if not isinstance(s["anyOf"], list) or not s["anyOf"]:
                raise ValueError(f"{where}: anyOf must be a non-empty list of schemas")
            return "(?:" + "|".join(self.regex(b, f"{where}/anyOf/{i}", refs)
                                    for i, b in enumerate(s["anyOf"])) + ")"
        types = s.get("type")
        if types is None:
            raise ValueError(f"{where}: give a type (or enum, const, anyOf, $ref)")
        types = types if isinstance(types, list) else [types]
        for t in types:
            if t not in KEYWORDS:
                raise ValueError(f"{where}: unknown type {t!r}; supported: "
                                 f"{', '.join(KEYWORDS)}")
        allowed = ANNOTATIONS | {"type"} | set().union(*(KEYWORDS[t] for t in types))
        if set(s) - allowed:
            raise ValueError(f"{where}: unsupported keyword(s) {sorted(set(s) - allowed)} "
                             f"for type {'/'.join(types)}")
        parts = [self.typed(t, s, where, refs) for t in types]
        return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"

    def ref(self, s: dict, where: str, refs: tuple[str, ...]) -> str:
        ref = s["$ref"]
        if set(s) - ANNOTATIONS - {"$ref"}:
            raise ValueError(f"{where}: $ref next to other keywords is not supported")
        if not isinstance(ref, str) or not ref.startswith(("#/$defs/", "#/definitions/")):
            raise ValueError(f"{where}: only local refs '#/$defs/Name' or '#/definitions/Name' "
                             f"are supported, got {ref!r}")
        if ref in refs:
            raise ValueError(f"{where}: recursive $ref {ref!r} (via {' -> '.join(refs)}) has no "
                             "regular language")
        section, name = ref[2:].split("/", 1)
        target = self.root.get(section, {}).get(name)
        if target is None:
            raise ValueError(f"{where}: $ref {ref!r} points nowhere")
        return self.regex(target, ref, (*refs, ref))

    def typed(self, t: str, s: dict, where: str, refs: tuple[str, ...]) -> str:
        if t in SCALARS:
            return SCALARS[t]
        if t == "string":
            return self.string(s, where)
        if t == "array":
            return self.array(s, where, refs)
        return self.object(s, where, refs)

    def string(self, s: dict, where: str) -> str:
        lo, hi = _count(s, "minLength", where) or 0, _count(s, "maxLength", where)
        if hi is not None and hi < lo:
            raise ValueError(f"{where}: minLength {lo} > maxLength {hi}")
        if "pattern" not in s:
            return f'"{CHAR}{_repeat(lo, hi)}"'
        if "minLength" in s or "maxLength" in s:
            raise ValueError(f"{where}: pattern together with minLength/maxLength is not "
                             "supported; put the length into the pattern ({m,n})")
        return f'"(?:{self.pattern(s["pattern"], where)})"'

    @staticmethod
    def pattern(p: Any, where: str) -> str:
        if not isinstance(p, str):
            raise ValueError(f"{where}: pattern must be a string")
        p = p.removeprefix("^")
        # A final '$' is an anchor unless escaped (an odd number of backslashes before it).
        if p.endswith("$") and (len(p) - 1 - len(p[:-1].rstrip("\\"))) % 2 == 0:
            p = p[:-1]
        try:
            dfa = compile_regex(p)
        except ValueError as e:
            raise ValueError(f"{where}: pattern: {e}") from e
        must_escape = '"\\' + "".join(map(chr, range(0x20)))
        if any(dfa.step(q, c) is not None for q in dfa.states for c in must_escape):
            raise ValueError(f"{where}: pattern {p!r} can match '\"', '\\' or a control "
                             "character, which JSON writes escaped; exclude them")
        return p

    def array(self, s: dict, where: str, refs: tuple[str, ...]) -> str:
        lo, hi = _count(s, "minItems", where) or 0, _count(s, "maxItems", where)
        if hi is not None and hi < lo:
            raise ValueError(f"{where}: minItems {lo} > maxItems {hi}")
        if hi == 0:
            return r"\[\]"
        if "items" not in s or not isinstance(s["items"], dict):
            raise ValueError(f"{where}: an array needs 'items': one schema for every item")
        item = self.regex(s["items"], f"{where}/items", refs)
        rest = f"(?:,{SP}{item}){_repeat(max(lo - 1, 0), None if hi is None else hi - 1)}"
        body = f"{item}{rest}"
        return r"\[" + (f"(?:{body})?" if lo == 0 else body) + r"\]"

    def object(self, s: dict, where: str, refs: tuple[str, ...]) -> str:
        props = s.get("properties", {})
        required = s.get("required", [])
        if not isinstance(props, dict) or not isinstance(required, list):
            raise ValueError(f"{where}: properties must be a dict and required a list")
        if set(required) - set(props):
            raise ValueError(f"{where}: required {sorted(set(required) - set(props))} not in "
                             "properties (the value needs a schema)")
        parts = [(escape(json.dumps(k)) + f":{SP}" +
                  self.regex(v, f"{where}/properties/{k}", refs), k in required)
                 for k, v in props.items()]

        def later(i: int) -> str:  # properties i.. after one was written: each leads with ','
            if i == len(parts):
                return ""
            p, req = parts[i]
            return (f",{SP}{p}" if req else f"(?:,{SP}{p})?") + later(i + 1)

        def first(i: int) -> str:  # properties i.. when none is written yet
            if i == len(parts):
                return ""
            p, req = parts[i]
            return p + later(i + 1) if req else f"(?:{p}{later(i + 1)}|{first(i + 1)})"

        return r"\{" + first(0) + r"\}"
