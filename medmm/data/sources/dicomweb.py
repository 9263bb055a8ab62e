"""A DICOMweb server (QIDO-RS search, WADO-RS retrieve, STOW-RS store) through ``dicomweb-client``.

The source is spelled ``dicomweb+https://pacs.example/dicom-web?Modality=CR&StudyDate=20240101-20241231``:
the server's DICOMweb root after ``dicomweb+``, and QIDO-RS matching keys (DICOM keywords or
8-digit tags) as the query. Credentials never travel on the command line: a bearer token or basic
credentials come from environment variables or files (:class:`Credentials`); TLS certificates are
verified (a hospital CA bundle through ``MEDMM_DICOMWEB_CA_BUNDLE``). Requests retry with
exponential backoff on connection errors, timeouts, 429 and 5xx. Errors are one line naming the
server (scheme, host, path), never the query, which may hold a patient's name or id.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from medmm.errors import ConfigError, DataError, MedmmError

__all__ = ["PREFIX", "Credentials", "DicomwebError", "DicomwebServer", "DicomwebURL", "InstanceRef",
           "is_dicomweb", "parse_dicomweb"]

PREFIX = "dicomweb+"
ENV_TOKEN = "MEDMM_DICOMWEB_TOKEN"
ENV_TOKEN_FILE = "MEDMM_DICOMWEB_TOKEN_FILE"
ENV_USER = "MEDMM_DICOMWEB_USER"
ENV_PASSWORD = "MEDMM_DICOMWEB_PASSWORD"
ENV_PASSWORD_FILE = "MEDMM_DICOMWEB_PASSWORD_FILE"
ENV_CA_BUNDLE = "MEDMM_DICOMWEB_CA_BUNDLE"
RETRY_STATUS = (429, 500, 502, 503, 504)
PAGE = 500  # QIDO results asked for per request
MAX_PAGES = 10_000  # every search loop is bounded
_UID_TAGS = {"study": "0020000D", "series": "0020000E", "sop": "00080018", "accession": "00080050"}


class DicomwebError(DataError):
    """The DICOMweb server could not be reached, refused access or failed a request."""


def is_dicomweb(spec: object) -> bool:
    """Whether ``spec`` (a --data value) names a DICOMweb server rather than a local path."""
    return isinstance(spec, str) and spec.lower().startswith(PREFIX)


@dataclass(frozen=True)
class DicomwebURL:
    """A parsed source: the server root (no query) and its QIDO-RS matching keys."""

    root: str
    filters: tuple[tuple[str, str], ...] = ()

    @property
    def where(self) -> str:
        """The server, safe to print: scheme, host, port and path (never the query)."""
        return self.root

    def filter_dict(self) -> dict[str, str]:
        return dict(self.filters)


def _keyword_ok(key: str) -> bool:
    from pydicom.datadict import keyword_dict

    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        return True
    return key in keyword_dict


def parse_dicomweb(spec: str) -> DicomwebURL:
    """Validate ``dicomweb+http(s)://host[:port]/root?Keyword=value&...``; one-line error otherwise."""
    if not is_dicomweb(spec):
        raise ConfigError(f"not a DICOMweb source (it must start with {PREFIX}https:// or {PREFIX}http://)")
    parts = urlsplit(spec[len(PREFIX):])
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"DICOMweb source: the scheme after {PREFIX} must be http or https, not "
                          f"{parts.scheme or 'nothing'!r} (e.g. {PREFIX}https://pacs.example/dicom-web?Modality=CR)")
    if parts.username or parts.password:
        raise ConfigError("DICOMweb source: credentials do not go in the URL (they would show in the shell "
                          f"history and process list); set {ENV_TOKEN_FILE}, or {ENV_USER} and {ENV_PASSWORD_FILE}")
    if not parts.hostname:
        raise ConfigError(f"DICOMweb source: no host in {PREFIX}{parts.scheme}://... ")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError("DICOMweb source: the port is not a number") from None
    if parts.fragment:
        raise ConfigError("DICOMweb source: a '#' fragment is not allowed (quote the URL in the shell)")
    filters = []
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ConfigError("DICOMweb source: the query is not key=value pairs joined by '&'") from None
    for key, value in pairs:
        if not _keyword_ok(key):
            raise ConfigError(f"DICOMweb source: {key!r} is not a DICOM keyword or tag (e.g. Modality, "
                              "StudyDate, AccessionNumber, 00080060)")
        if not value:
            raise ConfigError(f"DICOMweb source: matching key {key} has no value")
        filters.append((key, value))
    netloc = parts.hostname + (f":{port}" if port else "")
    root = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
    return DicomwebURL(root, tuple(filters))


