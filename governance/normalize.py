"""Input normalisation: the contract between callers and the policy pack.

Every policy input that carries free text passes through here first; the policies see both the
raw text and what this module derives from it. Normalisation is what makes the prompt rules
resist evasion, and matching on whole tokens is what keeps them from tripping on ordinary words.

Steps, in order (``normalize_text``):

1. Unicode NFKC (fullwidth and compatibility forms become plain ones: ``ＭＩＣＫＥＹ`` -> ``MICKEY``).
2. Removal of invisible characters: format characters (zero-width space/joiners, bidi controls,
   soft hyphen, word joiner, BOM), variation selectors and combining marks after NFKD
   (``mïckey`` -> ``mickey``).
3. Case folding (``str.casefold``).
4. Confusable folding: Cyrillic and Greek look-alikes (capitals before case folding, since
   Greek ``Η`` imitates ``H`` while ``η`` imitates ``n``) and other homoglyphs (``ı`` dotless i,
   ``ł``, ``ø``) become the Latin letter they imitate.
5. Leetspeak folding inside tokens that contain at least one letter: ``0->o 1->i 3->e 4->a
   5->s 7->t @->a $->s``. ``1`` is ambiguous (``i`` or ``l``): a second token variant with
   ``1->l`` is matched too. Tokens without letters (``1024``, ``4``) are left alone.
6. Separator collapsing: every other non-alphanumeric character separates tokens
   (``MICKEY-MOUSE``, ``GREG_RUTKOWSKI``), possessive ``'s`` and apostrophes are dropped, and a
   run of three or more single-letter tokens is joined (``m.i.c.k.e.y``, ``m i c k e y``).

Matching is on whole tokens and token n-grams, never substrings: ``grapes``, ``Scunthorpe``,
``cocktail``, ``Essex``, ``assassin`` and ``therapist`` are single tokens that equal no listed
term, so they pass. Protected names also match their compact form (``mickeymouse``,
``pika chu`` -> ``pikachu``); term lists match only exact token sequences, since compact
joining of short terms would reintroduce the substring problem (``it's ex`` -> ``sex``).

Misspellings and inflections of long terms: a token of at least ``FUZZY_MIN`` letters that is one
edit (a letter added, dropped, changed, or two neighbours swapped) from a listed one-word term of
at least ``FUZZY_MIN`` letters matches that term, reported as ``token~term`` (``evicerated~eviscerated``,
``splitternackte~splitternackt``), unless the token is itself an English word of the sentence
model's vocabulary (``sequels`` is not a misspelt ``sexuels``, nor ``massacre`` the Spanish
``masacre``). Short terms need an exact match: one edit from a five-letter word is too often
another word (``naked`` and ``baked``).

Set lookups happen here, not in Rego: the embedded engine (rego-cpp) scans an object linearly
for a variable key, so a 10,000-name lookup per n-gram would take tens of milliseconds. The
lists themselves are policy data (``governance/policies/prompt/data.json``), read from the
bundle in force; the policies receive the matches and decide.

The ``prompt`` section of a policy input (``analyse_prompt``)::

    {"raw": str,                 # the prompt as given
     "length": int,              # characters of the raw prompt
     "normalized": str,          # tokens after steps 1-6, joined by one space
     "analysed": bool,           # false when the prompt exceeds the analysis cap (it is denied by length)
     "terms": {category: [term, ...]},            # blocked-term matches per category ("<category>:ambiguous"
                                                  # for data.ambiguous_terms)
     "semantic": {...},           # added by the policy host when policy data enables it (governance/semantic.py)
     "protected_names": [{"name", "category", "matched"}],
     "personal_data": {"findings": [{"kind", "format", "masked"}]}}

``personal_data`` is ``latentops.governance.personal_data``'s scan of the prompt (its module
docstring is the reference): phone numbers by ``phonenumbers``; IBANs, payment cards, national ids
and VAT numbers validated by ``python-stdnum`` checksums; emails. It runs on the text folded by
``fold`` (steps 1-4), so invisible characters, fullwidth digits and look-alikes hide nothing, and
the policy decides per ``kind``. ``mask_text`` replaces each finding with ``[<kind>]``
(``[email]``, ``[phone]``, ``[payment_card]``, ``[iban]``, ``[national_id]``, ``[vat]``) for
decision records.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from latentops.core import text as core_text
from latentops.governance.personal_data import Scanner

# Longest token sequence a protected name or term may have; longer entries are refused as data.
MAX_NGRAM = 5
# Shortest token and listed term a one-edit match is tried for (see the module docstring).
FUZZY_MIN = 7
# Prompts longer than this are not analysed at all: the length rule denies them anyway, and the
# cap bounds the work an oversize input can cause.
ANALYSIS_CAP = 20_000


# Look-alikes of Latin letters, applied after case folding (so only lowercase forms are needed).
_CONFUSABLES = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "г": "r", "д": "d", "з": "3", "и": "u", "й": "u",
    "к": "k", "л": "l", "м": "m", "н": "h", "о": "o", "п": "n", "р": "p", "с": "c", "т": "t",
    "у": "y", "х": "x", "ц": "u", "ш": "w", "щ": "w", "ъ": "b", "ь": "b", "ѕ": "s", "і": "i",
    "ї": "i", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ү": "y", "ѵ": "v",
    # Greek
    "α": "a", "β": "b", "γ": "y", "δ": "d", "ε": "e", "ζ": "z", "η": "n", "θ": "o", "ι": "i",
    "κ": "k", "λ": "l", "μ": "u", "ν": "v", "ξ": "e", "ο": "o", "π": "n", "ρ": "p", "σ": "o",
    "ς": "c", "τ": "t", "υ": "u", "φ": "o", "χ": "x", "ψ": "w", "ω": "w",
    # Latin look-alikes and letters NFKD does not decompose
    "ı": "i", "ȷ": "j", "ł": "l", "ø": "o", "đ": "d", "ħ": "h", "ŧ": "t", "ƅ": "b", "ɑ": "a",
    "ɡ": "g", "ɩ": "i", "ɪ": "i", "ʏ": "y", "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e",
    "ɢ": "g", "ʜ": "h", "ᴊ": "j", "ᴋ": "k", "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p",
    "ʀ": "r", "ꜱ": "s", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z", "æ": "ae", "œ": "oe",
}
# Capitals whose look-alike differs from their lowercase form's (Greek Η looks like H, η like n);
# applied before case folding.
_UPPER_CONFUSABLES = {
    "Α": "a", "Β": "b", "Ε": "e", "Ζ": "z", "Η": "h", "Ι": "i", "Κ": "k", "Μ": "m", "Ν": "n", "Ο": "o",
    "Ρ": "p", "Τ": "t", "Υ": "y", "Χ": "x", "А": "a", "В": "b", "Е": "e", "Н": "h", "К": "k", "М": "m",
    "О": "o", "Р": "p", "С": "c", "Т": "t", "У": "y", "Х": "x", "Ѕ": "s", "І": "i", "Ј": "j",
}
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_LEET_L = str.maketrans({"1": "l"})

_FOLD_TABLE: dict[int, str | None] = dict(core_text.INVISIBLE)
_FOLD_TABLE.update({ord(k): v for k, v in _CONFUSABLES.items()})
_FOLD_TABLE.update({ord(k): v for k, v in _UPPER_CONFUSABLES.items()})

_APOSTROPHES = re.compile(r"['’ʼ`´]s\b|['’ʼ`´]")
# Tokens are letters, digits and the leet symbols that can stand for letters; all else separates.
_SEPARATORS = re.compile(r"[^\w@$]+|_+")
_NON_ALNUM = re.compile(r"[^\w]+|_+")


def _strip_marks(text: str) -> str:
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def fold(text: str) -> str:
    """Steps 1-4: NFKC, invisible characters and marks removed, case-folded, confusables folded."""
    text = unicodedata.normalize("NFKC", text).translate(_FOLD_TABLE)
    text = _strip_marks(text).casefold()
    if not text.isascii():
        text = text.translate(_FOLD_TABLE)
    return text


# Personal data with the default regions, for callers without a bundle's index.
_DEFAULT_SCANNER = Scanner(fold=fold)


def is_blank(value: str) -> bool:
    """See :func:`latentops.core.text.is_blank` (the one rule, applied by every layer)."""
    return core_text.is_blank(value)


def _leet(token: str) -> tuple[str, str | None]:
    """The token with leetspeak folded; a second variant when ``1`` might have been ``l``."""
    if token.isalpha() or not any(ch.isalpha() for ch in token):
        return token, None
    alt = token.translate(_LEET_L).translate(_LEET) if "1" in token else None
    return token.translate(_LEET), alt


def _collapse_single_letters(tokens: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Join runs of three or more one-letter tokens: ``m i c k e y`` -> ``mickey``."""
    out: list[tuple[str, ...]] = []
    run: list[str] = []
    for token in [*tokens, ("",)]:
        if len(token) == 1 and len(token[0]) == 1:
            run.append(token[0])
            continue
        if len(run) >= 3:
            out.append(("".join(run),))
        else:
            out.extend((letter,) for letter in run)
        run = []
        if token[0]:
            out.append(token)
    return out


