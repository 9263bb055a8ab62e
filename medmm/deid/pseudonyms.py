"""Keyed (HMAC-SHA256) pseudonyms, UIDs and per-patient date shifts; the secret key file.

Standard library only, so any part of medmm can import it cheaply. The same key and the same
source value always give the same pseudonym (labels join images, notes join images); without the
key nobody can recompute or reverse one. The key never appears in a repr, a log or an output.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from medmm.errors import MedmmError

__all__ = ["DEFAULT_KEY_FILE", "KEY_ENV", "Pseudonymizer", "hmac_pseudonym", "load_key", "new_key_file"]

KEY_ENV = "MEDMM_DEID_KEY_FILE"
DEFAULT_KEY_FILE = Path("~/.config/medmm/deid.key")
_KEY_BYTES = 32
SHIFT_WEEKS = (4, 156)  # dates move back 4 weeks to 3 years, whole weeks (weekday kept)


def hmac_pseudonym(key: bytes, value: str, namespace: str = "patient", length: int = 16) -> str:
    """Hex HMAC-SHA256 of ``value`` under ``namespace`` (domain separation), ``length`` hex chars.

    >>> hmac_pseudonym(b"k" * 32, "12345")[:4] == hmac_pseudonym(b"k" * 32, "12345")[:4]
    True
    """
    if len(key) < 16:
        raise ValueError("HMAC key must be at least 16 bytes")
    mac = hmac.new(key, f"{namespace}\x1f{value}".encode(), hashlib.sha256).hexdigest()
    return mac[:length]


class Pseudonymizer:
    """Every keyed replacement medmm deid makes: patient ids, file names, UIDs, date shifts."""

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise MedmmError("de-identification key is too short (need at least 16 bytes)")
        self._key = key

    def __repr__(self) -> str:  # never show the key
        return "Pseudonymizer(key=<hidden>)"

    def patient_id(self, value: str) -> str:
        """``value`` (a source patient id, stripped) -> ``"P" + 16 hex``; empty stays empty."""
        value = str(value).strip()
        return "P" + hmac_pseudonym(self._key, value, "patient") if value else ""

    def token(self, value: str, namespace: str, length: int = 16) -> str:
        """A keyed token for anything else (file names, accession numbers)."""
        return hmac_pseudonym(self._key, value, namespace, length)

    def uid(self, value: str) -> str:
        """A new UID under the ``2.25`` (UUID-derived) root: 128 keyed bits as a decimal integer."""
        digest = hmac.new(self._key, f"uid\x1f{value.strip()}".encode(), hashlib.sha256).digest()
        return "2.25." + str(int.from_bytes(digest[:16], "big"))

    def date_shift_days(self, patient: str) -> int:
        """Days (negative, whole weeks) to add to every date of ``patient`` (a raw source id)."""
        lo, hi = SHIFT_WEEKS
        h = int(hmac_pseudonym(self._key, str(patient).strip(), "dateshift", 12), 16)
        return -7 * (lo + h % (hi - lo + 1))

    def shift_date(self, value: dt.date, patient: str) -> dt.date:
        return value + dt.timedelta(days=self.date_shift_days(patient))


def _check_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise MedmmError(f"key file {path} is readable by others (mode {mode:04o}); run: chmod 600 {path}")


def new_key_file(path: Path) -> Path:
    """Create ``path`` holding a fresh random key, mode 0600 (never overwrites an existing file)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise MedmmError(f"key file {path} already exists; it is never overwritten") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(_KEY_BYTES) + "\n")
    os.chmod(path, 0o600)
    return path


def load_key(path: Path | None = None, *, create: bool = False) -> tuple[bytes, Path, bool]:
    """Read the key; returns ``(key, path, created)``.

    ``path`` given (or ``$MEDMM_DEID_KEY_FILE`` set) and missing is an error unless ``create``:
    a silently new key would break every join with earlier outputs. No path at all means the
    per-user default ``~/.config/medmm/deid.key``, created (0600) on first use.
    """
    created = False
    if path is None and os.environ.get(KEY_ENV):
        path = Path(os.environ[KEY_ENV])
    if path is None:
        path = DEFAULT_KEY_FILE.expanduser()
        create = True
    path = Path(path).expanduser()
    if not path.exists():
        if not create:
            raise MedmmError(f"key file {path} does not exist; pass --create-key to make a new one "
                             "(a new key gives new pseudonyms that will not join earlier outputs)")
        new_key_file(path)
        created = True
    if not path.is_file():
        raise MedmmError(f"key file {path} is not a file")
    _check_mode(path)
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise MedmmError(f"key file {path} is not a medmm key (expected hex text)") from None
    if len(key) < 16:
        raise MedmmError(f"key file {path} holds a key that is too short (need at least 16 bytes)")
    return key, path, created
