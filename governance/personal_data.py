"""Personal data in free text: the host finds and validates candidates, the policy decides.

Detection rests on maintained libraries, not on patterns of our own: ``phonenumbers`` (Google's
libphonenumber metadata) for phone numbers and ``python-stdnum`` for the checksums of bank accounts,
payment cards, national identifiers and VAT numbers. Only emails (no library among our
dependencies) and the UK National Insurance number (no checksum exists, so no stdnum module) are
checked here, by structure.

The scan runs on the text after folding (``fold``: the prompt normaliser passes
``normalize.fold``: NFKC, invisible characters and marks removed, look-alike letters and digits
folded), with every Unicode decimal digit read as its ASCII digit, so zero-width characters,
fullwidth or other-script digits and Cyrillic look-alikes hide nothing. Spans are kept in the
original text, so ``mask`` replaces what was written.

What is found (``Finding.kind`` / ``format``):

``email``         ``email``: a dotted domain whose top-level label is alphabetic and not a file
                  extension (``icon@2x.png`` is a file name).
``phone``         the number's region (``GB``; ``+800`` for non-geographic numbers):
                  ``PhoneNumberMatcher`` over ``phone_regions`` (policy data), valid numbers only.
                  A number with its international prefix (``+44``, ``0044``) is always read; one in
                  national format needs a trunk ``0`` (regions that dial one), punctuation
                  (``(212) 555-0100``, ``212-555-0100``) or a phone word before it (``call``,
                  ``tel``, ...). Either must start its run of digits. So ``seed 987654321`` and
                  ``512 768 1024`` are no phone numbers, although valid in some region.
``payment_card``  the network (``visa``, ``mastercard``, ``amex``, ...): 14-19 digits, the issuer
                  prefix and length of a network, and a valid ``stdnum.luhn`` check digit.
``iban``          ``iban``: ``stdnum.iban`` (country, length, BBAN format and mod-97 check).
``vat``           ``eu.vat`` / ``gb.vat``: the country prefix written against the number
                  (``DE136695976``), or a VAT word before it (``vat``, ``tva``, ``btw``, ...).
``national_id``   the stdnum module: ``fr.nir``, ``es.dni``, ``es.nie``, ``it.codicefiscale``,
                  ``be.nn``, ``gb.nino`` (HMRC's prefix rules) always; ``de.idnr`` when written in
                  groups or after an id word; ``us.ssn`` (no checksum) when written 3-2-4 or after
                  ``ssn``; ``nl.bsn`` and ``pt.nif`` (one-in-eleven checksums, which a seed passes
                  often) only after their words (``bsn``, ``nif``).

Identifier candidates come from a tolerant tokenizer: runs of letters and digits joined by up to
three spaces, dots or dashes (``4 1 1 1 ...``, ``DE89 3704 0044``, ``123-45-6789``); a word of
three or more letters ends a run (an IBAN's four-letter bank code excepted). Every run of whole
groups up to 34 characters is validated; at each start the longest valid one is kept. A seed (one
unbroken number after ``seed``) is skipped. Years, resolutions (``1920x1080``), step counts,
prices, dates and version numbers fail the checksums or the rules above.

``Scanner.section(text)`` is the ``personal_data`` section of the prompt policy input::

    {"findings": [{"kind": "phone", "format": "GB", "masked": "***********58"}, ...]}

``masked`` keeps the last two characters of the compact value; the value itself never leaves the
host.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import phonenumbers
from stdnum import iban, luhn
from stdnum.be import nn as be_nn
from stdnum.de import idnr as de_idnr
from stdnum.es import dni as es_dni
from stdnum.es import nie as es_nie
from stdnum.eu import vat as eu_vat
from stdnum.fr import nir as fr_nir
from stdnum.gb import vat as gb_vat
from stdnum.it import codicefiscale as it_cf
from stdnum.nl import bsn as nl_bsn
from stdnum.pt import nif as pt_nif
from stdnum.us import ssn as us_ssn

from latentops.core import text as core_text

KINDS = ("email", "phone", "payment_card", "iban", "national_id", "vat")
DEFAULT_PHONE_REGIONS = ("US", "GB", "FR", "DE", "ES", "IT", "NL", "PT", "BE")
# Fewer digits than this and no "@": nothing to look for (the shortest identifier has 6 digits).
_MIN_DIGITS = 6
_MAX_COMPACT = 34  # the longest IBAN
_CONTEXT_CHARS = 40  # how far before a number a keyword counts

Fold = Callable[[str], str]


@dataclass(frozen=True)
class Finding:
    kind: str
    format: str
    value: str = field(repr=False)  # compact value: stays in the host
    start: int  # span in the scanned text
    end: int

    @property
    def masked(self) -> str:
        return "*" * max(len(self.value) - 2, 0) + self.value[-2:]

    def as_input(self) -> dict[str, str]:
        return {"kind": self.kind, "format": self.format, "masked": self.masked}


# --- folding, with a map back to the original text ----------------------------------------------


def _basic_fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(core_text.INVISIBLE).casefold()


@functools.lru_cache(maxsize=8192)
def _fold_char(ch: str, fold: Fold) -> str:
    out = fold(ch)
    if out.isascii():
        return out
    return "".join(str(unicodedata.decimal(c)) if unicodedata.category(c) == "Nd" else c for c in out)


def _folded(text: str, fold: Fold) -> tuple[str, list[int] | None]:
    """The scanned form of ``text`` and, unless it is ``text`` itself, each character's origin."""
    if text.isascii():
        return text, None
    chars: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        out = ch if ch.isascii() else _fold_char(ch, fold)
        chars.append(out)
        origin.extend([i] * len(out))
    return "".join(chars), origin


