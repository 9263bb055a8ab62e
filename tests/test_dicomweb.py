"""DICOMweb in and out against a real Orthanc on 127.0.0.1 (Debian orthanc + orthanc-dicomweb).

The data are pydicom's own CT_small / MR_small images, given planted identities (patient ids,
names, accession numbers, institution) and one study per patient, so that the tests know every
identifier that must not come back and every label (the modality) that must join.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pydicom
import pytest

from medmm.cli import main
from medmm.data.sources import DicomwebSource, parse_source
from medmm.data.sources.dicomweb import Credentials, DicomwebError
from medmm.deid.pseudonyms import Pseudonymizer, new_key_file
from medmm.errors import ConfigError, MedmmError
from medmm.pacs.pull import pull
from tests.orthanc import Orthanc, free_port, start_orthanc, unavailable

KEY = bytes(range(32))
N_PER_CLASS = 6


def _planted(folder: Path) -> list[dict[str, str]]:
    """12 single-instance studies (6 CT, 6 MR), one patient each; returns their identities."""
    from pydicom.uid import generate_uid

    root = Path(pydicom.__file__).parent / "data" / "test_files"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for modality, name in (("CT", "CT_small.dcm"), ("MR", "MR_small.dcm")):
        for i in range(N_PER_CLASS):
            ds = pydicom.dcmread(root / name)
            n = len(rows)
            ident = {"PatientID": f"MRN{70310 + n}", "PatientName": f"Quimby^Harriet{chr(65 + n)}",
                     "AccessionNumber": f"ACC{88120 + n}", "StudyInstanceUID": generate_uid(entropy_srcs=[f"st{n}"]),
                     "SeriesInstanceUID": generate_uid(entropy_srcs=[f"se{n}"]),
                     "SOPInstanceUID": generate_uid(entropy_srcs=[f"so{n}"]), "Modality": modality}
            for k, v in ident.items():
                setattr(ds, k, v)
            ds.InstitutionName = "Springfield Memorial Hospital"
            ds.PatientBirthDate = "19580214"
            ds.file_meta.MediaStorageSOPInstanceUID = ident["SOPInstanceUID"]
            ds.save_as(folder / f"{n:02d}.dcm", enforce_file_format=True)
            rows.append(ident)
    return rows


@pytest.fixture(scope="session")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Orthanc, list[dict[str, str]]]:
    """One Orthanc for the session, holding the planted studies."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("pacs")
    idents = _planted(root / "files")
    with start_orthanc(root / "orthanc") as server:
        assert server is not None
        assert server.upload(sorted((root / "files").glob("*.dcm"))) == len(idents)
        yield server, idents


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "deid.key"
    path.write_text(KEY.hex() + "\n")
    path.chmod(0o600)
    return path