def tokenize(text: str) -> list[tuple[str, ...]]:
    """Normalised tokens of ``text``, each as its forms: one, or two when ``1`` may be ``i`` or ``l``."""
    folded = _APOSTROPHES.sub("", fold(text))
    tokens: list[tuple[str, ...]] = []
    for raw in _SEPARATORS.split(folded):
        if raw.isalpha():  # the common token: nothing to fold or split further
            tokens.append((raw,))
            continue
        if not raw:
            continue
        first, second = _leet(raw)
        # Symbols left in a token without letters ("$5") separate what remains.
        pieces = [piece for piece in _NON_ALNUM.split(first) if piece]
        if second is not None and len(pieces) == 1:
            tokens.append((pieces[0], second))
        else:
            tokens.extend((piece,) for piece in pieces)
    return _collapse_single_letters(tokens)


def normalize_text(text: str) -> str:
    """The normalised form of ``text``: the first form of each token, joined by single spaces."""
    return " ".join(token[0] for token in tokenize(text))


def term_key(text: str) -> str:
    """The lookup key of a listed term or name: normalised tokens joined by one space."""
    return normalize_text(text)


@dataclass
class PromptIndex:
    """Lookup sets built once per bundle revision from the prompt policy's data."""

    terms: dict[str, str] = field(default_factory=dict)  # key -> category
    # every one-letter deletion of a long one-word term (and the term itself) -> those terms
    near_terms: dict[str, list[str]] = field(default_factory=dict)
    words: frozenset[str] = frozenset()  # English words that are never taken for a misspelt term
    names: dict[str, dict[str, str]] = field(default_factory=dict)  # spaced key -> entry
    compact_names: dict[str, dict[str, str]] = field(default_factory=dict)  # compact key -> entry
    personal: Scanner = field(default_factory=lambda: _DEFAULT_SCANNER)
    max_terms_n: int = 1
    max_names_n: int = 1

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> PromptIndex:
        """Build from ``data.policy_data.prompt`` (already shape-checked by the bundle loader)."""
        index = cls()
        # Ambiguous terms are reported under "<category>:ambiguous": the policy counts them only
        # when the meaning-based score points the same way.
        lists = [*data.get("blocked_terms", {}).items(),
                 *((f"{category}:ambiguous", terms) for category, terms in data.get("ambiguous_terms", {}).items())]
        for category, terms in lists:
            for term in terms:
                key = term_key(term)
                if key:
                    index.terms.setdefault(key, category)
                    index.max_terms_n = max(index.max_terms_n, key.count(" ") + 1)
        index.words = _english_words()
        for key in index.terms:
            if " " not in key and len(key) >= FUZZY_MIN:
                for variant in _deletions(key):
                    index.near_terms.setdefault(variant, []).append(key)
        for entry in data.get("protected_names", []):
            key = term_key(entry["name"])
            if not key:
                continue
            record = {"name": entry["name"], "category": entry.get("category", "protected")}
            index.names.setdefault(key, record)
            index.compact_names.setdefault(key.replace(" ", ""), record)
            index.max_names_n = max(index.max_names_n, key.count(" ") + 1)
        index.personal = Scanner.from_data(data.get("personal_data", {}), fold=fold)
        return index

    def match_terms(self, tokens: Sequence[tuple[str, ...]]) -> dict[str, list[str]]:
        found: dict[str, set[str]] = {}
        for gram in _ngrams(tokens, self.max_terms_n, " "):
            category = self.terms.get(gram)
            if category is not None:
                found.setdefault(category, set()).add(gram)
        if self.near_terms:
            for token in {form for forms in tokens for form in forms if len(form) >= FUZZY_MIN}:
                if token in self.terms or token in self.words:
                    continue
                for term in self.near_terms_of(token):
                    found.setdefault(self.terms[term], set()).add(f"{token}~{term}")
        return {category: sorted(terms) for category, terms in sorted(found.items())}

    def near_terms_of(self, token: str) -> list[str]:
        """Listed one-word terms one edit from ``token`` (symmetric deletions, then checked)."""
        candidates = {term for variant in _deletions(token) for term in self.near_terms.get(variant, ())}
        return sorted(term for term in candidates if _one_edit(token, term))

    def match_names(self, tokens: Sequence[tuple[str, ...]]) -> list[dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for gram in _ngrams(tokens, self.max_names_n, " "):
            entry = self.names.get(gram)
            if entry is not None:
                found.setdefault(entry["name"], {**entry, "matched": gram})
        # Compact forms may be split over up to max_names_n + 1 tokens ("pika chu", "mickeymouse").
        for gram in _ngrams(tokens, self.max_names_n + 1, ""):
            entry = self.compact_names.get(gram)
            if entry is not None:
                found.setdefault(entry["name"], {**entry, "matched": gram})
        return [found[name] for name in sorted(found)]


@functools.cache
def _english_words() -> frozenset[str]:
    from latentops.governance.sentence_encoder import known_words

    return known_words(FUZZY_MIN)


def _deletions(word: str) -> set[str]:
    """``word`` and every string one letter shorter."""
    return {word, *(word[:i] + word[i + 1:] for i in range(len(word)))}


def _one_edit(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` differ by one insertion, deletion, substitution or adjacent swap."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    if len(a) == len(b):
        rest = a[start + 1:] == b[start + 1:]
        swapped = a[start:start + 2] == b[start:start + 2][::-1] and a[start + 2:] == b[start + 2:]
        return rest or swapped
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    return longer[start + 1:] == shorter[start:]


def _ngrams(tokens: Sequence[tuple[str, ...]], max_n: int, joiner: str) -> Iterable[str]:
    """Every run of 1..max_n tokens, once per combination of token forms."""
    count = len(tokens)
    if all(len(forms) == 1 for forms in tokens):
        # The common case: one form per token, so plain slices of a list of strings.
        words = [forms[0] for forms in tokens]
        yield from words
        for n in range(2, min(max_n, count) + 1):
            for start in range(count - n + 1):
                yield joiner.join(words[start:start + n])
        return
    for n in range(1, min(max_n, count) + 1):
        for start in range(count - n + 1):
            for combination in itertools.product(*tokens[start:start + n]):
                yield joiner.join(combination)


def analyse_prompt(raw: str, index: PromptIndex) -> dict[str, Any]:
    """The ``prompt`` section of a policy input (see the module docstring for its shape)."""
    if not isinstance(raw, str):
        raise TypeError(f"prompt must be a string, got {type(raw).__name__}")
    section: dict[str, Any] = {"raw": raw, "length": len(raw)}
    if len(raw) > ANALYSIS_CAP:
        section.update(analysed=False, normalized="", terms={}, protected_names=[], personal_data={"findings": []})
        return section
    tokens = tokenize(raw)
    section.update(
        analysed=True,
        normalized=" ".join(token[0] for token in tokens),
        terms=index.match_terms(tokens),
        protected_names=index.match_names(tokens),
        personal_data=index.personal.section(raw),
    )
    return section



def mask_text(text: str, index: PromptIndex | None = None) -> str:
    """``text`` with each personal-data finding replaced by ``[<kind>]`` (``[email]``, ``[phone]``, ...)."""
    return (index.personal if index else _DEFAULT_SCANNER).mask(text)


def mask_input(value: Any, index: PromptIndex | None = None) -> Any:
    """A copy of a policy input with personal data masked in every string.

    Findings are already masked; an analysed prompt's ``normalized`` form is derived again from
    its masked ``raw`` text when personal data was found, since it holds the same values.
    """
    if isinstance(value, str):
        return mask_text(value, index)
    if isinstance(value, Mapping):
        out = {key: mask_input(item, index) for key, item in value.items()}
        personal = value.get("personal_data")
        if isinstance(personal, Mapping) and personal.get("findings") and isinstance(out.get("raw"), str) \
                and isinstance(value.get("normalized"), str):
            out["normalized"] = normalize_text(out["raw"])
        return out
    if isinstance(value, list | tuple):
        return [mask_input(item, index) for item in value]
    return value

