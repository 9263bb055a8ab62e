"""Rule-based scrubbing of identifiers in clinical free text, with typed placeholders.

Standard library only (``re``): every rule is a reviewed regular expression in this file. What it
finds: dates (shifted by a keyed per-patient offset when asked, else ``[DATE]``), phone / fax
numbers, e-mail addresses, URLs, MRN / account / SSN-like numbers (``[ID]``), ages over 89
(``[AGE]``), street addresses, P.O. boxes and "City, ST" (``[ADDRESS]``), ZIP codes (``[ZIP]``),
and names (``[NAME]``) that are in a supplied list / the CSV's name columns, follow a title
(Dr., Mr., Mrs., Ms.), a "Patient:" / "signed by" cue, or precede a degree (", MD"). Names that
are none of these are not caught (see README).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["KINDS", "NameMatcher", "Span", "find_spans", "literal_matcher", "scrub"]

KINDS = ("DATE", "PHONE", "EMAIL", "URL", "ID", "AGE", "ADDRESS", "ZIP", "NAME")
_PRIORITY = {k: i for i, k in enumerate(("EMAIL", "URL", "ID", "PHONE", "DATE", "ADDRESS", "ZIP", "AGE",
                                          "NAME"))}


@dataclass(frozen=True)
class Span:
    """One identifier found in the text: ``text[start:end]`` of type ``kind``."""

    start: int
    end: int
    kind: str


# ---------------------------------------------------------------- dates
_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december"]
_MON = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sept?(?:ember)?|" \
       r"Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
_ORD = r"(?:st|nd|rd|th)?"
_DATE_ISO = re.compile(r"(?<![\w./-])((?:19|20)\d\d)([-/.])(\d{1,2})\2(\d{1,2})(?![\w/-]|\.\d)")
_DATE_COMPACT = re.compile(r"(?<![\w.-])((?:19|20)\d\d)(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?![\w-]|\.\d)")
_DATE_NUM = re.compile(r"(?<![\w./-])(\d{1,2})([-/.])(\d{1,2})\2(\d{4}|\d{2})(?![\w/-]|\.\d)")
_DATE_MDY = re.compile(rf"\b({_MON})\.?\s+(\d{{1,2}}){_ORD}(?:,\s*|\s+)((?:19|20)\d\d)\b", re.I)
_DATE_DMY = re.compile(rf"\b(\d{{1,2}}){_ORD}\s+(?:of\s+)?({_MON})\.?,?\s+((?:19|20)\d\d)\b", re.I)
_DATE_MY = re.compile(rf"\b({_MON})\.?,?\s+((?:19|20)\d\d)\b", re.I)
_DATE_MD = re.compile(rf"\b({_MON})\.?\s+(\d{{1,2}}){_ORD}\b(?!\s*(?:mg|ml|cm|mm|%))", re.I)
_DATE_DM = re.compile(rf"\b(\d{{1,2}}){_ORD}\s+(?:of\s+)?({_MON})\b", re.I)


_BIRTH_CUE = re.compile(r"(?:\bDOB|\bD\.O\.B\.?|date\s+of\s+birth|\bborn(?:\s+on)?|birth\s?date)\W{0,3}$",
                        re.I)


def _month(name: str) -> int:
    name = name.lower().rstrip(".")[:3]
    return next(i + 1 for i, m in enumerate(_MONTHS) if m.startswith(name))


def _mk(y: int, m: int, d: int) -> dt.date | None:
    try:
        return dt.date(y, m, d)
    except ValueError:
        return None


def _year4(y: str) -> int:
    v = int(y)
    return v if len(y) == 4 else (2000 + v if v < 50 else 1900 + v)


def _month_name(m: int, like: str) -> str:
    full = _MONTHS[m - 1].capitalize()
    if len(like.rstrip(".")) <= 4 and like.lower().rstrip(".") != full.lower():
        out = full[:3] if m != 9 or len(like.rstrip(".")) == 3 else "Sept"
        return out + ("." if like.endswith(".") else "")
    return full


def _ordinal(d: int, had: bool) -> str:
    if not had:
        return str(d)
    suffix = "th" if 10 <= d % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
    return f"{d}{suffix}"


def _dates(text: str, shift: int | None) -> list[tuple[Span, str]]:
    """(span, replacement) for each date; shifted and re-formatted alike when ``shift`` is given."""
    out: list[tuple[Span, str]] = []

    def add(m: re.Match[str], date: dt.date | None, fmt: Callable[[dt.date], str] | None) -> None:
        if date is None and fmt is not None:
            return
        rep = "[DATE]"
        birth = _BIRTH_CUE.search(text[max(0, m.start() - 24):m.start()])
        if shift is not None and date is not None and fmt is not None and not birth:
            rep = fmt(date + dt.timedelta(days=shift))
        out.append((Span(m.start(), m.end(), "DATE"), rep))

    for m in _DATE_ISO.finditer(text):
        y, sep, mo, d = m.groups()
        w = (len(mo), len(d))
        add(m, _mk(int(y), int(mo), int(d)),
            lambda x, sep=sep, w=w: f"{x.year}{sep}{x.month:0{w[0]}d}{sep}{x.day:0{w[1]}d}")
    for m in _DATE_COMPACT.finditer(text):
        add(m, _mk(int(m[1]), int(m[2]), int(m[3])), lambda x: x.strftime("%Y%m%d"))
    for m in _DATE_NUM.finditer(text):
        a, sep, b, y = m.groups()
        if sep == "." and len(y) == 2:
            continue  # 1.5.12 is more likely a version or a dose than a date
        mo, d = (int(a), int(b)) if int(a) <= 12 else (int(b), int(a))
        dmy = int(a) > 12
        w = (len(a), len(b))

        def fmt(x: dt.date, sep=sep, w=w, y=y, dmy=dmy) -> str:
            first, second = (x.day, x.month) if dmy else (x.month, x.day)
            yy = f"{x.year}" if len(y) == 4 else f"{x.year % 100:02d}"
            return f"{first:0{w[0]}d}{sep}{second:0{w[1]}d}{sep}{yy}"

        add(m, _mk(_year4(y), mo, d), fmt)
    for m in _DATE_MDY.finditer(text):
        mon, d, y = m.groups()
        had = bool(re.search(r"\d(?:st|nd|rd|th)", m[0], re.I))
        comma = "," in m[0]
        dot = "." if text[m.end(1):m.end(1) + 1] == "." else ""
        add(m, _mk(int(y), _month(mon), int(d)),
            lambda x, mon=mon + dot, had=had, comma=comma:
            f"{_month_name(x.month, mon)} {_ordinal(x.day, had)}{',' if comma else ''} {x.year}")
    for m in _DATE_DMY.finditer(text):
        d, mon, y = m.groups()
        had = bool(re.search(r"\d(?:st|nd|rd|th)", m[0], re.I))
        of = " of " if re.search(r"\sof\s", m[0], re.I) else " "
        add(m, _mk(int(y), _month(mon), int(d)),
            lambda x, mon=mon, had=had, of=of:
            f"{_ordinal(x.day, had)}{of}{_month_name(x.month, mon)} {x.year}")
    for m in _DATE_MY.finditer(text):
        mon, y = m.groups()
        add(m, _mk(int(y), _month(mon), 15),
            lambda x, mon=mon: f"{_month_name(x.month, mon)} {x.year}")
    for m in list(_DATE_MD.finditer(text)) + list(_DATE_DM.finditer(text)):
        if re.search(r"\bmay\b", m[0]):
            continue  # lower-case "may 3" is a verb, not a date
        out.append((Span(m.start(), m.end(), "DATE"), "[DATE]"))  # no year: cannot shift, replace
    return out


# ---------------------------------------------------------------- contact, ids, ages, addresses
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"')\]]+", re.I)
_PHONE = re.compile(
    r"(?<![\w+/.-])(?:(?:\+?1[\s.-]?)?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]\d{4}"
    r"|\+\d{1,3}[\s.-]?\(?\d{1,4}\)?(?:[\s.-]?\d{2,4}){2,4})"
    r"(?:\s*(?:x|ext\.?|extension)\s*\d{1,5})?(?![\w/-]|\.\d)", re.I)
_PHONE_LOCAL = re.compile(r"\b(?i:call|phone|tel\.?|telephone|fax|cell|mobile|pager|beeper|"
                          r"contact[^.\n]{0,30}?\bat)"
                          r"\s*:?\s*(?P<p>\d{3}[-.\s]\d{4})(?![\w/-]|\.\d)")
_SSN = re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])")
_ID_CUE = re.compile(
    r"\b(?:MRN|MR\s?#|MR\s?No\.?|medical\s+record(?:\s+(?:number|no\.?|#))?|acct\.?|account|"
    r"patient\s+id|pt\.?\s+id|member\s+id|insurance\s+id|policy|encounter|visit|CSN|FIN|SSN|"
    r"social\s+security|accession|acc\.?|health\s+plan|licen[cs]e|certificate|serial|device\s+id|"
    r"specimen|ID)"
    r"(?:\s+(?:number|no\.?|num\.?|#))?\s*(?:[:#=]|is|was)?\s*#?\s*"
    r"(?P<id>(?=[A-Z0-9-]*\d[A-Z0-9-]*\d[A-Z0-9-]*\d)[A-Z]{0,4}-?\d[A-Z0-9-]{2,}(?<!-))", re.I)
_LONG_NUMBER = re.compile(r"(?<![\w.,/-])(?:[A-Z]{1,3}-?)?\d{7,}(?![\w/-]|[.,]\d)")
_AGE = [
    re.compile(r"\b(\d{2,3})(?=\s*-?\s*(?:years?|yrs?|y)\.?[\s-]*old\b)", re.I),
    re.compile(r"\b(\d{2,3})(?=\s*(?:yo|y/o|y\.o\.|yrs?\b|years?\b)(?!\s*(?:ago|of|since|history)))", re.I),
    re.compile(r"(?<=\bage\s)(\d{2,3})\b|(?<=\bage:\s)(\d{2,3})\b|(?<=\baged\s)(\d{2,3})\b", re.I),
    re.compile(r"\b(\d{2,3})(?=\s*-?\s*year-old\b)", re.I),
]
_STATES = ("AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ "
           "NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY").split()
_STATE = "(?:" + "|".join(_STATES) + ")"
_STREET = re.compile(
    r"\b\d{1,6}\s+(?:[NSEW]\.?\s+)?(?:[A-Z][A-Za-z'-]+\.?\s+){1,3}"
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|"
    r"Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Trail|Trl)\b\.?"
    r"(?:,?\s*(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s*#?\w+)?")
_POBOX = re.compile(r"\bP\.?\s?O\.?\s+Box\s+\d+\b", re.I)
_CITY_STATE_ZIP = re.compile(
    rf"\b(?P<city>(?:[A-Z][a-z]+\s){{0,2}}[A-Z][a-z]+),\s*(?P<state>{_STATE})\b(?:\s+(?P<zip>\d{{5}}(?:-\d{{4}})?))?(?!\w)")
_ZIP = re.compile(rf"(?:\b(?:zip|zip\s?code|postal\s+code)\s*:?\s*|\b{_STATE}\s+)"
                  rf"(?P<zip>\d{{5}}(?:-\d{{4}})?)(?!\w)", re.I)


# ---------------------------------------------------------------- names
_NAME_WORD = r"[A-Z][a-zA-Z'-]+"
_TITLED = re.compile(rf"\b(?:Dr|Drs|Mr|Mrs|Ms|Miss|Mx|Prof|Nurse|Doctor)\.?\s+"
                     rf"(?P<n>(?:[A-Z]\.\s*)?{_NAME_WORD}"
                     rf"(?:\s+(?:[A-Z]\.\s+)?{_NAME_WORD})?)")
_CUED = re.compile(rf"\b(?i:patient(?:\s+name)?|pt|name|signed\s+by|signed|dictated\s+by|transcribed\s+by|"
                   rf"attending|resident|physician|cc|seen\s+by|read\s+by|referred\s+by)\s*:?\s+(?P<n>{_NAME_WORD}"
                   rf"(?:\s+(?:[A-Z]\.\s+)?{_NAME_WORD}){{0,2}})")
_DEGREE = re.compile(rf"(?P<n>\b{_NAME_WORD}\s+(?:[A-Z]\.\s+)?{_NAME_WORD}),?\s+"
                     r"(?:MD|M\.D\.|DO|RN|NP|PA-C|PhD|FRCR)\b")
_NOT_NAMES = {"the", "patient", "history", "left", "right", "chest", "no", "with", "and", "for", "of", "on",
              "in",
              "was", "is", "has", "had", "report", "findings", "impression", "exam", "ct", "mri", "x", "ray",
              "physician", "education", "presents", "states", "denies", "reports", "electronically", "name",
              "information", "instructions", "id", "mrn", "care", "status", "number", "date",
              "dr", "drs", "mr", "mrs", "ms", "miss", "mx", "prof", "doctor", "nurse", "md", "rn"}


def _name_ok(value: str) -> bool:
    words = value.split()
    return bool(words) and words[0].lower() not in _NOT_NAMES


class NameMatcher:
    """Find known names (each word of each supplied name), as written, Title-case or UPPER case.

    Lower-case forms are not matched, so a name that is also a word ("Will", "Hope") is only
    caught where it is capitalised.
    """

    def __init__(self, names: Iterable[str], min_len: int = 2):
        from medmm.deid.matching import ValueIndex

        words: set[str] = set()
        for name in names:
            for w in re.split(r"[\s,^;/]+", str(name or "")):
                w = w.strip(".'\"()")
                if len(w) >= min_len and any(c.isalpha() for c in w) and w.lower() not in _NOT_NAMES:
                    words.update({w, w.title(), w.upper()})
        self.words = words
        self._index = ValueIndex(words, ignore_case=False)

    def __bool__(self) -> bool:
        return bool(self.words)

    def finditer(self, text: str) -> Iterable[tuple[int, int, str]]:
        """``(start, end, word)`` for each whole-word occurrence."""
        return self._index.finditer(text)


def literal_matcher(values: dict[str, str]) -> Callable[[str], list[Span]]:
    """Spans of exact (case-insensitive, token-bounded) occurrences of known values -> their kind."""
    from medmm.deid.matching import ValueIndex

    index = ValueIndex(v for v in values if len(v.strip()) >= 3)
    kinds = {k.strip().casefold(): v for k, v in values.items()}

    def find(text: str) -> list[Span]:
        return [Span(s, e, kinds.get(v.casefold(), "ID")) for s, e, v in index.finditer(text)]

    return find


# ---------------------------------------------------------------- driver
def find_spans(text: str, names: NameMatcher | None = None, shift: int | None = None,
               literals: Callable[[str], list[Span]] | None = None) -> list[tuple[Span, str]]:
    """Every identifier in ``text`` as (span, replacement), non-overlapping, in text order."""
    cands: list[tuple[Span, str]] = []

    def add(kind: str, start: int, end: int, rep: str | None = None) -> None:
        if end > start:
            cands.append((Span(start, end, kind), rep or f"[{kind}]"))

    for m in _EMAIL.finditer(text):
        add("EMAIL", m.start(), m.end())
    for m in _URL.finditer(text):
        end = m.end()
        while end > m.start() and text[end - 1] in ".,;:!?":
            end -= 1
        add("URL", m.start(), end)
    for m in _SSN.finditer(text):
        add("ID", m.start(), m.end())
    for m in _ID_CUE.finditer(text):
        add("ID", m.start("id"), m.end("id"))
    for m in _LONG_NUMBER.finditer(text):
        if not _DATE_COMPACT.fullmatch(m[0]):  # 20081201 alone reads as a date; after "MRN:" as an ID
            add("ID", m.start(), m.end())
    for m in _PHONE.finditer(text):
        add("PHONE", m.start(), m.end())
    for m in _PHONE_LOCAL.finditer(text):
        add("PHONE", m.start("p"), m.end("p"))
    cands.extend(_dates(text, shift))
    for rx in _AGE:
        for m in rx.finditer(text):
            g = next(i for i in range(1, (rx.groups or 0) + 1) if m.group(i) is not None)
            if int(m.group(g)) > 89:
                add("AGE", m.start(g), m.end(g))
    for m in _STREET.finditer(text):
        add("ADDRESS", m.start(), m.end())
    for m in _POBOX.finditer(text):
        add("ADDRESS", m.start(), m.end())
    for m in _CITY_STATE_ZIP.finditer(text):
        if not m["zip"] and (m["state"] in ("MD", "DO", "PA") or m["city"].split()[0].lower() in _NOT_NAMES):
            continue  # "Mary Jones, MD" is a physician, not Maryland
        add("ADDRESS", m.start("city"), m.end("state"))
        if m["zip"]:
            add("ZIP", m.start("zip"), m.end("zip"))
    for m in _ZIP.finditer(text):
        add("ZIP", m.start("zip"), m.end("zip"))
    for rx in (_TITLED, _CUED, _DEGREE):
        for m in rx.finditer(text):
            if _name_ok(m["n"]):
                add("NAME", m.start("n"), m.end("n"))
    if names:
        for start, end, _ in names.finditer(text):
            add("NAME", start, end)
    if literals is not None:
        for span in literals(text):
            add(span.kind, span.start, span.end)
    return _resolve(cands)


def _resolve(cands: list[tuple[Span, str]]) -> list[tuple[Span, str]]:
    """Longest span wins an overlap (then the more specific kind); adjacent names merge."""
    cands.sort(key=lambda c: (-(c[0].end - c[0].start), _PRIORITY.get(c[0].kind, 99), c[0].start))
    taken: list[tuple[Span, str]] = []
    for span, rep in cands:
        if all(span.end <= s.start or span.start >= s.end for s, _ in taken):
            taken.append((span, rep))
    return sorted(taken, key=lambda c: c[0].start)


def scrub(text: str, names: NameMatcher | None = None, shift: int | None = None,
          literals: Callable[[str], list[Span]] | None = None) -> tuple[str, list[Span]]:
    """``text`` with every identifier replaced; also returns the spans (in ``text`` coordinates)."""
    if not text:
        return text, []
    found = find_spans(text, names, shift, literals)
    parts: list[str] = []
    pos = 0
    for span, rep in found:
        parts.append(text[pos:span.start])
        parts.append(rep)
        pos = span.end
    parts.append(text[pos:])
    out = "".join(parts)
    out = re.sub(r"\[NAME\](?:[\s,]+\[NAME\])+", "[NAME]", out)
    return out, [s for s, _ in found]
