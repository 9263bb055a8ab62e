"""Path components that identify a patient, and the keyed tokens that replace them in outputs.

A PACS export is often laid out as ``PATIENTID/STUDY/...`` or ``2004-01-19_CT/``; a prediction
keyed by the source path would then carry the patient id or a date. :func:`identifier_parts`
finds, from one file's own header, which components of its relative path equal its PatientID,
AccessionNumber, a form of its PatientName (``JSMITH``, ``SMITHJ``, ``JOHNSMITH``...) or hold a
date (any common format); :func:`public_path` replaces those components by keyed tokens
(``T`` + 12 hex, HMAC-SHA256 under :func:`path_key`). Reading files always uses the real path;
every id column, report and log line uses the public one.

The key is the de-identification key (``$MEDMM_DEID_KEY_FILE``, else ``~/.config/medmm/deid.key``,
the key ``medmm deid`` uses), created there (mode 0600) the first time a path needs a token, exactly
as ``medmm deid`` creates it on first use: run, predict, evaluate, explain and export then give the
same token for the same folder, the key's holder can recompute a token from a source id, and no run
directory holds the key. When the key cannot be read or created, a random key for this process is
used (tokens are still safe, but do not join across commands) and a warning says so.
Standard library only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["date_kinds", "identifier_parts", "institution_forms", "name_forms", "part_matches", "path_key",
           "public_name", "public_path", "token"]

_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec|january|february|march|april|june|july|" \
          "august|september|october|november|december"
_SEP = r"[-_./ ]"
# (kind, pattern); each candidate is then checked to be a real calendar date (1900-2099)
_DATE_RES = [
    ("yyyymmdd", re.compile(r"(?<!\d)((?:19|20)\d\d)(\d\d)(\d\d)(?!\d)")),
    ("yyyy-mm-dd", re.compile(rf"(?<!\d)((?:19|20)\d\d){_SEP}(\d\d?){_SEP}(\d\d?)(?!\d)")),
    ("dd-mm-yyyy", re.compile(rf"(?<!\d)(\d\d?){_SEP}(\d\d?){_SEP}((?:19|20)\d\d)(?!\d)")),
    ("ddmmyyyy", re.compile(r"(?<!\d)(\d\d)(\d\d)((?:19|20)\d\d)(?!\d)")),
    ("dd-mon-yyyy", re.compile(rf"(?<![a-z\d])(\d\d?){_SEP}?({_MONTHS}){_SEP}?((?:19|20)\d\d)(?!\d)", re.I)),
    ("mon-dd-yyyy", re.compile(rf"(?<![a-z])({_MONTHS}){_SEP}?(\d\d?),?{_SEP}?((?:19|20)\d\d)(?!\d)", re.I)),
]
_MONTH_NUM = {m: i for i, names in enumerate(
    (("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"), ("may",), ("jun", "june"),
     ("jul", "july"), ("aug", "august"), ("sep", "sept", "september"), ("oct", "october"),
     ("nov", "november"), ("dec", "december")), 1) for m in names}
_TOKEN = re.compile(r"[^\W_]+")
GENERIC_WORDS = frozenset({"THE", "OF", "AND", "HOSPITAL", "MEDICAL", "CENTER", "CENTRE", "CLINIC",
                           "UNIVERSITY", "GENERAL", "HEALTH", "HEALTHCARE", "SAINT", "ST", "MED", "CTR",
                           "INSTITUTE", "RADIOLOGY",
                           "IMAGING", "DEPARTMENT", "DEPT", "REGIONAL", "COMMUNITY", "MEMORIAL", "CHILDREN",
                           "CHILDRENS", "NATIONAL", "CITY", "COUNTY", "STATE", "PHILIPS", "SIEMENS", "GE",
                           "TOSHIBA"})


def _valid(y: int, m: int, d: int) -> bool:
    try:
        return 1900 <= y <= 2099 and dt.date(y, m, d) is not None
    except ValueError:
        return False


def date_kinds(text: str) -> list[str]:
    """The date formats found in ``text`` (``"yyyymmdd"``, ``"dd-mm-yyyy"``...), each a real date;
    ``mm/dd/yyyy`` counts as ``dd-mm-yyyy`` when either reading is valid."""
    found: list[str] = []
    for kind, rx in _DATE_RES:
        for m in rx.finditer(text):
            a, b, c = m.groups()
            if kind in ("yyyymmdd", "yyyy-mm-dd"):
                ok = _valid(int(a), int(b), int(c))
            elif kind in ("dd-mm-yyyy", "ddmmyyyy"):
                ok = _valid(int(c), int(b), int(a)) or _valid(int(c), int(a), int(b))
            elif kind == "dd-mon-yyyy":
                ok = _valid(int(c), _MONTH_NUM[b.lower()], int(a))
            else:
                ok = _valid(int(c), _MONTH_NUM[a.lower()], int(b))
            if ok:
                found.append(kind)
                break
    return found


def _norm_tokens(text: str) -> list[str]:
    return [t.casefold() for t in _TOKEN.findall(text)]


def name_forms(person_name: str) -> set[str]:
    """Lower-case forms of a DICOM PN (``Family^Given^Middle``) that people type into folder names:
    the family name, initial + surname, surname + initial, given + family and family + given, all
    without spaces (``jsmith``, ``smithj``, ``johnsmith``, ``smithjohn``). Parts under 2 letters
    alone are not forms."""
    groups = str(person_name or "").split("=")[0].split("^")
    family = "".join(_norm_tokens(groups[0])) if groups else ""
    given = "".join(_norm_tokens(groups[1])) if len(groups) > 1 else ""
    if not family and not given:  # "John Smith" without carets: last word is the family name
        words = _norm_tokens(str(person_name or ""))
        if len(words) >= 2:
            family, given = words[-1], words[0]
        elif words:
            family = words[0]
    forms: set[str] = set()
    if len(family) >= 3:
        forms.add(family)
    if given and family:
        forms |= {given[0] + family, family + given[0], given + family, family + given}
    if len(given) >= 3:
        forms.add(given)
    return {f for f in forms if len(f) >= 3}


def institution_forms(name: str) -> set[str]:
    """Lower-case, space-free prefixes of an institution name of two words or more ("stelsewhere"
    for "St Elsewhere Hospital"), plus its first word alone when it is 5+ letters and not a generic
    word ("baptist" for "BAPTIST MED CTR")."""
    words = _norm_tokens(name)
    forms = {"".join(words[:k]) for k in range(2, len(words) + 1)}
    if words and len(words[0]) >= 5 and words[0].upper() not in GENERIC_WORDS:
        forms.add(words[0])
    return {f for f in forms if len(f) >= 5}


def part_matches(part: str, forms: Iterable[str]) -> bool:
    """Whether a path component holds one of ``forms`` as its whole text or as a run of 1-3 of its
    words joined ("J_Smith-CT" holds ``jsmith``), ignoring case and punctuation."""
    forms = set(forms)
    if not forms:
        return False
    words = _norm_tokens(PurePosixPath(part).stem if "." in part else part)
    if "".join(words) in forms:
        return True
    return any("".join(words[i:i + k]) in forms for k in (1, 2, 3) for i in range(len(words)))


def identifier_parts(rel_path: str, ds: Any) -> tuple[int, ...]:
    """Indexes of the components of ``rel_path`` (the file name included) that equal this file's
    PatientID / AccessionNumber / OtherPatientIDs, hold a form of its PatientName, or hold a date."""
    def text(keyword: str) -> str:
        value = ds.get(keyword, "")
        return "" if value is None else str(value).strip()

    ids = {v.casefold() for v in (text("PatientID"), text("AccessionNumber"), text("OtherPatientIDs")) if v}
    forms = name_forms(text("PatientName"))
    hits = []
    for i, part in enumerate(PurePosixPath(rel_path).parts):
        stem = PurePosixPath(part).stem if i == len(PurePosixPath(rel_path).parts) - 1 else part
        if part.casefold() in ids or stem.casefold() in ids or part_matches(part, forms) or date_kinds(part) \
                or any(t in ids for t in _norm_tokens(part) if len(t) >= 4):
            hits.append(i)
    return tuple(hits)


@lru_cache(maxsize=1)
def path_key() -> bytes:
    """The de-identification key (see the module docstring), created 0600 when absent; a random
    per-process key when it cannot be used."""
    import logging

    path = Path(os.environ.get("MEDMM_DEID_KEY_FILE") or "~/.config/medmm/deid.key").expanduser()
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32) + "\n")
            except FileExistsError:
                pass  # another process made it first: read theirs
        if not (path.stat().st_mode & 0o077):
            key = bytes.fromhex(path.read_text(encoding="ascii").strip())
            if len(key) >= 16:
                return key
    except (OSError, ValueError):
        pass
    logging.getLogger("medmm").warning(
        "path tokens use a random per-process key: the key file %s is missing, unreadable or readable by "
        "others (chmod 600 it); tokens will not match other commands' tokens", path)
    return secrets.token_bytes(32)


def public_name(name: str, dicom_bytes: bytes) -> str:
    """A client's file name for a DICOM file given as bytes (``medmm serve`` uploads), tokenised when
    it equals or holds the file's PatientID / AccessionNumber / a PatientName form or a date."""
    from io import BytesIO

    import pydicom

    try:
        ds = pydicom.dcmread(BytesIO(dicom_bytes), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - unreadable: only the date rule applies
        return public_path(name, (0,)) if date_kinds(name) else name
    return public_path(name, identifier_parts(name, ds))


def token(value: str, key: bytes | None = None) -> str:
    """``T`` + 12 hex of HMAC-SHA256(key, "path" + value): the same value, the same token."""
    mac = hmac.new(key or path_key(), f"path\x1f{value}".encode(), hashlib.sha256).hexdigest()
    return "T" + mac[:12]


def public_path(rel_path: str, parts: tuple[int, ...], key: bytes | None = None) -> str:
    """``rel_path`` with the components at ``parts`` replaced by keyed tokens (a file name keeps
    its suffix). Each token covers the path up to that component, so one folder gives one token."""
    if not parts:
        return rel_path
    p = PurePosixPath(rel_path).parts
    out = list(p)
    for i in parts:
        if i < len(p):
            prefix = "/".join(p[: i + 1])
            suffix = PurePosixPath(p[i]).suffix if i == len(p) - 1 else ""
            out[i] = token(prefix, key) + (suffix if len(suffix) <= 5 else "")
    return "/".join(out)
