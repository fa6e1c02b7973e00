"""Regex syntax -> a syntax tree over code-point intervals (recursive descent).

    alt  := cat ('|' cat)*          cat := quantified*     quantified := atom ('*'|'+'|'?'|{m,n})*
    atom := char | escape | '.' | '[' class ']' | '(' alt ')' | '(?:' alt ')'

The alphabet is all of Unicode, so a character class is a tuple of inclusive code-point
intervals (``[a-z0-9]`` is ((48, 57), (97, 122))) and a negated class is the complement up
to U+10FFFF. The tree is plain tuples (see :data:`Node`); :mod:`.regex_fsm` compiles it.

Syntax and meaning follow ``re.fullmatch(pattern, s, re.ASCII)``: ``\\d`` is [0-9],
``\\w`` is [A-Za-z0-9_], ``\\s`` is [ \\t\\n\\r\\f\\v]; ``.`` is any character but "\\n".
Supported: literals, escapes (``\\.``, ``\\n``, ``\\xHH``, ``\\uHHHH``, ...), classes ``[a-z]``
and ``[^...]``, ``.``, groups ``(...)`` and ``(?:...)``, ``|``, and ``* + ? {m} {m,} {m,n}``
(lazy ``*?`` is accepted: it changes which match re finds, not the language). Anchors,
backreferences, lookaround and flags raise a ValueError that names the position: they are
not regular, or mean nothing when the whole string must match. So does ``{`` where re would
read a literal brace (write ``\\{``): a typo there should not silently change the language.
"""

from __future__ import annotations

MAX_CHAR = 0x10FFFF
MAX_REPEAT = 10_000  # {m,n} copies its fragment n times: bound the NFA a pattern can ask for
Intervals = tuple[tuple[int, int], ...]  # sorted, disjoint, inclusive code-point ranges
Node = tuple  # ("set", Intervals) | ("cat", nodes) | ("alt", nodes) | ("rep", node, lo, hi)


def _union(*sets: Intervals) -> Intervals:
    out: list[list[int]] = []
    for lo, hi in sorted(span for cs in sets for span in cs):
        if out and lo <= out[-1][1] + 1:  # overlapping or touching: one interval
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def _complement(cs: Intervals) -> Intervals:
    out, nxt = [], 0
    for lo, hi in cs:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CHAR:
        out.append((nxt, MAX_CHAR))
    return tuple(out)


def _chars(s: str) -> Intervals:
    return _union(*(((ord(c), ord(c)),) for c in s))


DIGIT = ((48, 57),)
WORD = _union(DIGIT, ((65, 90), (95, 95), (97, 122)))
SPACE = _chars(" \t\n\r\f\v")
CLASS_ESCAPES = {"d": DIGIT, "w": WORD, "s": SPACE, "D": _complement(DIGIT),
                 "W": _complement(WORD), "S": _complement(SPACE)}
CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a", "0": "\0"}
HEX_DIGITS = {"x": 2, "u": 4, "U": 8}
SPECIAL = set("\\.^$*+?{}[]()|-")


def escape(text: str) -> str:
    """A pattern matching exactly ``text`` (like re.escape, for this module's syntax)."""
    return "".join("\\" + c if c in SPECIAL else c for c in text)