# --- emails --------------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+-])[a-z0-9](?:[a-z0-9._%+-]{0,62}[a-z0-9_%+-])?"
    r"@((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+([a-z]{2,24}))(?![\w-])", re.IGNORECASE)
_FILE_EXTENSIONS = frozenset({  # file names look like addresses (icon@2x.png); no country TLDs here
    "png", "jpg", "jpeg", "gif", "webp", "svg", "bmp", "tif", "tiff", "psd", "exr", "hdr", "heic", "avif", "raw",
    "ico", "safetensors", "ckpt", "pth", "bin", "onnx", "gguf", "json", "yaml", "yml", "toml", "txt", "csv",
    "mp4", "mov", "webm", "mkv", "avi", "wav", "mp3", "flac"})


def _emails(text: str) -> Iterable[Finding]:
    for match in _EMAIL.finditer(text):
        if ".." in match.group(0) or match.group(2).lower() in _FILE_EXTENSIONS:
            continue
        yield Finding("email", "email", match.group(0).lower(), match.start(), match.end())


# --- identifiers (python-stdnum) -----------------------------------------------------------------

_GROUP = re.compile(r"[0-9A-Za-z]+")
_JOIN = re.compile(r"[ \t.\-]{1,3}")
_IBAN_HEAD = re.compile(r"[a-z]{2}\d{2}", re.IGNORECASE)
_EU_VAT_PREFIXES = sorted("EL" if cc == "gr" else cc.upper() for cc in eu_vat.MEMBER_STATES)


def _words(*words: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(words) + r")\b")


_ID_WORDS = ("national id", "id number", "identity number", "id no", "personal number", "tax id",
             "tax number", "tin")
_CONTEXT = {
    "us.ssn": _words("ssn", "social security", *_ID_WORDS),
    "nl.bsn": _words("bsn", "burgerservicenummer", "sofi", "sofinummer", *_ID_WORDS),
    "pt.nif": _words("nif", "contribuinte", *_ID_WORDS),
    "de.idnr": _words("idnr", "steuer ?-?id", "steuer ?-?identifikationsnummer", "identifikationsnummer",
                      *_ID_WORDS),
    "vat": _words("vat", "tva", "btw", "iva", "mwst", "ust", "ust ?-?id(?:nr)?", "ustid(?:nr)?", "moms",
                  "alv", "dic", "nip", "pvn", "pdv", "kmkr", "afm", "fpa", "p ?\\. ?iva"),
}
_PHONE_WORDS = _words("phone", "tel", "telephone", "call", "mobile", "cell", "cellphone", "whatsapp", "fax",
                      "sms", "text me", "ring", "contact", "telefon", "telefono", "telefone", "portable",
                      "handy", "movil", "gsm")

