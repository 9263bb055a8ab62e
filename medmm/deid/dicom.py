"""DICOM de-identification: PS3.15 Annex E Basic Application Level Confidentiality Profile.

The action of every attribute (D, Z, X, U, X/Z, X/D, Z/D, X/Z/D, X/Z/U*) comes from Table E.1-1
as shipped, machine-readable and versioned, by the maintained ``dicom-anonymizer`` package
(Kitware; ``dicomfields_2026c`` when present). medmm applies that table itself, at every nesting
level (the package's own engine acts on top-level attributes only and remaps UIDs at random):

* private attributes are removed everywhere, overlay / curve groups by their masks;
* UIDs (the table's U attributes, and any other non-standard UID) become keyed ``2.25.`` UIDs, the
  same for the same source UID in every file and every run with the same key, so a study stays one
  study and references (Referenced SOP Instance UID, Frame of Reference) still resolve;
* Patient ID and Patient's Name become the keyed patient pseudonym (joins the labels CSV);
* options (:class:`~medmm.deid.options.DeidOptions`): per-patient date shift, device identity,
  cleaned descriptors.

pydicom is imported inside functions only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from medmm.deid.options import DeidOptions
from medmm.deid.pseudonyms import Pseudonymizer
from medmm.errors import MedmmError

__all__ = ["Profile", "SKIP_SOP_CLASSES", "deidentify_dataset", "load_profile", "pixel_hash", "skip_reason",
           "source_identifiers"]

TABLE_VERSIONS = ("dicomfields_2026c", "dicomfields_2024b", "dicomfields_2023")
_CATEGORIES = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "ZD", "X_Z_TAGS": "XZ",
               "X_D_TAGS": "XD", "X_Z_D_TAGS": "XZD", "X_Z_U_STAR_TAGS": "XZU"}

SKIP_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture (text likely burned into the pixels)",
    "1.2.840.10008.5.1.4.1.1.7.1": "secondary capture (text likely burned into the pixels)",
    "1.2.840.10008.5.1.4.1.1.7.2": "secondary capture (text likely burned into the pixels)",
    "1.2.840.10008.5.1.4.1.1.7.3": "secondary capture (text likely burned into the pixels)",
    "1.2.840.10008.5.1.4.1.1.7.4": "secondary capture (text likely burned into the pixels)",
    "1.2.840.10008.1.3.10": "DICOMDIR (media directory: its file references name source files; rebuild it)",
}

# PS3.15 Table E.1-1 "Rtn. Dev. Id." column: attributes kept by the Retain Device Identity option.
DEVICE_KEYWORDS = frozenset({
    "DeviceSerialNumber", "DeviceUID", "DeviceID", "DeviceDescription", "DeviceLabel",
    "LongDeviceDescription",
    "DetectorID", "GantryID", "PlateID", "CassetteID", "GeneratorID", "StationName", "SourceSerialNumber",
    "PerformedStationName", "ScheduledStationName", "ScheduledStationAETitle", "PerformedStationAETitle",
    "ModifyingDeviceID", "HardcopyCreationDeviceID", "LensSerialNumber", "ManufacturerDeviceIdentifier",
    "DeviceAlternateIdentifier", "UniqueDeviceIdentifier", "DeviceSettingDescription", "XRayDetectorID",
    "XRaySourceID", "RTAccessoryDeviceSlotID", "SourceManufacturer", "PerformedLocation",
})
# Free-text descriptors kept (after cleaning) by the Clean Descriptors option ("C" in its column).
_DESCRIPTOR = re.compile(r"(Description|Comments?|History|Diagnos\w*|Reason\w*|Label|Name)$")
_DESCRIPTOR_EXTRA = frozenset({"ProtocolName", "ImageComments", "AdditionalPatientHistory", "StudyComments",
                               "SeriesDescription", "StudyDescription", "ReasonForStudy"})
_NOT_DESCRIPTOR = frozenset({"PatientName", "InstitutionName", "StationName", "PatientMotherBirthName",
                             "PatientBirthName", "OtherPatientNames", "ReferringPhysicianName",
                             "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy",
                             "RequestingPhysician", "PhysiciansOfRecord", "InstitutionalDepartmentName"})
# Free text the table leaves to its sequence's D action (SR content items): replaced here, as are
# person names and dates of attributes the table does not list (HIPAA: every name, every date).
FREE_TEXT_KEYWORDS = frozenset({"TextValue", "UnformattedTextValue"})
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR",
                       "UT"})
_FREE_TEXT = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_DUMMY = "REMOVED"

# Identifier values read from each source header, by kind, for the residual scan.
ID_KEYWORDS = {
    "PatientID": "id", "OtherPatientIDs": "id", "AccessionNumber": "accession", "MedicalRecordLocator": "id",
    "IssuerOfPatientID": "id", "StudyID": "id", "PatientBirthDate": "birth date",
    "InstitutionName": "institution", "InstitutionAddress": "institution",
    "InstitutionalDepartmentName": "institution", "PatientAddress": "address",
    "PatientTelephoneNumbers": "phone", "RequestedProcedureID": "id",
    "PerformedProcedureStepID": "id", "ScheduledProcedureStepID": "id", "AdmissionID": "id",
    "FillerOrderNumberImagingServiceRequest": "id", "PlacerOrderNumberImagingServiceRequest": "id",
    "StationName": "device", "DeviceSerialNumber": "device",
}
# Kept attributes whose values are vocabulary (equipment, software, codes), not free text: a
# source "identifier" equal to one of these (InstitutionName == Manufacturer in test files) is
# reported as ambiguous rather than counted.
VOCABULARY_KEYWORDS = frozenset({"Manufacturer", "ManufacturerModelName", "SoftwareVersions", "CodeMeaning",
                                 "CodeValue", "CodingSchemeDesignator", "ImplementationClassUID",
                                 "ImplementationVersionName"})
GENERIC_VALUES = frozenset({"ANONYMOUS", "ANONYMIZED", "ANON", "UNKNOWN", "NONE", "N/A", "NULL", "REMOVED",
                            "TEST", "PATIENT", "DEMO", "NAME", "YES", "NO"})


@dataclass(frozen=True)
class Profile:
    """Table E.1-1 as tag -> action code, plus the masked (repeating group) rules."""

    version: str
    exact: dict[int, str]
    masked: tuple[tuple[int, int, int, int, str], ...]
    uid_tags: frozenset[int]

    def action(self, tag: int) -> str | None:
        act = self.exact.get(tag)
        if act is not None:
            return act
        group, elem = tag >> 16, tag & 0xFFFF
        for g, e, gm, em, a in self.masked:
            if group & gm == g & gm and elem & em == e & em:
                return a
        return None


def load_profile() -> Profile:
    """Table E.1-1 from ``dicom-anonymizer``; a one-line error naming the extra when it is missing."""
    import importlib

    for version in TABLE_VERSIONS:
        try:
            mod = importlib.import_module(f"dicomanonymizer.dicom_anonymization_databases.{version}")
            break
        except ModuleNotFoundError as exc:
            if exc.name in ("dicomanonymizer", "dicomanonymizer.dicom_anonymization_databases"):
                raise MedmmError("medmm deid needs dicom-anonymizer (PS3.15 Table E.1-1): "
                                 "pip install 'medmm[deid]'") from None
    else:  # pragma: no cover - the package always has one of them
        raise MedmmError("dicom-anonymizer ships no known PS3.15 table; pip install -U 'medmm[deid]'")
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, code in _CATEGORIES.items():
        for t in getattr(mod, category):
            if len(t) == 2:
                exact[(t[0] << 16) | t[1]] = code
            else:
                masked.append((t[0], t[1], t[2], t[3], code))
    uid_tags = frozenset(t for t, a in exact.items() if a == "U")
    return Profile(version.removeprefix("dicomfields_"), exact, tuple(masked), uid_tags)


def pixel_hash(ds: Any) -> str | None:
    """SHA-256 of the raw pixel bytes (native or encapsulated) or ``None`` without pixel data."""
    h = hashlib.sha256()
    found = False
    for tag in _PIXEL_TAGS:
        if tag in ds:
            found = True
            h.update(bytes(ds[tag].value or b""))
    return h.hexdigest() if found else None


def skip_reason(ds: Any, pixel_pass: bool = False) -> str | None:
    """Why a dataset must not be copied (DICOMDIR; and without the OCR pixel pass, burned-in text or
    a secondary capture), else None."""
    meta = getattr(ds, "file_meta", None)
    sop = str(ds.get("SOPClassUID", "") or getattr(meta, "MediaStorageSOPClassUID", "") or "")
    if "DirectoryRecordSequence" in ds or sop == "1.2.840.10008.1.3.10":
        return SKIP_SOP_CLASSES["1.2.840.10008.1.3.10"]
    if pixel_pass:
        return None
    if sop in SKIP_SOP_CLASSES:
        return SKIP_SOP_CLASSES[sop]
    if str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
        return "BurnedInAnnotation=YES (identifiers may be in the pixels)"
    return None


def _values(elem: Any) -> list[str]:
    value = elem.value
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value if v is not None]
    return [str(value)]


def _keep_value(v: str) -> bool:
    v = v.strip()
    return len(v) >= 3 and any(c.isalnum() for c in v) and v.upper() not in GENERIC_VALUES


def source_identifiers(ds: Any, profile: Profile, options: DeidOptions) -> tuple[dict[str, str], set[str]]:
    """Identifier values (value -> kind) in ``ds`` and its sequences, for the residual scan; and
    the source's coded vocabulary (CS values, equipment names, code meanings) that the profile keeps.

    Names (every PN, whole and by component), patient / accession / procedure IDs, birth date,
    institution, address, phone, instance UIDs, and device identity unless it is retained.
    """
    found: dict[str, str] = {}
    vocab: set[str] = set()

    def visit(dataset: Any, elem: Any) -> None:
        kw = elem.keyword
        if elem.VR == "SQ":
            return
        if (elem.VR == "CS" or kw in VOCABULARY_KEYWORDS) and profile.action(int(elem.tag)) is None:
            vocab.update(v.strip() for v in _values(elem) if v.strip())
        if options.retain_device_identity and kw in DEVICE_KEYWORDS:
            return
        if elem.VR == "PN":
            for v in _values(elem):
                parts = [p for p in re.split(r"[\^=\s,]+", v) if p]
                for candidate in [v, " ".join(parts), *parts]:
                    if _keep_value(candidate):
                        found.setdefault(candidate.strip(), "name")
        elif kw in ID_KEYWORDS:
            for v in _values(elem):
                if _keep_value(v):
                    found.setdefault(v.strip(), ID_KEYWORDS[kw])
        elif elem.VR == "UI" and elem.tag in profile.uid_tags:
            for v in _values(elem):
                if _keep_value(v) and not _is_standard_uid(v.strip()):
                    found.setdefault(v.strip(), "uid")

    with _quiet():
        ds.walk(visit)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            meta.walk(visit)
    return found, vocab


def _quiet() -> Any:
    from medmm.data.dicom.scan import quiet_pydicom

    return quiet_pydicom()


@dataclass
class _Ctx:
    pseudo: Pseudonymizer
    profile: Profile
    options: DeidOptions
    patient: str
    identifiers: dict[str, str] = field(default_factory=dict)
    _scrubber: Any = None

    def shift_days(self) -> int:
        return self.pseudo.date_shift_days(self.patient)


def _is_standard_uid(value: str) -> bool:
    from pydicom._uid_dict import UID_dictionary

    return value in UID_dictionary


_DATE8 = re.compile(r"(?<!\d)(\d{8})(?!\d)")


def _shift_da(value: str, days: int) -> str:
    import datetime as dt

    def one(m: re.Match[str]) -> str:
        try:
            d = dt.datetime.strptime(m[1], "%Y%m%d").date() + dt.timedelta(days=days)
        except ValueError:
            return "19000101"
        return d.strftime("%Y%m%d")

    return _DATE8.sub(one, value)


def _shift_dt(value: str, days: int) -> str:
    value = value.strip()
    if len(value) >= 8 and value[:8].isdigit():
        return _shift_da(value[:8], days) + value[8:]
    return "19000101"


def _dummy(vr: str, ctx: _Ctx, value: Any) -> Any:
    if vr == "DA":
        return "19000101"
    if vr == "TM":
        return "000000"
    if vr == "DT":
        return "19000101000000"
    if vr == "UI":
        return _map_uids(value, ctx)
    if vr == "AS":
        return "000Y"
    if vr in ("DS", "IS"):
        return "0"
    if vr in ("FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"):
        return 0
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return b"\x00\x00"
    if vr == "UR":
        return "urn:removed"
    return _DUMMY


def _map_uids(value: Any, ctx: _Ctx) -> Any:
    if value is None or value == "":
        return value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [ctx.pseudo.uid(str(v)) if str(v).strip() else v for v in value]
    return ctx.pseudo.uid(str(value))


def _clean_descriptor(elem: Any, ctx: _Ctx) -> None:
    from medmm.deid.text import NameMatcher, literal_matcher, scrub

    if ctx._scrubber is None:
        names = NameMatcher(v for v, k in ctx.identifiers.items() if k == "name")
        literals = literal_matcher({v: "ID" for v, k in ctx.identifiers.items() if k != "name"})
        shift = ctx.shift_days() if ctx.options.retain_dates else None
        ctx._scrubber = lambda text: scrub(text, names, shift, literals)[0]
    vals = _values(elem)
    cleaned = [ctx._scrubber(v) for v in vals]
    elem.value = cleaned if len(cleaned) > 1 else (cleaned[0] if cleaned else elem.value)


def _is_descriptor(kw: str, vr: str) -> bool:
    if vr not in _FREE_TEXT or kw in _NOT_DESCRIPTOR:
        return False
    return kw in _DESCRIPTOR_EXTRA or bool(_DESCRIPTOR.search(kw))


def _apply(ds: Any, ctx: _Ctx) -> None:
    for tag in list(ds.keys()):
        try:
            elem = ds[tag]
        except Exception:  # noqa: BLE001 - an element pydicom cannot parse is removed, not kept
            del ds[tag]
            continue
        if elem.tag.is_private or (elem.tag.group & 0xFF00) == 0x6000:
            del ds[tag]  # private; or an overlay group, whose Overlay Data (X) may hold burned-in text
            continue
        if int(tag) in _PIXEL_TAGS:
            continue
        action = ctx.profile.action(int(tag))
        kw, vr = elem.keyword, elem.VR
        if action is None and (kw in FREE_TEXT_KEYWORDS or vr in ("PN", "DA", "DT")):
            action = "D"  # free text, and any person name or date the table does not list
        if vr == "SQ":
            if action == "X":
                del ds[tag]
            elif action == "Z":
                elem.value = []
            else:  # D / X/Z/U* / kept sequences: clean every item with the same table
                for item in elem.value or []:
                    _apply(item, ctx)
            continue
        if action is None:
            if vr == "UI" and not kw.endswith("ClassUID") and kw != "TransferSyntaxUID":
                values = _values(elem)
                if any(v and not _is_standard_uid(v) for v in values):
                    elem.value = _map_uids(elem.value, ctx)
            continue
        if ctx.options.retain_device_identity and kw in DEVICE_KEYWORDS:
            continue
        if ctx.options.retain_dates and vr in ("DA", "DT", "TM") and not kw.startswith("PatientBirth"):
            if vr == "DA" and elem.value:
                elem.value = _shift_da(str(elem.value), ctx.shift_days())
            elif vr == "DT" and elem.value:
                elem.value = _shift_dt(str(elem.value), ctx.shift_days())
            continue  # times are kept: a whole-day shift leaves them valid
        if ctx.options.clean_descriptors and _is_descriptor(kw, vr):
            _clean_descriptor(elem, ctx)
            continue
        if action == "U":
            elem.value = _map_uids(elem.value, ctx)
        elif action == "X":
            del ds[tag]
        elif action in ("Z", "XZ"):
            elem.value = None
        elif action == "XZU":
            elem.value = _map_uids(elem.value, ctx) if vr == "UI" else None
        else:  # D, Z/D, X/D, X/Z/D: a dummy consistent with the VR
            elem.value = _dummy(vr, ctx, elem.value)


def _method_codes(options: DeidOptions) -> list[tuple[str, str]]:
    codes = [("113100", "Basic Application Confidentiality Profile")]
    if options.clean_descriptors:
        codes.append(("113105", "Clean Descriptors Option"))
    if options.retain_dates:
        codes.append(("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
    if options.retain_device_identity:
        codes.append(("113109", "Retain Device Identity Option"))
    return codes


def deidentify_dataset(ds: Any, pseudo: Pseudonymizer, profile: Profile, options: DeidOptions,
                       identifiers: dict[str, str] | None = None) -> None:
    """De-identify ``ds`` in place (file meta included); ``identifiers`` feed descriptor cleaning."""
    from pydicom.dataset import Dataset

    patient = str(ds.get("PatientID", "") or "").strip()
    ctx = _Ctx(pseudo, profile, options, patient, identifiers or {})
    with _quiet():
        _apply(ds, ctx)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            for kw in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                       "ReceivingApplicationEntityTitle", "PrivateInformationCreatorUID",
                       "PrivateInformation"):
                if kw in meta:
                    delattr(meta, kw)
            if "SOPInstanceUID" in ds:
                meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            elif meta.get("MediaStorageSOPInstanceUID"):
                meta.MediaStorageSOPInstanceUID = pseudo.uid(str(meta.MediaStorageSOPInstanceUID))
        pseudonym = pseudo.patient_id(patient)
        ds.PatientID = pseudonym
        ds.PatientName = pseudonym
        ds.PatientIdentityRemoved = "YES"
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if options.retain_dates else "REMOVED"
        ds.DeidentificationMethod = f"medmm deid: PS3.15 E.1-1 Basic Profile ({profile.version} table)"
        items = []
        for value, meaning in _method_codes(options):
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items


def scan_text(ds: Any) -> str:
    """Every textual value of ``ds`` (file meta, nested sequences; UN/OB decoded), pixels excluded."""
    chunks: list[str] = []

    def visit(dataset: Any, elem: Any) -> None:
        if int(elem.tag) in _PIXEL_TAGS or elem.VR == "SQ":
            return
        if elem.VR in _TEXT_VRS:
            chunks.extend(_values(elem))
        elif elem.VR in ("UN", "OB") and isinstance(elem.value, (bytes, bytearray)):
            chunks.append(bytes(elem.value).decode("latin-1"))

    with _quiet():
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            meta.walk(visit)
        ds.walk(visit)
    return "\n".join(chunks)