class Parser:
    """The parser of the grammar above; :meth:`parse` returns the tree or raises ValueError."""

    def __init__(self, pattern: str):
        self.p, self.i = pattern, 0

    def error(self, msg: str, at: int | None = None) -> ValueError:
        at = self.i if at is None else at
        return ValueError(f"invalid regex {self.p!r} at position {at}: {msg}")

    def peek(self) -> str:
        return self.p[self.i] if self.i < len(self.p) else ""

    def parse(self) -> Node:
        node = self.alt()
        if self.i < len(self.p):  # only an unmatched ')' stops alt() before the end
            raise self.error("unbalanced ')'")
        return node

    def alt(self) -> Node:
        branches = [self.cat()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.cat())
        return branches[0] if len(branches) == 1 else ("alt", tuple(branches))

    def cat(self) -> Node:
        items = []
        while self.peek() not in ("", "|", ")"):
            items.append(self.quantified())
        return items[0] if len(items) == 1 else ("cat", tuple(items))

    def quantified(self) -> Node:
        node = self.atom()
        at = self.i
        bounds = self.quantifier()
        if bounds is None:
            return node
        if self.peek() == "?":  # lazy: same language
            self.i += 1
        if self.peek() in ("*", "+", "?", "{"):
            raise self.error("multiple repeat (possessive quantifiers are not supported); "
                             "group the inner repeat: (a*)*", self.i)
        lo, hi = bounds
        if lo > MAX_REPEAT or (hi or 0) > MAX_REPEAT:
            raise self.error(f"repeat count over {MAX_REPEAT}", at)
        return ("rep", node, lo, hi)

    def quantifier(self) -> tuple[int, int | None] | None:
        c, at = self.peek(), self.i
        if c in ("*", "+", "?"):
            self.i += 1
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        if c != "{":
            return None
        end = self.p.find("}", at)
        if end < 0:
            raise self.error("unterminated '{' quantifier (write \\{ for a literal brace)", at)
        parts = self.p[at + 1:end].split(",")
        if len(parts) > 2 or parts == [""] or not all(
                p == "" or (p.isascii() and p.isdigit()) for p in parts):
            raise self.error(f"bad quantifier {self.p[at:end + 1]!r} (write \\{{ for a literal "
                             "brace)", at)
        lo = int(parts[0] or 0)
        hi = lo if len(parts) == 1 else (int(parts[1]) if parts[1] else None)
        if hi is not None and hi < lo:
            raise self.error(f"min {lo} > max {hi} in quantifier", at)
        self.i = end + 1
        return lo, hi

    def atom(self) -> Node:
        at, c = self.i, self.p[self.i]
        self.i += 1
        if c == "(":
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.peek() == "?":
                raise self.error("group extensions (?...) other than (?:...) are not supported",
                                 at)
            node = self.alt()
            if self.peek() != ")":
                raise self.error("missing ')' for the group opened here", at)
            self.i += 1
            return node
        if c == "[":
            return ("set", self.char_class(at))
        if c == ".":
            return ("set", _complement(_chars("\n")))
        if c == "\\":
            return ("set", self.escape(at, in_class=False))
        if c in "*+?{":
            raise self.error(f"nothing to repeat before {c!r}", at)
        if c in "^$":
            raise self.error("anchors are not supported: a pattern always matches the whole "
                             "string", at)
        return ("set", _chars(c))

    def escape(self, at: int, in_class: bool) -> Intervals:
        if self.i >= len(self.p):
            raise self.error("trailing backslash", at)
        c = self.p[self.i]
        self.i += 1
        if c in CLASS_ESCAPES:
            return CLASS_ESCAPES[c]
        if c in CHAR_ESCAPES:
            return _chars(CHAR_ESCAPES[c])
        if c == "b" and in_class:  # [\b] is backspace; \b outside a class is an anchor
            return _chars("\b")
        if c in HEX_DIGITS:
            n = HEX_DIGITS[c]
            digits = self.p[self.i:self.i + n]
            if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.error(f"\\{c} needs {n} hex digits", at)
            self.i += n
            code = int(digits, 16)
            if code > MAX_CHAR:
                raise self.error(f"\\{c}{digits} is past the last Unicode character", at)
            return ((code, code),)
        if c.isdigit():
            raise self.error("backreferences (and octal escapes) are not supported", at)
        if c.isascii() and c.isalpha():
            raise self.error(f"unsupported escape \\{c} (anchors such as \\b and \\A are not "
                             "supported)", at)
        return _chars(c)  # \. \* \\ ...: the character itself

    def char_class(self, at: int) -> Intervals:
        negate = self.peek() == "^"
        self.i += negate
        items: list[Intervals] = []
        first = True  # a ']' right after '[' or '[^' is a literal, as in re
        while True:
            if self.i >= len(self.p):
                raise self.error("unterminated character class", at)
            if self.peek() == "]" and not first:
                self.i += 1
                break
            first = False
            lo = self.class_atom()
            if self.peek() == "-" and self.p[self.i + 1:self.i + 2] not in ("]", ""):
                dash = self.i
                self.i += 1
                hi = self.class_atom()
                if len(lo) != 1 or len(hi) != 1 or lo[0][0] != lo[0][1] or hi[0][0] != hi[0][1]:
                    raise self.error("bad character range: a class escape is not an endpoint",
                                     dash)
                if hi[0][0] < lo[0][0]:
                    raise self.error("bad character range: reversed", dash)
                items.append(((lo[0][0], hi[0][0]),))
            else:
                items.append(lo)
        cs = _union(*items)
        return _complement(cs) if negate else cs

    def class_atom(self) -> Intervals:
        at, c = self.i, self.p[self.i]
        self.i += 1
        return self.escape(at, in_class=True) if c == "\\" else _chars(c)