_NINO_BAD_FIRST, _NINO_BAD_SECOND = set("DFIQUV"), set("DFIOQUV")
_NINO_BAD_PAIRS = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}


def _nino_valid(number: str) -> bool:
    """HMRC's allocation rules (a NINO has no check digit): prefix letters and the A-D suffix."""
    return (number[0] not in _NINO_BAD_FIRST and number[1] not in _NINO_BAD_SECOND
            and number[:2] not in _NINO_BAD_PAIRS)


_CARD_NETWORKS = (  # (issuer prefixes as ranges of first digits, card lengths, network)
    ((("4", "4"),), (16, 19), "visa"),
    ((("51", "55"), ("2221", "2720")), (16,), "mastercard"),
    ((("34", "34"), ("37", "37")), (15,), "amex"),
    ((("6011", "6011"), ("644", "649"), ("65", "65")), (16, 17, 18, 19), "discover"),
    ((("3528", "3589"),), (16, 17, 18, 19), "jcb"),
    ((("300", "305"), ("36", "36"), ("38", "39")), (14, 15, 16, 17, 18, 19), "diners"),
    ((("62", "62"),), (16, 17, 18, 19), "unionpay"),
    ((("50", "50"), ("56", "58"), ("6", "6")), (16, 17, 18, 19), "maestro"),
)


def _card_network(number: str) -> str | None:
    """The network whose issuer prefixes and lengths fit ``number`` (13-digit cards are no longer
    issued, and a 13-digit EAN barcode passes Luhn often enough to matter)."""
    for ranges, lengths, network in _CARD_NETWORKS:
        if len(number) in lengths and any(lo <= number[:len(lo)] <= hi for lo, hi in ranges):
            return network
    return None


def _card_valid(number: str) -> bool:
    return _card_network(number) is not None and luhn.is_valid(number)


@dataclass(frozen=True)
class _Format:
    kind: str
    name: str
    shape: re.Pattern[str]
    check: Callable[[str], bool]
    # "always"; "context": a keyword before it; "grouped": written in groups or a keyword;
    # "ssn": written 3-2-4 or a keyword; "attached": country prefix in the same group or a keyword.
    rule: str = "always"


def _format(kind: str, name: str, shape: str, check: Callable[[str], bool], rule: str = "always") -> _Format:
    return _Format(kind, name, re.compile(shape), check, rule)