def _read_secret(path: str, what: str) -> str:
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the DICOMweb {what} file {p}: {exc.strerror or type(exc).__name__}") from None
    if not text:
        raise ConfigError(f"the DICOMweb {what} file {p} is empty")
    return text


@dataclass(frozen=True, repr=False)
class Credentials:
    """How to authenticate: a bearer token, or basic user + password; from files or the environment.

    Never printed: the repr hides the secrets.
    """

    token: str | None = None
    user: str | None = None
    password: str | None = None
    ca_bundle: str | None = None

    def __repr__(self) -> str:
        kind = "bearer" if self.token else ("basic" if self.user else "none")
        return f"Credentials({kind}, ca_bundle={self.ca_bundle!r})"

    @classmethod
    def from_env(cls, *, token_file: Path | None = None, user: str | None = None,
                 password_file: Path | None = None, ca_bundle: Path | None = None,
                 env: Mapping[str, str] | None = None) -> Credentials:
        """Options given win over ``MEDMM_DICOMWEB_*`` variables (token, token file, user, password,
        password file, CA bundle)."""
        env = os.environ if env is None else env
        token = None
        if token_file is not None:
            token = _read_secret(str(token_file), "token")
        elif env.get(ENV_TOKEN_FILE):
            token = _read_secret(env[ENV_TOKEN_FILE], "token")
        elif env.get(ENV_TOKEN):
            token = env[ENV_TOKEN].strip()
        name = user or env.get(ENV_USER) or None
        password = None
        if password_file is not None:
            password = _read_secret(str(password_file), "password")
        elif env.get(ENV_PASSWORD_FILE):
            password = _read_secret(env[ENV_PASSWORD_FILE], "password")
        elif env.get(ENV_PASSWORD):
            password = env[ENV_PASSWORD]
        if token and name:
            raise ConfigError("DICOMweb: give a bearer token or a user and password, not both")
        if name and password is None:
            raise ConfigError(f"DICOMweb: user {name!r} needs a password: set {ENV_PASSWORD_FILE} (a file, mode 0600)")
        if password is not None and not name:
            raise ConfigError(f"DICOMweb: a password without a user: set {ENV_USER}")
        bundle = str(ca_bundle) if ca_bundle is not None else (env.get(ENV_CA_BUNDLE) or None)
        if bundle is not None and not Path(bundle).expanduser().is_file():
            raise ConfigError(f"DICOMweb CA bundle not found: {bundle}")
        return cls(token or None, name, password, str(Path(bundle).expanduser()) if bundle else None)


@dataclass(frozen=True)
class InstanceRef:
    """One instance found by QIDO-RS: its three UIDs, accession number, requested study attributes, and
    its modality and SOP class (what decides, before retrieval, whether it may need the pixel pass)."""

    study: str
    series: str
    sop: str
    accession: str = ""
    attributes: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    modality: str = field(default="", compare=False)
    sop_class: str = field(default="", compare=False)


