"""A guard for a semantic cache: two requests may share an answer only if their *slots* agree.

Sentence embeddings place "convert 10 km to miles" and "convert 10 miles to km" close
together (same words), and "capital of France" near "capital of Germany" (same template):
cosine similarity measures topic, not the few tokens that decide the answer. Raising the
threshold until such near-misses stop hitting also stops most true paraphrases. A guard is a
second, exact test on the pair after the similarity test: ``guard(query, cached) -> bool``.

**The rule of :class:`SlotGuard`.** Each request is read left to right into slots of seven
kinds; the pair passes iff, for every kind, the two sequences of slots are equal, in order:

    quantity  a number with the unit right after it: "10 km" -> "10 kilometer", "15%" ->
              "15 percent", "1,000" -> "1000" (digits as written, or the words two..ninety, hundred,
              thousand, million; "one" is left out: "which one" is not a number)
    unit      a unit with no number before it: "to miles" -> "mile" (synonyms, plurals and
              abbreviations map to one name: km, kilometres -> kilometer; °F -> fahrenheit)
    code      `backticked text`, a call ``name(`` and identifiers with a dot or underscore
              (os.path.join, lru_cache); a trailing "()" is dropped; case matters
    type      the type words int, float, str, list, dict, tuple, bool, array (and integer,
              string, dictionary, plurals), in order of first mention ("list of lists" is
              [list]); set and bytes are left out (a verb; a unit)
    quote     "double", 'single' or “curly” quoted text
    entity    runs of capitalised words (France, New York, JavaScript, SQL), case-folded,
              a possessive 's dropped, sentence words like What/How/Convert ignored
    negation  how many of not, no, never, without, cannot, nor, neither, n't appear

Order is compared within each kind, not across kinds: "how many miles is 10 km" and
"convert 10 km to miles" agree (quantity [10 kilometer], unit [mile] in both), while
"convert 10 miles to km" differs (quantity [10 mile]). What the rule gets wrong, by
design, on the safe side: a symmetric question asked the other way round ("a kilobyte is
how many bytes" vs "how many bytes in a kilobyte", "`is` vs `==`") is rejected, a lowercase
name is not a slot ("gold" vs "silver" passes), and so is an antonym ("safe" vs "unsafe").
A rejection only costs a cache miss; a wrong pass serves a wrong answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

__all__ = ["KINDS", "SlotGuard", "Slots", "extract_slots"]

KINDS = ("quantity", "unit", "code", "type", "quote", "entity", "negation")

# canonical unit -> the surface forms that name it (lower case; plurals listed)
_UNITS = {
    "millimeter": "mm millimeter millimeters millimetre millimetres",
    "centimeter": "cm centimeter centimeters centimetre centimetres",
    "meter": "m meter meters metre metres",
    "kilometer": "km kilometer kilometers kilometre kilometres",
    "inch": "inch inches", "foot": "ft foot feet", "yard": "yd yard yards",
    "mile": "mi mile miles",
    "square meter": "square meter|square meters|square metre|square metres|sq m|m²",
    "square foot": "square foot|square feet|sq ft|ft²",
    "acre": "acre acres", "hectare": "ha hectare hectares",
    "milligram": "mg milligram milligrams", "gram": "g gram grams",
    "kilogram": "kg kilogram kilograms kilo kilos", "pound": "lb lbs pound pounds",
    "ounce": "oz ounce ounces", "stone": "stone stones", "ton": "ton tons tonne tonnes",
    "milliliter": "ml milliliter milliliters millilitre millilitres",
    "liter": "l liter liters litre litres", "gallon": "gal gallon gallons",
    "quart": "qt quart quarts", "pint": "pt pint pints", "cup": "cup cups",
    "tablespoon": "tbsp tablespoon tablespoons", "teaspoon": "tsp teaspoon teaspoons",
    "fluid ounce": "fl oz|fluid ounce|fluid ounces",
    "celsius": "celsius|°c|° c|degrees celsius|degree celsius|centigrade",
    "fahrenheit": "fahrenheit|°f|° f|degrees fahrenheit|degree fahrenheit",
    "kelvin": "kelvin kelvins", "degree": "degree degrees °",
    "millisecond": "ms millisecond milliseconds", "second": "s sec secs second seconds",
    "minute": "min mins minute minutes", "hour": "h hr hrs hour hours",
    "day": "day days", "week": "week weeks", "month": "month months", "year": "year years",
    "mph": "mph|miles per hour|mile per hour",
    "kph": "kph|km/h|kmh|kilometers per hour|kilometres per hour",
    "meter per second": "m/s|meters per second|metres per second",
    "knot": "knot knots",
    "bit": "bit bits", "byte": "byte bytes", "kilobyte": "kb kilobyte kilobytes",
    "megabyte": "mb megabyte megabytes", "gigabyte": "gb gigabyte gigabytes",
    "terabyte": "tb terabyte terabytes", "mebibyte": "mib mebibyte mebibytes",
    "gibibyte": "gib gibibyte gibibytes",
    "calorie": "cal calorie calories", "kilocalorie": "kcal kilocalorie kilocalories",
    "joule": "j joule joules", "kilojoule": "kj kilojoule kilojoules",
    "kilowatt hour": "kwh|kilowatt hour|kilowatt hours", "watt": "w watt watts",
    "psi": "psi|pounds per square inch", "atmosphere": "atm atmosphere atmospheres",
    "bar": "bar bars", "pascal": "pa pascal pascals", "percent": "%|percent|per cent",
}
_UNIT_OF = {form: name for name, forms in _UNITS.items()
            for form in (forms.split("|") if "|" in forms else forms.split())}
# A bare unit (no number before it) must be a word, not a letter or symbol: "a" "m" "s"...
_BARE_OK = {f for f in _UNIT_OF if len(f) >= 2 and (f[0].isalpha() or f[0] == "°")} - {
    "pt", "ha", "pa"}

_TYPES = {"int": "int", "integer": "int", "integers": "int", "ints": "int", "float": "float",
          "floats": "float", "str": "str", "string": "str", "strings": "str", "list": "list",
          "lists": "list", "dict": "dict", "dicts": "dict", "dictionary": "dict",
          "dictionaries": "dict", "tuple": "tuple", "tuples": "tuple", "bool": "bool",
          "boolean": "bool", "booleans": "bool", "array": "array", "arrays": "array"}

_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero _ two three four five six seven eight nine ten eleven twelve".split()) if w != "_"}
_NUMBER_WORDS |= {"twenty": "20", "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60",
                  "seventy": "70", "eighty": "80", "ninety": "90", "hundred": "100",
                  "thousand": "1000", "million": "1000000", "dozen": "12"}

# Capitalised words that start questions and commands, not names.
_NOT_ENTITIES = set("""what which who whom whose when where why how is are was were do does
did can could should would will shall may might must please tell give show list name
explain describe convert write find define compare calculate compute summarize translate
make create help get use let lets a an the in on at of for to from by with and or but if
then so i i'm i've my me we our you your it its this that these those there here one any
some all hi hello hey thanks ok okay yes also quick question is it suppose imagine""".split())


def _alternation(forms) -> str:
    return "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))


_UNIT_RE = _alternation(_UNIT_OF)
_NUM_RE = r"\d[\d,]*(?:\.\d+)?|(?ai:\b(?:" + _alternation(_NUMBER_WORDS) + r")\b)"
_SCANNER = re.compile("|".join([
    r"`(?P<backtick>[^`]+)`",
    r'"(?P<dquote>[^"]+)"|“(?P<cquote>[^”]+)”|(?<!\w)\'(?P<squote>[^\'\n]+)\'(?!\w)',
    r"(?P<call>\b[A-Za-z_][\w.]*)\(",
    r"(?<![\w.])(?P<num>" + _NUM_RE + r")(?:\s*(?P<nunit>(?ai:" + _UNIT_RE + r"))(?![A-Za-z]))?",
    r"(?<![A-Za-z])(?P<unit>(?ai:" + _UNIT_RE + r"))(?![A-Za-z])",
    r"(?P<ident>\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\b|\b[A-Za-z]\w*_\w+\b|\b[a-z]+[A-Z]\w*\b)",
    r"(?P<neg>(?ai:\b(?:not|no|never|without|cannot|nor|neither)\b|\b[a-z]+n['’]t\b))",
    r"(?P<entity>\b[A-Z][\w]*(?:['’]s)?(?:[ \t]+[A-Z][\w]*(?:['’]s)?)*)",
    r"(?P<word>\b[a-z]+\b)",
]))


@dataclass(frozen=True)
class Slots:
    """The slots of one request, per kind, in reading order."""

    quantity: tuple[str, ...] = ()
    unit: tuple[str, ...] = ()
    code: tuple[str, ...] = ()
    type: tuple[str, ...] = ()
    quote: tuple[str, ...] = ()
    entity: tuple[str, ...] = ()
    negation: int = 0


def _number(text: str) -> str:
    t = text.lower()
    if t in _NUMBER_WORDS:
        return _NUMBER_WORDS[t]
    # thousands separators go; trailing zeros stay ("Python 3.10" is not 3.1)
    return t.replace(",", "")


def _entities(run: str) -> list[str]:
    """Split a run of capitalised words into names, dropping question words (What, How)."""
    out, current = [], []
    for w in run.split():
        w = re.sub(r"['’]s$", "", w)
        if w.lower() in _NOT_ENTITIES or w.lower() in _UNIT_OF:
            if current:
                out.append(" ".join(current))
            current = []
        else:
            current.append(w.casefold())
    if current:
        out.append(" ".join(current))
    return out


def extract_slots(text: str) -> Slots:
    """Read ``text`` into :class:`Slots` (the rule is in the module docstring)."""
    found: dict[str, list[str]] = {k: [] for k in KINDS if k != "negation"}
    negation = 0
    for m in _SCANNER.finditer(text):
        g = m.lastgroup if m.lastgroup != "nunit" else "num"
        if g == "backtick" or g == "call" or g == "ident":
            code = m.group(g).strip()
            found["code"].append(code.removesuffix("()"))
        elif g in ("dquote", "cquote", "squote"):
            found["quote"].append(m.group(g).strip())
        elif g == "num":
            unit = m.group("nunit")
            q = _number(m.group("num"))
            found["quantity"].append(f"{q} {_UNIT_OF[unit.lower()]}" if unit else q)
        elif g == "unit":
            form = m.group("unit").lower()
            if form in _BARE_OK:
                found["unit"].append(_UNIT_OF[form])
            elif m.group("unit")[0].isupper():  # "M" or "S" alone is a name, not a unit
                found["entity"].extend(_entities(m.group("unit")))
        elif g == "neg":
            negation += 1
        elif g == "entity":
            found["entity"].extend(_entities(m.group("entity")))
        elif g == "word" and m.group("word") in _TYPES:
            t = _TYPES[m.group("word")]
            if t not in found["type"]:
                found["type"].append(t)
    return Slots(**{k: tuple(v) for k, v in found.items()}, negation=negation)


@dataclass(frozen=True)
class SlotGuard:
    """``guard(a, b)`` is True iff the slots of ``kinds`` agree (see the module docstring).

    A lab can switch kinds off (``SlotGuard(kinds=("quantity", "unit"))``) to see what each
    one catches and what it costs.
    """

    kinds: tuple[str, ...] = KINDS

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - {f.name for f in fields(Slots)}
        if unknown:
            raise ValueError(f"unknown slot kinds {sorted(unknown)}; known: {KINDS}")

    def __call__(self, a: str, b: str) -> bool:
        return self.mismatch(a, b) is None

    def mismatch(self, a: str, b: str) -> str | None:
        """The first kind whose slots differ (why the pair is rejected), or None."""
        sa, sb = extract_slots(a), extract_slots(b)
        for kind in self.kinds:
            if getattr(sa, kind) != getattr(sb, kind):  # kinds are Slots fields: checked above
                return kind
        return None