def _server(url: str, **kw: object):  # type: ignore[no-untyped-def]
    source = parse_source(url)
    assert isinstance(source, DicomwebSource)
    return source.server(Credentials(), backoff=0.01, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- no server needed


@pytest.mark.parametrize("spec, words", [
    ("dicomweb+ftp://pacs/dicom-web", "http or https"),
    ("dicomweb+https://user:secret@pacs/dicom-web", "credentials do not go in the URL"),
    ("dicomweb+https://pacs/dicom-web?Modalty=CR", "'Modalty' is not a DICOM keyword"),
    ("dicomweb+https://pacs/dicom-web?Modality=", "has no value"),
])
def test_a_bad_source_is_one_line_naming_the_problem(spec: str, words: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        parse_source(spec)
    assert main(["predict", str(tmp_path), "--data", spec, "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "secret" not in err[0]


def test_a_source_keeps_its_matching_keys_and_never_prints_them() -> None:
    src = parse_source("dicomweb+https://pacs.example:8443/dicom-web/?PatientName=DOE*&StudyDate=20240101-20241231")
    assert isinstance(src, DicomwebSource)
    assert src.url.root == "https://pacs.example:8443/dicom-web"
    assert src.url.filter_dict() == {"PatientName": "DOE*", "StudyDate": "20240101-20241231"}
    assert "DOE" not in src.describe() and "PatientName" in src.describe()


def test_credentials_come_from_files_or_the_environment_and_are_never_shown(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cr3t-token\n")
    creds = Credentials.from_env(env={"MEDMM_DICOMWEB_TOKEN_FILE": str(token)})
    assert creds.token == "s3cr3t-token" and "s3cr3t" not in repr(creds)
    pw = tmp_path / "pw"
    pw.write_text("hunter22")
    creds = Credentials.from_env(user="radiology", password_file=pw, env={})
    assert (creds.user, creds.password) == ("radiology", "hunter22") and "hunter22" not in repr(creds)
    with pytest.raises(ConfigError, match="needs a password"):
        Credentials.from_env(env={"MEDMM_DICOMWEB_USER": "radiology"})
    with pytest.raises(ConfigError, match="not both"):
        Credentials.from_env(token_file=token, user="radiology", password_file=pw, env={})
    with pytest.raises(ConfigError, match="CA bundle not found"):
        Credentials.from_env(env={"MEDMM_DICOMWEB_CA_BUNDLE": str(tmp_path / "nope.pem")})
    server = parse_source("dicomweb+https://pacs/dicom-web")
    session = server.server(Credentials(token="tok")).client._session  # type: ignore[union-attr]
    assert session.headers["Authorization"] == "Bearer tok" and session.verify is True
    bundle = tmp_path / "hospital-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    creds = Credentials.from_env(env={"MEDMM_DICOMWEB_CA_BUNDLE": str(bundle)})
    assert server.server(creds).client._session.verify == str(bundle)  # type: ignore[union-attr]


def test_server_down_is_one_line_after_the_retries(tmp_path: Path, key_file: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    url = f"dicomweb+http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(DicomwebError, match="after 3 tries"):
        list(_server(url, retries=2).instances())
    code = main(["pull", url, "--out", str(tmp_path / "out"), "--key-file", str(key_file), "--retries", "1",
                 "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot reach http://127.0.0.1" in err[0] and "after 2 tries" in err[0]
    assert not (tmp_path / "out").exists()


def test_the_written_text_scan_covers_every_text_value_scan_text_reads() -> None:
    """The pull's verification reads text from the written bytes' raw elements (not every converted
    value): on pydicom's test files it holds every word `medmm.deid.dicom.scan_text` finds, and a name in
    a nested item under another character set is found by the identifier scan."""
    import io
    import re
    import warnings

    from pydicom.dataset import Dataset, FileMetaDataset

    from medmm.deid.dicom import scan_text
    from medmm.deid.verify import IdentifierScan
    from medmm.pacs.pull import _written_text

    def words(text: str) -> set[str]:
        return {w.casefold() for w in re.findall(r"[^\W_]{3,}", text)}

    root = Path(pydicom.__file__).parent / "data" / "test_files"
    checked = 0
    for f in sorted(root.glob("*.dcm")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                full, raw = pydicom.dcmread(f), pydicom.dcmread(f)
            except Exception:  # noqa: BLE001, S112 - a deliberately broken test file
                continue
            assert words(scan_text(full)) <= words(_written_text(raw)), f.name
        checked += 1
    assert checked >= 60
    ds, item = Dataset(), Dataset()
    ds.SpecificCharacterSet, ds.PatientID, ds.Modality = "ISO_IR 192", "P1", "OT"
    item.SpecificCharacterSet, item.PersonName = "ISO_IR 100", "Müller^Jürgen"
    ds.ContentSequence = [item]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    scan = IdentifierScan({"Jürgen": "name"})
    assert scan.scan(_written_text(pydicom.dcmread(io.BytesIO(buf.getvalue()), force=True)), "instance") == 1


def test_the_ocr_engine_is_loaded_ahead_only_when_the_search_finds_an_instance_in_scope(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from medmm.data.sources.dicomweb import InstanceRef
    from medmm.deid import pixels
    from medmm.deid.options import DeidOptions
    from medmm.pacs.pull import _Deid

    made: list[int] = []
    monkeypatch.setattr(pixels, "TextReader", lambda **kw: made.append(1) or object())
    ct, us = InstanceRef("1", "2", "3", modality="CT"), InstanceRef("1", "2", "4", modality="US")
    sc = InstanceRef("1", "2", "5", modality="OT", sop_class="1.2.840.10008.5.1.4.1.1.7")
    deid = _Deid(Pseudonymizer(KEY), DeidOptions(), "blank")
    assert deid.preload([ct]) is None and _Deid(Pseudonymizer(KEY), DeidOptions(), "keep").preload([us]) is None
    for refs in ([ct, us], [sc]):
        deid = _Deid(Pseudonymizer(KEY), DeidOptions(), "blank")
        thread = deid.preload(refs)
        assert thread is not None
        thread.join(10)
        deid._ocr()  # the instance that needs it finds it loaded
    thread = _Deid(Pseudonymizer(KEY), DeidOptions(), "scan-all").preload([ct])
    assert thread is not None
    thread.join(10)
    assert len(made) == 3


def test_instances_that_get_the_pixel_pass_are_spread_among_the_others_first_one_first() -> None:
    """With the OCR in its own process, a series that needs it is not left to the end (where its OCR
    would run alone): the units that need it go in at even steps of the others' instance count."""
    from medmm.data.sources.dicomweb import InstanceRef
    from medmm.pacs.pull import _units

    def ref(series: str, n: int, modality: str = "CT") -> InstanceRef:
        return InstanceRef("1", series, f"{series}.{n}", modality=modality)

    todo = [ref("s1", i) for i in range(6)] + [ref("s2", i) for i in range(4)] + [ref(f"u{i}", 0) for i in range(2)]
    todo += [ref(f"sc{i}", 0, "SC") for i in range(2)]
    plain = _units(todo)
    assert [len(u) for u in plain] == [6, 4, 1, 1, 1, 1] and plain[-1][0].series == "sc1"  # largest first
    spread = _units(todo, lambda r: r.modality == "SC")
    assert [u[0].series for u in spread] == ["sc0", "s1", "sc1", "s2", "u0", "u1"]  # at 0 and 6 of 12 others
    assert sorted(spread, key=lambda u: u[0].series) == sorted(plain, key=lambda u: u[0].series)
    assert _units(todo, lambda r: True) == plain == _units(todo, lambda r: False)


def test_the_encoder_writes_the_bytes_save_as_writes_for_every_transfer_syntax() -> None:
    """The pull serialises without dcmwrite's deep copy of the file meta: byte for byte what
    ``save_as(enforce_file_format=False)`` writes, for the bench's files as read and as de-identified,
    and for implicit / explicit / big-endian / deflated / JPEG 2000 / RLE sources (deflated: save_as)."""
    import copy

    from medmm.deid.dicom import deidentify_dataset, load_profile, source_identifiers
    from medmm.deid.options import DeidOptions
    from medmm.pacs.pull import _encode
    from tests.orthanc import sample_files

    root = Path(pydicom.__file__).parent / "data" / "test_files"
    names = ["image_dfl.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm",
             "US1_J2KR.dcm", "rtplan.dcm"]
    files = sample_files() + [root / n for n in names if (root / n).is_file()]
    profile, options, pseudo = load_profile(), DeidOptions(), Pseudonymizer(KEY)
    checked = 0
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except Exception:  # noqa: BLE001, S112 - a deliberately broken test file
            continue
        clean = copy.deepcopy(ds)
        deidentify_dataset(clean, pseudo, profile, options, source_identifiers(clean, profile, options)[0])
        for one in (ds, clean):
            buf = io.BytesIO()
            copy.deepcopy(one).save_as(buf, enforce_file_format=False)
            assert _encode(copy.deepcopy(one)) == buf.getvalue(), f.name
            checked += 1
    assert checked >= 2 * len(names)


def test_with_another_thread_running_the_ocr_stays_in_this_process_never_spawned() -> None:
    """The OCR worker is forked from a single-threaded process only (a fork beside a running thread can
    inherit a held lock; a spawned one would run the caller's __main__ again): else OCR in-process."""
    from medmm.deid.options import DeidOptions
    from medmm.pacs.pull import _Deid

    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        deid = _Deid(Pseudonymizer(KEY), DeidOptions(), "blank", ocr_process=True)
        assert deid.ocr_process and deid._ocr_pool() is None and not deid.ocr_process
    finally:
        stop.set()
        other.join(5)


@pytest.mark.slow
def test_the_pixel_pass_in_the_ocr_process_writes_the_same_bytes_as_in_this_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom-data's US1_UNCR.dcm ("BAPTIST MED CTR" burned in): the pull's OCR worker process reads,
    blanks and re-reads it exactly as the engine in this process does, byte for byte."""
    import copy
    import importlib.util

    pytest.importorskip("rapidocr_onnxruntime")
    from medmm.deid.options import DeidOptions
    from medmm.pacs.pull import _Deid

    monkeypatch.setattr(threading, "active_count", lambda: 1)  # a test runner's idle threads hold no lock

    spec = importlib.util.find_spec("data_store")  # pydicom-data, walked: never fetched
    source = Path(spec.origin).parent / "data" / "US1_UNCR.dcm" if spec and spec.origin else Path("-")
    if not source.is_file():
        pytest.skip("pydicom-data (US1_UNCR.dcm) is not installed")
    original = pydicom.dcmread(source)
    written = []
    for process in (True, False):
        deid = _Deid(Pseudonymizer(KEY), DeidOptions(), "blank", ocr_process=process)
        try:
            data, _, scanned = deid(copy.deepcopy(original))
            assert deid.ocr_process == process  # the worker process really ran it
        finally:
            deid.close()
        assert scanned
        written.append(data)
    assert written[0] == written[1]
    out = pydicom.dcmread(io.BytesIO(written[0]))
    assert out.BurnedInAnnotation == "NO" and (out.pixel_array != original.pixel_array).any()


# ---------------------------------------------------------------------------- against Orthanc


def _identifiers(idents: list[dict[str, str]]) -> list[str]:
    out = ["Springfield Memorial", "19580214"]
    for row in idents:
        out += [row["PatientID"], row["PatientName"].split("^")[1], row["AccessionNumber"],
                row["StudyInstanceUID"], row["SOPInstanceUID"], row["SeriesInstanceUID"]]
    return out


def test_search_finds_every_planted_instance_and_matching_keys_narrow_it(pacs) -> None:  # type: ignore[no-untyped-def]
    server, idents = pacs
    refs = list(_server(server.url).instances())
    assert sorted(r.sop for r in refs) == sorted(i["SOPInstanceUID"] for i in idents)
    ct = list(_server(server.url + "?Modality=CT").instances())
    assert len(ct) == N_PER_CLASS
    one = list(_server(f"{server.url}?AccessionNumber={idents[3]['AccessionNumber']}").instances())
    assert [r.sop for r in one] == [idents[3]["SOPInstanceUID"]]


def test_pull_writes_only_deidentified_files_with_the_same_pseudonyms_as_medmm_deid(pacs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from medmm.deid.folder import deidentify_folder
    from medmm.deid.options import DeidOptions

    server, idents = pacs
    pseudo = Pseudonymizer(KEY)
    res = pull(_server(server.url), {}, tmp_path / "out", pseudo=pseudo, progress=False, echo=lambda m: None)
    assert (res.found, res.fetched, res.skipped) == (len(idents), len(idents), [])
    files = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(files) == len(idents)
    blob = b"".join(f.read_bytes() for f in sorted((tmp_path / "out").rglob("*")) if f.is_file())
    for value in _identifiers(idents):  # nothing identified on disk, in any file the pull wrote
        assert value.encode() not in blob, value
    pulled = {str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f) for f in files}
    assert set(pulled) == {pseudo.uid(i["SOPInstanceUID"]) for i in idents}
    for ident in idents:
        ds = pulled[pseudo.uid(ident["SOPInstanceUID"])]
        assert ds.PatientID == pseudo.patient_id(ident["PatientID"]) and ds.PatientIdentityRemoved == "YES"
        assert ds.StudyInstanceUID == pseudo.uid(ident["StudyInstanceUID"])
    # medmm deid on the same files (exported from the PACS) gives the same pseudonyms
    src = tmp_path / "export"
    src.mkdir()
    srv = _server(server.url)
    for i, ref in enumerate(srv.instances()):
        srv.retrieve(ref).save_as(src / f"{i}.dcm")
    deidentify_folder(src, tmp_path / "deid", pseudo, DeidOptions())
    by_deid = {str(pydicom.dcmread(f).SOPInstanceUID): str(pydicom.dcmread(f).PatientID)
               for f in (tmp_path / "deid").rglob("*.dcm")}
    assert by_deid == {uid: str(ds.PatientID) for uid, ds in pulled.items()}
    report = json.loads((tmp_path / "out" / "pull.json").read_text())
    assert report["complete"] and report["instances_fetched"] == len(idents) and report["deidentified"]


@pytest.mark.parametrize("left, outcome", [
    ("DOB 03/11/1961", "identifier patterns in the pixels (date)"),
    ("MRN 4471-2209", "identifier patterns in the pixels (id number)"),
    ("R  L  5 cm", None),
])
def test_pull_checks_the_second_ocr_pass_for_dates_and_id_numbers_as_medmm_deid_does(
        pacs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, left: str, outcome: str | None) -> None:  # type: ignore[no-untyped-def]
    """Text the OCR still reads after blanking is checked with medmm deid's own ``pattern_kinds``:
    a date or an ID number that is not one of the instance's identifiers still keeps it out."""
    from medmm.deid import pixels
    from medmm.pacs import pull as pull_module

    server, _ = pacs
    made: list[int] = []
    monkeypatch.setattr(pull_module, "OCR_PROCESS", False)  # the planted engine lives in this process
    monkeypatch.setattr(pixels, "TextReader", lambda **kw: made.append(1) or object())  # no OCR model: outcome planted
    monkeypatch.setattr(pixels, "clean_pixels",
                        lambda ds, reader, policy: pixels.PixelOutcome(scanned=True, blanked=True, texts_after=[left]))
    res = pull(_server(server.url + "?Modality=CT"), None, tmp_path / "out", pseudo=Pseudonymizer(KEY),
               pixels="scan-all", parallel="threads", progress=False, echo=lambda m: None)
    assert res.found == N_PER_CLASS and res.pixels_scanned == res.fetched
    assert made == [1]  # loaded once (started ahead by the search's answer), shared by the 4 threads
    if outcome is None:
        assert (res.fetched, res.skipped) == (N_PER_CLASS, [])
    else:
        assert res.fetched == 0 and {why for _, why in res.skipped} == {f"verification failed: {outcome}"}
        assert not list((tmp_path / "out").rglob("*.dcm"))
        assert left not in (tmp_path / "out" / "skipped.csv").read_text()


def test_pixels_changed_between_the_check_and_the_written_bytes_keep_the_instance_out(
        pacs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The written bytes' pixel data must be the checked ones, byte for byte: one flipped pixel byte in
    the serialised instance (PixelData is its last element) and it is not written."""
    import medmm.pacs.pull as pull_module

    real = pull_module._encode

    def flipped(ds):  # type: ignore[no-untyped-def]
        data = bytearray(real(ds))
        data[-1] ^= 0xFF
        return bytes(data)

    monkeypatch.setattr(pull_module, "_encode", flipped)
    server, _ = pacs
    res = pull(_server(server.url + "?Modality=CT"), None, tmp_path / "out", pseudo=Pseudonymizer(KEY),
               pixels="keep", progress=False, echo=lambda m: None)
    assert res.fetched == 0 and {why for _, why in res.skipped} == {"verification failed: pixel data changed"}
    assert len(res.skipped) == N_PER_CLASS and not list((tmp_path / "out").rglob("*.dcm"))


def test_labels_keyed_by_accession_are_rewritten_to_join_the_pulled_files(pacs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from medmm.data.dicom.labels import labels_from_csv
    from medmm.data.dicom.scan import scan_folder

    server, idents = pacs
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["AccessionNumber", "modality"])
        w.writerows([i["AccessionNumber"], i["Modality"]] for i in idents)
        w.writerow(["ACC00000", "CT"])  # no such study: left out, counted
    out = tmp_path / "out"
    res = pull(_server(server.url), {}, out, pseudo=Pseudonymizer(KEY), labels=labels, progress=False,
               echo=lambda m: None)
    assert (res.labels_rows, res.labels_dropped) == (len(idents), 1)
    text = (out / "labels.csv").read_text()
    assert "ACC" not in text and text.splitlines()[0] == "StudyInstanceUID,modality"
    records, _ = scan_folder(out)
    table = labels_from_csv(records, out / "labels.csv", root=out)
    assert len(table) == len(idents) and not table.unlabelled
    truth = {Pseudonymizer(KEY).uid(i["SOPInstanceUID"]): i["Modality"] for i in idents}
    assert {r.sop_uid: table[r.path] for r in records} == truth


def test_labels_from_a_study_attribute_are_read_before_deidentification(pacs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, idents = pacs
    out = tmp_path / "out"
    res = pull(_server(server.url), {}, out, pseudo=Pseudonymizer(KEY), label_attribute="Modality",
               progress=False, echo=lambda m: None)
    with (out / "labels.csv").open() as f:
        rows = {r["StudyInstanceUID"]: r["Modality"] for r in csv.DictReader(f)}
    assert res.labels_rows == len(idents)
    assert rows == {Pseudonymizer(KEY).uid(i["StudyInstanceUID"]): i["Modality"] for i in idents}
    for identifying in ("AccessionNumber", "PatientName", "StudyDate", "PatientBirthDate", "StudyInstanceUID"):
        with pytest.raises(MedmmError, match="holds identifiers"):
            pull(_server(server.url), {}, tmp_path / "o2", pseudo=Pseudonymizer(KEY), label_attribute=identifying,
                 progress=False, echo=lambda m: None)
    assert not (tmp_path / "o2").exists()


def test_a_layout_by_label_gives_the_folder_reader_its_classes(pacs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from medmm.data.dicom.labels import labels_from_folders
    from medmm.data.dicom.scan import scan_folder

    server, idents = pacs
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["SeriesInstanceUID", "finding"])
        w.writerows([i["SeriesInstanceUID"], f"{i['Modality']} scan"] for i in idents[:-1])  # the last: no label
    out = tmp_path / "out"
    res = pull(_server(server.url), {}, out, pseudo=Pseudonymizer(KEY), labels=labels, layout="label",
               progress=False, echo=lambda m: None)
    assert res.fetched == len(idents) - 1 and res.skipped == [(Pseudonymizer(KEY).uid(idents[-1]["SOPInstanceUID"]),
                                                               "no label for this instance")]
    records, _ = scan_folder(out)
    table = labels_from_folders(records)
    truth = {Pseudonymizer(KEY).uid(i["SOPInstanceUID"]): f"{i['Modality']}_scan" for i in idents[:-1]}
    assert {r.sop_uid: table[r.path] for r in records} == truth
    with pytest.raises(MedmmError, match="exactly one label column"):
        two = tmp_path / "two.csv"
        two.write_text("StudyInstanceUID,a,b\n1.2,x,y\n")
        pull(_server(server.url), {}, tmp_path / "o2", pseudo=Pseudonymizer(KEY), labels=two, layout="label",
             progress=False, echo=lambda m: None)


def test_a_label_folder_holding_a_date_name_or_id_is_written_as_a_keyed_token(pacs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """#26's rule for folder names holds for `--layout label`: a label holding a date, a patient's name
    form, a patient ID or accession number (of any instance found) or the instance's institution becomes
    medmm deid's keyed folder token, the same one for every instance it labels; plain labels stay."""
    from medmm.data.dicom.paths import date_kinds

    server, idents = pacs
    planted = {0: "follow-up 2024-03-01", 1: "Quimby", 6: "Quimby", 2: idents[2]["PatientID"],
               3: f"{idents[5]['AccessionNumber']} review", 4: "Springfield Memorial"}
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["StudyInstanceUID", "finding"])
        w.writerows([i["StudyInstanceUID"], planted.get(n, i["Modality"])] for n, i in enumerate(idents))
    out = tmp_path / "out"
    said: list[str] = []
    pseudo = Pseudonymizer(KEY)
    res = pull(_server(server.url), {}, out, pseudo=pseudo, labels=labels, layout="label", progress=False,
               echo=said.append)
    assert (res.fetched, res.skipped) == (len(idents), [])
    folder_of = {str(pydicom.dcmread(f).SOPInstanceUID): f.relative_to(out).parts[0] for f in out.rglob("*.dcm")}
    keyed = {n: "D" + pseudo.token(label.replace(" ", "_"), "dir", 12) for n, label in planted.items()}
    for n, ident in enumerate(idents):
        assert folder_of[pseudo.uid(ident["SOPInstanceUID"])] == keyed.get(n, ident["Modality"]), n
    assert keyed[1] == keyed[6]  # one label, one folder: the class stays whole
    names = " ".join(sorted(set(folder_of.values()))).casefold()
    assert not date_kinds(names) and not any(v.casefold() in names for v in
                                             ("quimby", "springfield", idents[2]["PatientID"], "acc"))
    assert json.loads((out / "pull.json").read_text())["label_folders_keyed"] == 5
    assert any("5 label folder name(s) held a date, a name or an ID" in m for m in said)


def _fusion_table(path: Path, idents: list[dict[str, str]]) -> None:
    """A fusion table naming 10 of the 12 planted studies by study UID, accession, series or
    instance UID, plus one unknown study; the label is the modality, age a tabular feature."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "image", "age", "label"])
        for n, i in enumerate(idents[:10]):
            cell = [i["StudyInstanceUID"], i["AccessionNumber"], i["SeriesInstanceUID"], i["SOPInstanceUID"]][n % 4]
            w.writerow([f"r{n}", cell, 40 + n, i["Modality"]])
        w.writerow(["r10", "1.2.826.0.1.3680043.8.498.99", 61, "CT"])  # the PACS does not hold it


def test_a_table_image_column_of_uids_is_pulled_and_rewritten_to_the_deidentified_files(  # type: ignore[no-untyped-def]
        pacs, tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medmm.pacs.local import local_table

    server, idents = pacs
    monkeypatch.setenv("MEDMM_DEID_KEY_FILE", str(key_file))
    table = tmp_path / "pairs.csv"
    _fusion_table(table, idents)
    said: list[str] = []
    pseudo = Pseudonymizer(KEY)
    with local_table(table, "image", server.url, progress=False, echo=said.append) as local:
        assert local.pulled.fetched == 10 and local.pulled.found == 10  # only what the table names
        with local.path.open() as f:
            rows = list(csv.DictReader(f))
        assert [r["id"] for r in rows] == [f"r{n}" for n in range(11)] and rows[10]["image"] == ""
        for n, (row, ident) in enumerate(zip(rows, idents[:10])):
            target = local.path.parent / row["image"]
            files = [target] if target.is_file() else sorted(target.rglob("*.dcm"))
            assert len(files) == 1, row["image"]
            ds = pydicom.dcmread(files[0])
            assert ds.SOPInstanceUID == pseudo.uid(ident["SOPInstanceUID"]) and ds.PatientIdentityRemoved == "YES"
            assert row["age"] == str(40 + n) and row["label"] == ident["Modality"]
        text = local.path.read_text()
        assert not any(i[k] in text for i in idents for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                               "SOPInstanceUID", "AccessionNumber"))
        folder = local.path.parent
    assert not folder.exists()  # removed when the block ends
    assert any("1 image cell(s) of pairs.csv matched no pulled instance" in m for m in said)
    with pytest.raises(MedmmError, match="needs --data to be a CSV or TSV"), \
            local_table(tmp_path / "pairs.parquet", "image", server.url):
        pass
    with pytest.raises(MedmmError, match="no image column 'img'"), local_table(table, "img", server.url):
        pass


@pytest.mark.slow
def test_run_fusion_with_an_image_source_trains_on_the_pulled_deidentified_studies(  # type: ignore[no-untyped-def]
        pacs, tmp_path: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`medmm run fusion --set data.image_source=dicomweb+...`: image + tabular, 1 epoch at 32 px; predict,
    evaluate and explain on the same table pull its images the same way; no output holds a source UID,
    accession number or patient ID."""
    from tests.conftest import cli

    server, idents = pacs
    table = tmp_path / "pairs.csv"
    _fusion_table(table, idents)
    run = tmp_path / "run"
    out = cli("run", "fusion", "--data", str(table), "--out", str(run), "--set", f"data.image_source={server.url}",
                  "--set", "data.text_column=null", "--set", "data.tabular_columns=[age]", "--set", "data.id_column=id",
                  "--set", "model.mode=finetune", "--set", "model.image_backbone=resnet18",
                  "--set", "model.image_pretrained=none", "--set", "data.size=32", "--set", "engine.epochs=1",
                  "--set", "engine.max_steps=2", "--set", "engine.bootstrap=20", "--quiet",
                  env={"MEDMM_DEID_KEY_FILE": str(key_file)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "10 instance(s) pulled and de-identified" in out.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "done" and any((run / "checkpoints").iterdir())
    with (run / "predictions.csv").open() as f:
        assert {r["id"] for r in csv.DictReader(f)} <= {f"r{n}" for n in range(11)}
    pred = tmp_path / "pred.csv"  # predict pulls the table's images the same way (the run's data.image_source)
    out = cli("predict", str(run), "--data", str(table), "--out", str(pred), env={"MEDMM_DEID_KEY_FILE": str(key_file)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "10 instance(s) pulled and de-identified" in out.stderr
    with pred.open() as f:
        assert [r["id"] for r in csv.DictReader(f)] == [f"r{n}" for n in range(11)]
    # evaluate and explain read the same table the same way (in this process: no second torch start-up)
    monkeypatch.setenv("MEDMM_DEID_KEY_FILE", str(key_file))
    assert main(["evaluate", str(run), "--data", str(table), "--out", str(tmp_path / "eval"), "--no-card"]) == 0
    assert "10 instance(s) pulled and de-identified" in capsys.readouterr().err
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["provenance"]["units"] == 11
    assert main(["explain", str(run), "--data", str(table), "--out", str(tmp_path / "explain"), "--limit", "1",
                 "--split", "all"]) == 0
    assert "10 instance(s) pulled and de-identified" in capsys.readouterr().err
    summary = json.loads((tmp_path / "explain" / "summary.json").read_text())
    assert summary["methods"]["image"] == "Grad-CAM" and list((tmp_path / "explain" / "overlays").glob("*.png"))
    blob = "".join(p.read_text(errors="ignore") for p in [*run.rglob("*"), pred, *(tmp_path / "eval").rglob("*"),
                                                          *(tmp_path / "explain").rglob("*")]
                   if p.is_file() and p.stat().st_size < 5_000_000)
    for i in idents:
        for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "AccessionNumber", "PatientID"):
            assert i[k] not in blob, k


def test_an_interrupted_pull_resumes_fetching_only_what_is_missing(pacs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, idents = pacs
    srv = _server(server.url)
    calls = Counter()
    real = srv.retrieve

    def dying(ref):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt  # the user's Ctrl-C (or a kill) mid-pull
        return real(ref)

    srv.retrieve = dying  # type: ignore[method-assign]
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        pull(srv, {}, out, pseudo=Pseudonymizer(KEY), workers=1, progress=False, echo=lambda m: None)
    lines = (out / ".medmm-pull" / "manifest.jsonl").read_text().splitlines()
    first = len(lines)
    assert 1 <= first <= 5
    victim = out / json.loads(lines[0])["path"]
    for other in (Pseudonymizer(b"x" * 32), None):  # a killed pull is resumed with its own key only
        with pytest.raises(MedmmError, match="another de-identification key"):
            pull(_server(server.url), {}, out, pseudo=other, progress=False, echo=lambda m: None)
    victim.write_bytes(victim.read_bytes()[:-10])  # a damaged file fails its fingerprint: fetched again
    res = pull(_server(server.url), {}, out, pseudo=Pseudonymizer(KEY), progress=False, echo=lambda m: None)
    assert (res.already, res.fetched) == (first - 1, len(idents) - first + 1)
    assert len(list(out.rglob("*.dcm"))) == len(idents) and pydicom.dcmread(victim).PatientIdentityRemoved == "YES"
    again = pull(_server(server.url), {}, out, pseudo=Pseudonymizer(KEY), progress=False, echo=lambda m: None)
    assert (again.already, again.fetched) == (len(idents), 0)


class _Flaky(BaseHTTPRequestHandler):
    """A proxy to Orthanc that answers 503 for some instances and 429 once for another."""

    upstream = ""
    broken: ClassVar[set[str]] = set()
    once: ClassVar[set[str]] = set()
    token: ClassVar[str | None] = None  # a bearer token the proxy requires (an OAuth-fronted PACS)
    delay: ClassVar[float] = 0.0  # seconds before each instance retrieval (a slow PACS)

    def do_GET(self) -> None:
        import time

        import requests

        if self.delay and "/instances/" in self.path:  # WADO-RS only (the QIDO search is /instances?...)
            time.sleep(self.delay)

        if self.token is not None and self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return

        for uid in list(self.broken) + list(self.once):
            if f"/instances/{uid}" in self.path:
                if uid in self.once:
                    self.once.discard(uid)
                    code = 429
                else:
                    code = 503
                self.send_response(code)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        r = requests.get(self.upstream + self.path, headers={"Accept": self.headers.get("Accept", "*/*")}, timeout=30)
        self.send_response(r.status_code)
        self.send_header("Content-Type", r.headers.get("Content-Type", "application/octet-stream"))
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    def log_message(self, *args: object) -> None:
        pass


def test_a_5xx_on_some_instances_lists_them_in_skipped_csv_and_a_429_is_retried(pacs, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                               caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.DEBUG)  # a user's debug logging must still not show a UID of a retried URL
    server, idents = pacs
    broken = {idents[1]["SOPInstanceUID"], idents[8]["SOPInstanceUID"]}
    handler = type("Flaky", (_Flaky,), {"upstream": server.rest, "broken": broken,
                                        "once": {idents[4]["SOPInstanceUID"]}})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        url = f"dicomweb+http://127.0.0.1:{proxy.server_address[1]}/dicom-web"
        res = pull(_server(url, retries=2), {}, tmp_path / "out", pseudo=Pseudonymizer(KEY), progress=False,
                   echo=lambda m: None)
    finally:
        proxy.shutdown()
    pseudo = Pseudonymizer(KEY)
    with (tmp_path / "out" / "skipped.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["SOPInstanceUID"] for r in rows} == {pseudo.uid(u) for u in broken}
    assert all("HTTP 503" in r["reason"] for r in rows)
    assert res.fetched == len(idents) - 2  # the 429 one was retried and fetched
    assert not any(u in (tmp_path / "out" / "skipped.csv").read_text() for u in broken)
    assert json.loads((tmp_path / "out" / "pull.json").read_text())["complete"] is False
    assert not any(i["SOPInstanceUID"] in caplog.text or i["StudyInstanceUID"] in caplog.text for i in idents)


@pytest.mark.slow
def test_a_sigkilled_medmm_pull_is_resumed_by_a_second_pull_fetching_only_what_is_missing(
        pacs, tmp_path: Path, key_file: Path) -> None:  # type: ignore[no-untyped-def]
    """A real `medmm pull` child process is SIGKILLed mid-run (no handler runs, no report written);
    a second `medmm pull` into the same folder keeps every fingerprinted file and fetches the rest."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import cli

    server, idents = pacs
    handler = type("Slow", (_Flaky,), {"upstream": server.rest, "broken": set(), "once": set(), "delay": 0.4})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    url = f"dicomweb+http://127.0.0.1:{proxy.server_address[1]}/dicom-web"
    out = tmp_path / "out"
    manifest = out / ".medmm-pull" / "manifest.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MEDMM_DEID_KEY_FILE": str(key_file)}
    try:
        child = subprocess.Popen([sys.executable, "-m", "medmm", "pull", url, "--out", str(out), "--workers", "1",
                                  "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if manifest.is_file() and len(manifest.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert child.poll() is None, "the pull ended before it could be killed"
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        first = len([line for line in manifest.read_text().splitlines() if line.endswith("}")])
        assert 3 <= first < len(idents) and not (out / "pull.json").exists()
        kept = {f: f.stat().st_mtime_ns for f in out.rglob("*.dcm")}
        assert len(kept) >= first
        handler.delay = 0.0
        done = cli("pull", url, "--out", str(out), "--workers", "2", "--quiet", env={"MEDMM_DEID_KEY_FILE": str(key_file)})
    finally:
        proxy.shutdown()
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(idents) - first} instance(s) pulled de-identified" in done.stdout
    assert f"{first} already there; 0 skipped" in done.stdout
    report = json.loads((out / "pull.json").read_text())
    assert (report["instances_already_here"], report["instances_fetched"], report["complete"]) == \
        (first, len(idents) - first, True)
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == len(idents) and not list(out.rglob("*.part"))
    fingerprinted = {json.loads(line)["path"] for line in manifest.read_text().splitlines()[:first]}
    assert all(kept[out / rel] == (out / rel).stat().st_mtime_ns for rel in fingerprinted)  # not fetched again
    blob = b"".join(f.read_bytes() for f in out.rglob("*") if f.is_file())
    assert not any(v.encode() in blob for v in _identifiers(idents))


class _SeriesProxy(_Flaky):
    """A proxy that counts series and instance retrievals and can break a series request: ``fail``
    (503, every try), ``cut`` (the first ``cut_at`` bytes of the answer, then the connection is closed)."""

    calls: ClassVar[Counter[str]] = Counter()
    series_mode: ClassVar[str] = ""
    cut_at: ClassVar[int] = 0

    def do_GET(self) -> None:
        import requests

        kind = "instance" if "/instances/" in self.path else "series" if "/series/" in self.path else "search"
        self.calls[kind] += 1
        if kind != "series" or not self.series_mode:
            super().do_GET()
            return
        if self.series_mode == "fail":
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        r = requests.get(self.upstream + self.path, headers={"Accept": self.headers.get("Accept", "*/*")}, timeout=30)
        self.send_response(r.status_code)
        self.send_header("Content-Type", r.headers.get("Content-Type", ""))
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content[: self.cut_at])
        self.close_connection = True


@pytest.fixture(scope="module")
def series_pacs(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """An Orthanc holding one series of 5 instances (one patient, planted identity) and one single-instance
    series of another study; yields the server and the 6 source SOP UIDs (the big series' first, in order)."""
    from pydicom.uid import generate_uid

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("series-pacs")
    (root / "files").mkdir()
    sops = []
    for n in range(6):
        ds = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm")
        one = n == 5
        ds.PatientID, ds.PatientName = ("MRN55121", "Okafor^Chidi") if not one else ("MRN55122", "Okafor^Ada")
        ds.AccessionNumber = "ACC55121" if not one else "ACC55122"
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["series-st", str(one)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series-se", str(one)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["series-so", str(n)])
        ds.InstanceNumber = n + 1
        ds.save_as(root / "files" / f"{n}.dcm", enforce_file_format=True)
        sops.append(str(ds.SOPInstanceUID))
    with start_orthanc(root / "orthanc") as server:
        assert server is not None and server.upload(sorted((root / "files").glob("*.dcm"))) == 6
        yield server, sops


def _series_proxy(server: Orthanc, mode: str = "", cut_at: int = 0):  # type: ignore[no-untyped-def]
    handler = type("SeriesProxy", (_SeriesProxy,), {"upstream": server.rest, "broken": set(), "once": set(),
                                                    "calls": Counter(), "series_mode": mode, "cut_at": cut_at})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return proxy, handler, f"dicomweb+http://127.0.0.1:{proxy.server_address[1]}/dicom-web"


def test_a_series_comes_in_one_streamed_request_and_each_instance_is_fingerprinted(series_pacs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """5 instances of one series: one series request, no instance request; each file de-identified and in
    the manifest; an instance of the series the search did not select is read past, not written."""
    server, sops = series_pacs
    pseudo = Pseudonymizer(KEY)
    proxy, handler, url = _series_proxy(server)
    try:
        res = pull(_server(url), {}, tmp_path / "out", pseudo=pseudo, workers=2, progress=False, echo=lambda m: None)
        assert (res.fetched, res.skipped) == (6, [])
        assert (handler.calls["series"], handler.calls["instance"]) == (1, 1)  # the single-instance series: alone
        lines = [json.loads(x) for x in (tmp_path / "out" / ".medmm-pull" / "manifest.jsonl").read_text().splitlines()]
        assert sorted(x["key"] for x in lines) == sorted(pseudo.uid(u) for u in sops)
        blob = b"".join(f.read_bytes() for f in (tmp_path / "out").rglob("*") if f.is_file())
        for value in ("MRN55121", "MRN55122", "Okafor", "ACC55121", *sops):
            assert value.encode() not in blob, value
        assert all(pydicom.dcmread(tmp_path / "out" / x["path"]).PatientIdentityRemoved == "YES" for x in lines)
        # a selection of 3 of the 5: still one series request; the 2 others are not written
        handler.calls.clear()
        res = pull(_server(url), {}, tmp_path / "some", pseudo=pseudo, progress=False, echo=lambda m: None,
                   select=lambda r: r.sop in sops[1:4])
        assert (res.fetched, res.skipped, handler.calls["series"], handler.calls["instance"]) == (3, [], 1, 0)
        assert sorted(p.stem for p in (tmp_path / "some").rglob("*.dcm")) == sorted(pseudo.uid(u) for u in sops[1:4])
        assert "skipped.csv" not in {p.name for p in (tmp_path / "some").iterdir()}
    finally:
        proxy.shutdown()


@pytest.mark.parametrize("mode", ["fail", "cut"])
def test_a_broken_series_request_falls_back_to_the_missing_instances_alone(series_pacs, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                           mode: str) -> None:
    """A series request answered 503 (after the retries), or cut after its first instances: the instances it
    brought are kept (fingerprinted), the others retrieved one by one; a second pull fetches nothing."""
    server, sops = series_pacs
    pseudo = Pseudonymizer(KEY)
    whole = len(requests_get_series(server, sops[0]))
    proxy, handler, url = _series_proxy(server, mode, cut_at=int(whole * 0.55))
    try:
        srv = _server(url, retries=1)
        srv.client.set_chunk_size(16 * 1024)  # read in pieces smaller than one instance, as for a large series
        res = pull(srv, {}, tmp_path / "out", pseudo=pseudo, workers=1, progress=False, echo=lambda m: None)
        assert (res.fetched, res.skipped) == (6, [])
        streamed = 5 - (handler.calls["instance"] - 1)  # the single-instance series is always alone
        assert (streamed == 0) if mode == "fail" else (1 <= streamed <= 4), (mode, handler.calls)
        manifest = (tmp_path / "out" / ".medmm-pull" / "manifest.jsonl").read_text().splitlines()
        keys = sorted(pseudo.uid(u) for u in sops)
        assert sorted(json.loads(x)["key"] for x in manifest) == keys  # each once
        assert sorted(p.stem for p in (tmp_path / "out").rglob("*.dcm")) == keys
        again = pull(_server(url), {}, tmp_path / "out", pseudo=pseudo, progress=False, echo=lambda m: None)
        assert (again.already, again.fetched) == (6, 0)
    finally:
        proxy.shutdown()


def requests_get_series(server: Orthanc, sop: str) -> bytes:
    """The whole WADO-RS answer of the series holding ``sop``, straight from Orthanc."""
    import requests

    ref = next(r for r in _server(server.url).instances() if r.sop == sop)
    return requests.get(f"{server.dicomweb}/studies/{ref.study}/series/{ref.series}",
                        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                        timeout=30).content


def test_a_bearer_token_from_a_file_is_sent_and_a_wrong_one_is_one_line(pacs, tmp_path: Path, key_file: Path,  # type: ignore[no-untyped-def]
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    server, _ = pacs
    handler = type("Bearer", (_Flaky,), {"upstream": server.rest, "broken": set(), "once": set(),
                                         "token": "t0ken-from-the-idp"})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        url = f"dicomweb+http://127.0.0.1:{proxy.server_address[1]}/dicom-web?Modality=CT"
        token = tmp_path / "token"
        token.write_text("wrong-token\n")
        args = ["pull", url, "--out", str(tmp_path / "out"), "--key-file", str(key_file), "--quiet",
                "--token-file", str(token)]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "refused access (HTTP 401)" in err[0] and "wrong-token" not in err[0]
        token.write_text("t0ken-from-the-idp\n")
        assert main(args) == 0
    finally:
        proxy.shutdown()
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == N_PER_CLASS


def test_auth_required_and_wrong_credentials_are_one_line_errors(tmp_path: Path, key_file: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with start_orthanc(tmp_path / "orthanc", users={"radiology": "c0rrect-horse"}) as server:
        assert server is not None
        server.upload([Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"])
        out = tmp_path / "out"
        assert main(["pull", server.url, "--out", str(out), "--key-file", str(key_file), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "refused access (HTTP 401)" in err[0]
        pw = tmp_path / "pw"
        pw.write_text("wrong-horse")
        assert main(["pull", server.url, "--out", str(out), "--key-file", str(key_file), "--user", "radiology",
                     "--password-file", str(pw), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "HTTP 401" in err[0] and "wrong-horse" not in err[0]
        pw.write_text("c0rrect-horse")
        env = {"MEDMM_DICOMWEB_USER": "radiology", "MEDMM_DICOMWEB_PASSWORD_FILE": str(pw)}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            assert main(["pull", server.url, "--out", str(out), "--key-file", str(key_file), "--quiet"]) == 0
        finally:
            for k, v in old.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        assert len(list(out.rglob("*.dcm"))) == 1


def test_new_key_file_helper_is_the_deid_one(tmp_path: Path) -> None:
    # pull and deid share one key format: a key made by medmm deid's helper works for pull
    path = new_key_file(tmp_path / "k")
    assert len(bytes.fromhex(path.read_text().strip())) == 32


@pytest.mark.slow
def test_train_from_the_pacs_predict_and_push_the_sr_back(tmp_path: Path, key_file: Path) -> None:
    """run image-cls on a DICOMweb source (1 epoch, 32 px), predict from it with --push --push-gradcam: the
    SR and the Grad-CAM secondary capture are found by QIDO-RS in the source study, with the source
    patient; evaluate from the PACS."""
    import requests

    from tests.conftest import cli

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    idents = _planted(tmp_path / "files")
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["StudyInstanceUID", "modality"])
        w.writerows([i["StudyInstanceUID"], i["Modality"]] for i in idents)
    env = {"MEDMM_DEID_KEY_FILE": str(key_file)}
    with start_orthanc(tmp_path / "orthanc") as server:
        assert server is not None
        server.upload(sorted((tmp_path / "files").glob("*.dcm")))
        run = tmp_path / "run"
        out = cli("run", "image-cls", "--data", server.url, "--out", str(run), "--set", f"data.labels={labels}",
                      "--set", "model.backbone=test_resnet", "--set", "model.pretrained=none", "--set", "data.size=32",
                      "--set", "engine.epochs=1", "--set", "engine.bootstrap=20", "--quiet", env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "12 instance(s) pulled and de-identified" in out.stderr
        splits = (run / "splits.csv").read_text()
        assert all(i["PatientID"] not in splits and i["StudyInstanceUID"] not in splits for i in idents)
        pred = tmp_path / "pred.csv"
        out = cli("predict", str(run), "--data", server.url + "?Modality=CT", "--out", str(pred),
                      "--push", server.url, "--push-gradcam", env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        # the 6 CT images are one picture (CT_small.dcm): medmm explain explains identical inputs once
        assert "6 DICOM SR report(s) and 1 Grad-CAM secondary capture(s) stored" in out.stdout
        assert "7 found again by QIDO-RS" in out.stdout
        captures = requests.get(f"{server.dicomweb}/instances", params={"Modality": "OT"}, timeout=10).json()
        ct = {i["StudyInstanceUID"]: i["PatientID"] for i in idents if i["Modality"] == "CT"}
        assert len(captures) == 1 and ct.get(captures[0]["0020000D"]["Value"][0]) == captures[0]["00100020"]["Value"][0]
        assert not any(i["SOPInstanceUID"] in pred.read_text() for i in idents)  # the CSV stays keyed
        found = requests.get(f"{server.dicomweb}/instances", params={"Modality": "SR"}, timeout=10).json()
        studies = {item["0020000D"]["Value"][0] for item in found}
        assert studies == {i["StudyInstanceUID"] for i in idents if i["Modality"] == "CT"}
        patients = {item["00100020"]["Value"][0] for item in found}
        assert patients == {i["PatientID"] for i in idents if i["Modality"] == "CT"}
        by_accession = tmp_path / "by_accession.csv"
        by_accession.write_text("AccessionNumber,modality\n" + "".join(f"{i['AccessionNumber']},{i['Modality']}\n"
                                                                        for i in idents))
        out = cli("evaluate", str(run), "--data", server.url, "--labels", str(by_accession), "--out",
                      str(tmp_path / "eval"), "--no-card", env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        # the Grad-CAM capture is an image of a labelled study now: a search that does not narrow it out
        # (e.g. Modality=CT) pulls it too
        assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["provenance"]["units"] == len(idents) + 1
        assert len(requests.get(f"{server.dicomweb}/instances", params={"Modality": "SR"}, timeout=10).json()) == 6


def test_push_check_refuses_studies_the_target_does_not_hold(pacs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from medmm.pacs.push import check_target

    server, _ = pacs
    known = tmp_path / "known"
    _planted(known)  # the same identified files the PACS holds
    check_target(server.url, known)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    ds = pydicom.dcmread(next(known.glob("*.dcm")))
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.save_as(stranger / "x.dcm")
    with pytest.raises(MedmmError, match="does not hold 1 of the studies"):
        check_target(server.url, stranger)
    with pytest.raises(MedmmError, match="without a query"):
        check_target(server.url + "?Modality=CT", known)
    # predicting on de-identified files cannot reference what the PACS knows: refused before predicting
    pulled = tmp_path / "pulled"
    pull(_server(server.url + "?Modality=MR"), None, pulled, pseudo=Pseudonymizer(KEY), progress=False,
         echo=lambda m: None)
    with pytest.raises(MedmmError, match=r"de-identified \(PatientIdentityRemoved=YES\).*Nothing was sent"):
        check_target(server.url, pulled)


def test_gradcam_overlays_become_secondary_captures_in_the_source_study(tmp_path: Path) -> None:
    """medmm explain's overlay of a file becomes an RGB Secondary Capture in that file's study (its
    patient and study attributes, one new series per study), referencing the source image."""
    import numpy as np
    from PIL import Image

    from medmm.pacs.push import gradcam_captures

    idents = _planted(tmp_path / "data" / "s")[:2]
    explain = tmp_path / "explain"
    (explain / "overlays").mkdir(parents=True)
    Image.fromarray(np.full((32, 68, 3), 200, dtype=np.uint8)).save(explain / "overlays" / "0000-x.png")
    (explain / "overlays.csv").write_text("unit,example,input,png\n"
                                          "s/00.dcm,0,image,overlays/0000-x.png\ns/01.dcm,1,image,overlays/0000-x.png\n"
                                          "gone.dcm,2,image,overlays/0000-x.png\n")
    files = gradcam_captures(explain, tmp_path / "data", tmp_path / "sc", model_name="cxr")
    assert len(files) == 2  # the unit without a file has no source image
    for path, ident in zip(files, idents):
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.Modality == "OT"
        assert (ds.StudyInstanceUID, ds.PatientID, ds.AccessionNumber) == \
            (ident["StudyInstanceUID"], ident["PatientID"], ident["AccessionNumber"])
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == ident["SOPInstanceUID"]
        assert ds.pixel_array.shape == (32, 68, 3) and int(ds.pixel_array[0, 0, 0]) == 200
    assert len({pydicom.dcmread(f).SeriesInstanceUID for f in files}) == 2  # two studies, two series
    with pytest.raises(MedmmError, match="no Grad-CAM overlay"):
        gradcam_captures(tmp_path / "nothing", tmp_path / "data", tmp_path / "sc2")


def test_reidentify_maps_keyed_uids_back_in_memory() -> None:
    from pydicom.dataset import Dataset

    from medmm.pacs.push import reidentify

    pseudo = Pseudonymizer(KEY)
    ds, ref = Dataset(), Dataset()
    ds.StudyInstanceUID, ds.PatientID, ds.PatientIdentityRemoved = pseudo.uid("1.2.3"), pseudo.patient_id("MRN1"), "YES"
    ref.ReferencedSOPInstanceUID = pseudo.uid("1.2.3.4")
    ds.CurrentRequestedProcedureEvidenceSequence = [ref]
    n = reidentify(ds, {pseudo.uid("1.2.3"): "1.2.3", pseudo.uid("1.2.3.4"): "1.2.3.4"},
                   {"PatientID": "MRN1", "PatientName": "Quimby^Harriet"})
    assert n == 2 and ds.StudyInstanceUID == "1.2.3" and ds.PatientID == "MRN1"
    assert ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSOPInstanceUID == "1.2.3.4"
    assert "PatientIdentityRemoved" not in ds


@pytest.mark.slow
def test_pull_blanks_burned_in_text_as_medmm_deid_does(tmp_path: Path) -> None:
    """pydicom's US1_UNCR.dcm has "BAPTIST MED CTR" burned into its pixels: the pull reads it with
    OCR, blanks it, reads again, and writes BurnedInAnnotation=NO + Clean Pixel Data (DCM 113101)."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("rapidocr_onnxruntime")
    import importlib.util

    spec = importlib.util.find_spec("data_store")  # pydicom-data, walked: never fetched
    source = Path(spec.origin).parent / "data" / "US1_UNCR.dcm" if spec and spec.origin else Path("-")
    if not source.is_file():
        pytest.skip("pydicom-data (US1_UNCR.dcm) is not installed")
    with start_orthanc(tmp_path / "orthanc") as server:
        assert server is not None and server.upload([source]) == 1
        res = pull(_server(server.url), {}, tmp_path / "out", pseudo=Pseudonymizer(KEY), progress=False,
                   echo=lambda m: None)
        kept = pull(_server(server.url), {}, tmp_path / "keep", pseudo=Pseudonymizer(KEY), progress=False,
                    echo=lambda m: None, pixels="keep")
    assert (res.fetched, res.pixels_scanned, kept.pixels_scanned) == (1, 1, 0)
    out = pydicom.dcmread(next((tmp_path / "out").rglob("*.dcm")))
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in {str(i.CodeValue) for i in out.DeidentificationMethodCodeSequence}
    original = pydicom.dcmread(source).pixel_array
    assert (out.pixel_array != original).any()  # the text box was blanked
    assert (pydicom.dcmread(next((tmp_path / "keep").rglob("*.dcm"))).pixel_array == original).all()


@pytest.mark.slow
def test_pull_leaves_a_text_free_secondary_capture_untouched(tmp_path: Path) -> None:
    """pydicom's JPEG2000.dcm (a 1024x256 bone-scan secondary capture, no text) goes through the pixel
    pass with nothing blanked: OCR detection at the image's own size finds no box (scaled up 2.9x, as
    RapidOCR's default does, it found a false one on the bladder and blanked it over 3 rounds)."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("rapidocr_onnxruntime")
    source = Path(pydicom.__file__).parent / "data" / "test_files" / "JPEG2000.dcm"
    with start_orthanc(tmp_path / "orthanc") as server:
        assert server is not None and server.upload([source]) == 1
        res = pull(_server(server.url), {}, tmp_path / "out", pseudo=Pseudonymizer(KEY), progress=False,
                   echo=lambda m: None)
    assert (res.fetched, res.pixels_scanned, res.skipped) == (1, 1, [])
    out = pydicom.dcmread(next((tmp_path / "out").rglob("*.dcm")))
    assert out.BurnedInAnnotation == "NO"
    assert (out.pixel_array == pydicom.dcmread(source).pixel_array).all()