def _value(item: Mapping[str, Any], tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or []
    if not values:
        return ""
    v = values[0]
    if isinstance(v, dict):  # a person name in the JSON model
        v = v.get("Alphabetic", "")
    return str(v)


@contextlib.contextmanager
def _quiet_client() -> Iterator[None]:
    """dicomweb-client logs UIDs and query strings at INFO / DEBUG, urllib3 logs each retried URL
    (UIDs, matching values) at WARNING: in this process they never get through (set once, not
    restored, so that threads cannot race on it)."""
    for name in ("dicomweb_client", "urllib3.connectionpool", "urllib3.util.retry"):
        logging.getLogger(name).setLevel(logging.ERROR)
    yield


class DicomwebServer:
    """One DICOMweb server: bounded connection pool, retries with backoff, one-line errors."""

    def __init__(self, url: DicomwebURL, credentials: Credentials | None = None, *, connections: int = 4,
                 retries: int = 4, backoff: float = 0.5, timeout: float = 60.0) -> None:
        try:
            from dicomweb_client.api import DICOMwebClient
        except ImportError:
            raise MedmmError("a DICOMweb source needs dicomweb-client: pip install 'medmm[dicomweb]'") from None
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        self.url, self.retries = url, retries
        creds = credentials or Credentials()
        self._spec = (url, creds, connections, retries, backoff, timeout)
        session = requests.Session()
        retry = Retry(total=retries, connect=retries, read=retries, status=retries, other=0,
                      backoff_factor=backoff, backoff_max=10.0, status_forcelist=RETRY_STATUS,
                      allowed_methods=frozenset({"GET", "HEAD"}), respect_retry_after_header=True,
                      raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=max(1, connections),
                              pool_block=True)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.verify = creds.ca_bundle or True  # TLS verification is never turned off
        session.trust_env = False  # no proxy / netrc credentials picked up behind the user's back
        if creds.token:
            session.headers["Authorization"] = f"Bearer {creds.token}"
        elif creds.user:
            session.auth = (creds.user, creds.password or "")
        with _quiet_client():
            self.client = DICOMwebClient(url.root, session=session, timeout=(10.0, timeout))
            self.client.set_http_retry_params(retry=False)  # urllib3 retries (connection errors too)

    def spec(self) -> tuple[Any, ...]:
        """What :meth:`from_spec` needs to open the same server in another process (secrets included:
        pass it only to this machine's worker processes, never to a log or a file)."""
        return self._spec

    @classmethod
    def from_spec(cls, spec: tuple[Any, ...]) -> DicomwebServer:
        url, creds, _, retries, backoff, timeout = spec
        return cls(url, creds, connections=1, retries=retries, backoff=backoff, timeout=timeout)

    # -- errors -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        import requests

        try:
            with _quiet_client():
                yield
        except requests.exceptions.SSLError:
            raise DicomwebError(f"DICOMweb {what}: TLS verification failed for {self.url.where} (give your "
                                f"hospital's CA bundle with {ENV_CA_BUNDLE} or --ca-bundle)") from None
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise DicomwebError(f"DICOMweb {what}: {self.url.where} refused access (HTTP {status}); "
                                    f"give credentials with {ENV_TOKEN_FILE}, or {ENV_USER} and "
                                    f"{ENV_PASSWORD_FILE}") from None
            raise DicomwebError(f"DICOMweb {what}: {self.url.where} answered HTTP {status}"
                                + (f" after {self.retries + 1} tries" if status in RETRY_STATUS else "")) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            kind = "timed out" if isinstance(exc, requests.exceptions.Timeout) or "timed out" in str(exc) \
                else "connection refused or reset"
            raise DicomwebError(f"DICOMweb {what}: cannot reach {self.url.where} after {self.retries + 1} "
                                f"tries ({kind})") from None
        except requests.exceptions.RequestException as exc:
            raise DicomwebError(f"DICOMweb {what}: {self.url.where}: {type(exc).__name__}") from None
        except ValueError as exc:  # a malformed answer (not JSON, not multipart)
            raise DicomwebError(f"DICOMweb {what}: {self.url.where} sent an answer that is not DICOMweb "
                                f"({str(exc)[:80]})") from None

    # -- QIDO-RS ------------------------------------------------------------------------------
    def _paged(self, search: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for page in range(MAX_PAGES):
            with self._errors("search"):
                found = search(limit=PAGE, offset=page * PAGE, **kwargs)
            yield from found
            if len(found) < PAGE:
                return
        raise DicomwebError(f"DICOMweb search: more than {MAX_PAGES * PAGE} results at {self.url.where}; "
                            "narrow the query")

    def instances(self, filters: Mapping[str, str] | None = None,
                  study_fields: tuple[str, ...] = ()) -> Iterator[InstanceRef]:
        """Every instance matching ``filters`` (one paged QIDO-RS search of all instances, PS3.18
        10.6: study, series and instance keys alike). Each ref carries the study's ``study_fields``
        (keyword -> value) in ``attributes``. ``filters`` default to the source URL's matching keys."""
        from pydicom.datadict import tag_for_keyword

        filters = self.url.filter_dict() if filters is None else dict(filters)
        tags = {name: f"{tag:08X}" for name in study_fields if (tag := tag_for_keyword(name)) is not None}
        studies: dict[tuple[str, ...], dict[str, str]] = {}  # one shared dict per distinct study answer
        for item in self._paged(self.client.search_for_instances, search_filters=filters,
                                fields=["StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber", "Modality",
                                        "SOPClassUID", *tags]):
            study, series = _value(item, _UID_TAGS["study"]), _value(item, _UID_TAGS["series"])
            sop = _value(item, _UID_TAGS["sop"])
            if not (study and series and sop):
                continue
            values = tuple(_value(item, tag) for tag in tags.values())
            attrs = studies.setdefault((study, *values), dict(zip(tags, values)))
            yield InstanceRef(study, series, sop, _value(item, _UID_TAGS["accession"]), attrs,
                              _value(item, "00080060"), _value(item, "00080016"))

    def find(self, study: str, sop: str) -> bool:
        """Whether the server holds instance ``sop`` of ``study`` (QIDO-RS)."""
        with self._errors("search"):
            found = self.client.search_for_instances(study_instance_uid=study, search_filters={"SOPInstanceUID": sop})
        return bool(found)

    def has_study(self, study: str) -> bool:
        with self._errors("search"):
            return bool(self.client.search_for_studies(search_filters={"StudyInstanceUID": study}, limit=1))

    # -- WADO-RS / STOW-RS ----------------------------------------------------------------------
    def retrieve(self, ref: InstanceRef) -> Any:
        """One instance as a pydicom Dataset, in the transfer syntax the server stores it in."""
        with self._errors("retrieve"):
            return self.client.retrieve_instance(ref.study, ref.series, ref.sop,
                                                 media_types=(("application/dicom", "*"),))

    @contextlib.contextmanager
    def series_stream(self, study: str, series: str) -> Iterator[Iterator[Any]]:
        """Every instance of one series from one streamed WADO-RS request, as pydicom Datasets one at a
        time (dicomweb-client ``iter_series``: a part is parsed as soon as it has arrived, so memory
        holds one instance, not the series). Errors, while the request starts or mid-stream, are
        :class:`DicomwebError`; the connection is closed when the block ends, even mid-stream."""
        def read() -> Iterator[Any]:
            with self._errors("retrieve"):
                parts = self.client.iter_series(study, series, media_types=(("application/dicom", "*"),))
                try:
                    yield from parts
                finally:
                    close = getattr(parts, "close", None)
                    if close is not None:
                        close()

        stream = read()
        try:
            yield stream
        finally:
            stream.close()

    def store(self, datasets: list[Any]) -> None:
        """STOW-RS; a failure of any instance is an error."""
        with self._errors("store"):
            result = self.client.store_instances(datasets)
        failed = getattr(result, "FailedSOPSequence", None) or []
        if failed:
            raise DicomwebError(f"DICOMweb store: {self.url.where} refused {len(failed)} of {len(datasets)} "
                                "instance(s)")