_FORMATS = (  # in order of preference for one candidate
    _format("iban", "iban", r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", iban.is_valid),
    _format("vat", "eu.vat", r"(?:" + "|".join(_EU_VAT_PREFIXES) + r")[0-9A-Z]{2,13}", eu_vat.is_valid, "attached"),
    _format("vat", "gb.vat", r"GB\d{9}(?:\d{3})?", gb_vat.is_valid, "attached"),
    _format("payment_card", "card", r"[2-6]\d{13,18}", _card_valid),
    _format("national_id", "fr.nir", r"[1-478]\d{4}(?:\d\d|2A|2B)\d{8}", fr_nir.is_valid),
    _format("national_id", "it.codicefiscale", r"[A-Z]{6}[0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{2}[A-Z]"
            r"[0-9LMNPQRSTUV]{3}[A-Z]", it_cf.is_valid),
    _format("national_id", "es.dni", r"\d{8}[A-Z]", es_dni.is_valid),
    _format("national_id", "es.nie", r"[XYZ]\d{7}[A-Z]", es_nie.is_valid),
    _format("national_id", "gb.nino", r"[A-Z]{2}\d{6}[A-D]", _nino_valid),
    _format("national_id", "be.nn", r"\d{11}", be_nn.is_valid),
    _format("national_id", "de.idnr", r"[1-9]\d{10}", de_idnr.is_valid, "grouped"),
    _format("national_id", "us.ssn", r"\d{9}", us_ssn.is_valid, "ssn"),
    _format("national_id", "nl.bsn", r"\d{9}", nl_bsn.is_valid, "context"),
    _format("national_id", "pt.nif", r"\d{9}", pt_nif.is_valid, "context"),
)


@dataclass
class _Window:
    text: str
    groups: list[re.Match[str]]  # the groups of the candidate

    def context(self, words: re.Pattern[str]) -> bool:
        start = self.groups[0].start()
        return words.search(self.text[max(0, start - _CONTEXT_CHARS):start].lower()) is not None

    def allows(self, fmt: _Format) -> bool:
        if fmt.rule == "always":
            return True
        if fmt.rule == "grouped" and len(self.groups) > 1:
            return True
        if fmt.rule == "ssn" and [len(g.group()) for g in self.groups] == [3, 2, 4]:
            return True
        if fmt.rule == "attached" and len(self.groups[0].group()) > 2:
            return True
        return self.context(_CONTEXT["vat" if fmt.kind == "vat" else fmt.name])


def _chunks(text: str) -> Iterable[list[re.Match[str]]]:
    """Runs of groups that one candidate may span (see the module docstring)."""
    chunk: list[re.Match[str]] = []
    for match in _GROUP.finditer(text):
        group = match.group()
        if chunk and not _JOIN.fullmatch(text, chunk[-1].end(), match.start()):
            yield chunk
            chunk = []
        if group.isalpha() and len(group) >= 3:
            if len(group) == 4 and any(_IBAN_HEAD.match(m.group()) for m in chunk):  # a bank code
                chunk.append(match)
                continue
            if chunk:
                yield chunk
            chunk = []
            continue
        chunk.append(match)
    if chunk:
        yield chunk


def _identify(window: _Window, compact: str) -> _Format | None:
    for fmt in _FORMATS:
        if fmt.shape.fullmatch(compact) and fmt.check(compact) and window.allows(fmt):
            return fmt
    return None


def _identifiers(text: str) -> Iterable[Finding]:
    for chunk in _chunks(text):
        digits = [sum(ch.isdigit() for ch in m.group()) for m in chunk]
        i = 0
        while i < len(chunk):
            if chunk[i].start() > 0 and text[chunk[i].start() - 1] == "+":  # a phone's country code
                i += 1
                continue
            best: tuple[int, _Format, str] | None = None
            compact, count = "", 0
            for j in range(i, len(chunk)):
                compact += chunk[j].group().upper()
                count += digits[j]
                if len(compact) > _MAX_COMPACT:
                    break
                if count >= _MIN_DIGITS:
                    fmt = _identify(_Window(text, chunk[i:j + 1]), compact)
                    if fmt is not None:
                        best = (j, fmt, compact)
            if best is None:
                i += 1
                continue
            j, fmt, compact = best
            name = (_card_network(compact) or fmt.name) if fmt.kind == "payment_card" else fmt.name
            yield Finding(fmt.kind, name, compact, chunk[i].start(), chunk[j].end())
            i = j + 1


# --- phone numbers (phonenumbers) ----------------------------------------------------------------


# Where a phone number may be: a digit run with phone punctuation. The matcher is costly (about
# 0.1 ms a region for each run), so it reads only runs that could give an accepted number, with one
# character either side for its own checks.
_PHONE_SPAN = re.compile(r"(?:\+[ \t]?|\()?\d[\d \t()\-./]*\d\)?")
_DATE = re.compile(r"\d{1,4}([-./])\d{1,2}\1\d{1,4}")
_MIN_PHONE_DIGITS = 7
_INTERNATIONAL = {phonenumbers.CountryCodeSource.FROM_NUMBER_WITH_PLUS_SIGN,
                  phonenumbers.CountryCodeSource.FROM_NUMBER_WITH_IDD}


def _trunk_zero(region: str) -> bool:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    return metadata is not None and metadata.national_prefix == "0"


def _written_as_phone(raw: str, region: str) -> bool:
    """Whether a number in national format is written like a phone number (see the docstring)."""
    return any(ch in raw for ch in "()-.") or (_trunk_zero(region) and raw.lstrip("(")[:1] == "0")


def _phones(text: str, regions: tuple[str, ...]) -> Iterable[Finding]:
    seen: set[tuple[int, int]] = set()
    for span in _PHONE_SPAN.finditer(text):
        run = span.group()
        if sum(map(str.isdigit, run)) < _MIN_PHONE_DIGITS or _DATE.fullmatch(run):
            continue
        keyword = _PHONE_WORDS.search(text[max(0, span.start() - _CONTEXT_CHARS):span.start()].lower())
        tried = regions
        if not (keyword or "+" in run or any(ch in run for ch in "()-.")):
            if not run.startswith("0"):
                continue  # no number in it could be accepted: only a trunk 0 is left to look for
            tried = tuple(r for r in regions if _trunk_zero(r))
        offset = max(span.start() - 1, 0)
        snippet = text[offset:span.end() + 1]
        for region in tried:
            for match in phonenumbers.PhoneNumberMatcher(snippet, region, leniency=phonenumbers.Leniency.VALID):
                start, end = offset + match.start, offset + match.end
                if (start, end) in seen:
                    continue
                if any(ch.isdigit() for ch in text[span.start():start]):
                    continue  # a number is read only at the start of its run of digits
                source = phonenumbers.parse(match.raw_string, region, keep_raw_input=True).country_code_source
                if not (source in _INTERNATIONAL or keyword or _written_as_phone(match.raw_string, region)):
                    continue
                seen.add((start, end))
                number = match.number
                where = phonenumbers.region_code_for_number(number)
                fmt = where if where and where != "001" else f"+{number.country_code}"
                value = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
                yield Finding("phone", fmt, value, start, end)


# --- the scanner ---------------------------------------------------------------------------------

# A seed: one unbroken run of digits right after the word (``seed 5839274619283746``, ``seed: 42``).
# A long random seed passes Luhn one time in ten; a number written in groups after it is still read.
_SEED = re.compile(r"\bseed\s*[:=#]?\s*(\d+)(?![\d \t.\-]*\d)", re.IGNORECASE)


def _seeds(text: str) -> Iterable[Finding]:
    for match in _SEED.finditer(text):
        yield Finding("seed", "seed", "", match.start(1), match.end(1))


def _blank(text: str, spans: Iterable[Finding]) -> str:
    """``text`` with the spans replaced by a character that separates and matches nothing."""
    chars = list(text)
    for finding in spans:
        chars[finding.start:finding.end] = "#" * (finding.end - finding.start)
    return "".join(chars)


def unknown_regions(regions: Iterable[str]) -> list[str]:
    """The codes in ``regions`` that are no phonenumbers region (for the policy-data shape check)."""
    return sorted(set(regions) - phonenumbers.SUPPORTED_REGIONS)


@dataclass(frozen=True)
class Scanner:
    """Finds personal data; one per policy-data revision (``from_data``)."""

    phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS
    fold: Fold = _basic_fold

    @classmethod
    def from_data(cls, data: Mapping[str, Any], fold: Fold = _basic_fold) -> Scanner:
        """From ``policy_data.prompt.personal_data``; unknown region codes are ignored."""
        regions = data.get("phone_regions", DEFAULT_PHONE_REGIONS)
        unknown = set(unknown_regions(regions))
        return cls(tuple(r for r in regions if r not in unknown), fold)

    def scan(self, text: str) -> list[Finding]:
        """Every finding in ``text``, in order, spans in ``text``'s own indices."""
        scanned, origin = _folded(text, self.fold)
        has_at = "@" in scanned
        if not has_at and sum(map(str.isdigit, scanned)) < _MIN_DIGITS:
            return []
        found = list(_emails(scanned)) if has_at else []
        rest = _blank(scanned, [*found, *_seeds(scanned)])
        ids = list(_identifiers(rest))
        found += ids
        found += _phones(_blank(rest, ids), self.phone_regions)
        found.sort(key=lambda f: f.start)
        if origin is None:
            return found
        return [Finding(f.kind, f.format, f.value, origin[f.start], origin[f.end - 1] + 1) for f in found]

    def section(self, text: str) -> dict[str, list[dict[str, str]]]:
        """The ``personal_data`` section of the prompt policy input; a value found twice is listed once."""
        unique = {(f.kind, f.format, f.value): f for f in self.scan(text)}
        return {"findings": [f.as_input() for f in unique.values()]}

    def mask(self, text: str) -> str:
        """``text`` with each finding replaced by ``[<kind>]``."""
        out = text
        for finding in reversed(self.scan(text)):
            out = f"{out[:finding.start]}[{finding.kind}]{out[finding.end:]}"
        return out
