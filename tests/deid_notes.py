"""Synthetic clinical notes with planted identifiers of every type, and where each one is.

Used by ``tests/test_deid_text.py`` and ``bench/deid_text.py``. Every note is built piece by piece,
so the character span and the type of each planted identifier are known exactly. Non-identifying
look-alikes (vital signs, doses, fractions, ages up to 89, eponyms, spine levels, years) are mixed
in to measure precision. Name kinds are kept apart because they are caught differently:
``NAME`` (the patient, whose name is in the CSV's name columns), ``NAME_CUED`` (clinicians after a
title, a "signed by" cue or before ", MD") and ``NAME_BARE`` (a relative's first name with no cue,
caught only when it happens to be in the supplied names).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FIRST = ["James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth",
         "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Charles", "Karen",
         "Daniel", "Nancy", "Matthew", "Lisa", "Anthony", "Betty", "Mark", "Margaret", "Donald", "Sandra",
         "Steven", "Ashley", "Andrew", "Kimberly", "Joshua", "Emily", "Kenneth", "Donna", "Kevin", "Michelle",
         "Priya", "Wei", "Olusegun", "Aisha", "Mateo", "Sofia", "Hiroshi", "Ingrid", "Dmitri", "Fatima"]
LAST = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
        "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
        "Jackson", "Martin",
        "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson",
        "Okafor", "Nakamura", "Kowalski", "O'Brien", "Nguyen", "Patel", "Schmidt", "Rossi", "Ivanova",
        "Haddad"]
# clinicians and relatives come from their own pools: they are never in the CSV's name columns
CLIN_FIRST = ["Alice", "Benjamin", "Chloe", "Dev", "Eleanor", "Farid", "Grace", "Hannah", "Ivan", "Julia",
              "Kofi",
              "Leila", "Marcus", "Nadia", "Oscar", "Rina", "Samuel", "Tara", "Umar", "Vera"]
CLIN_LAST = ["Wong", "Fischer", "Adeyemi", "Laurent", "Bergstrom", "Castillo", "Dubois", "Eriksen",
             "Fontaine",
             "Goldberg", "Hoffman", "Iyer", "Jensen", "Kaplan", "Lindqvist", "Mendoza", "Novak", "Oyelaran"]
REL_FIRST = ["Rosa", "Tom", "Ellen", "Frank", "Gloria", "Harold", "Irene", "Jack", "Lucy", "Walter", "Nora",
             "Victor", "Agnes", "Bruno", "Clara", "Felix", "Greta", "Hugo", "Iris", "Otto"]
STREETS = ["Oak", "Maple", "Cedar", "Pine", "Elm", "Washington", "Lake", "Hill", "Park", "Main", "Sunset",
           "Highland"]
SUFFIXES = ["Street", "St", "Avenue", "Ave", "Road", "Rd", "Lane", "Drive", "Blvd", "Court"]
CITIES = [("Springfield", "IL"), ("Boston", "MA"), ("Austin", "TX"), ("Denver", "CO"), ("Portland", "OR"),
          ("Madison", "WI"), ("Raleigh", "NC"), ("Columbus", "OH"), ("Tucson", "AZ"), ("Albany", "NY")]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
COMPLAINTS = ["chest pain", "shortness of breath", "a productive cough", "abdominal pain", "headache",
              "syncope", "fever and chills", "back pain", "palpitations", "dizziness"]
DISTRACTORS = ["BP 128/76, HR 72, RR 16, SpO2 97% on room air.", "Hb 13.2 g/dL, WBC 7.4, platelets 245.",
               "Metformin 500 mg twice daily; take 1/2 tablet of lisinopril.", "Disc bulge at L4-L5.",
               "T2-weighted images show no acute change.", "A 3 cm lesion in segment 7.", "Murmur grade 2/6.",
               "ICD-10 J18.9.", "Symptoms began 2 weeks ago.", "Prior surgery in 2019.",
               "History of Parkinson disease and Graves disease.", "Foley catheter removed.",
               "Follow-up in 6 months.", "PSA 4.1 ng/mL.", "Creatinine 1.1 mg/dL, eGFR 68.",
               "The patient may need physical therapy.", "CT chest with contrast, 2.5 mm slices.",
               "Ejection fraction 55-60%.", "Lung-RADS 2.", "BMI 27.4.", "Room 12, bed B.",
               "Seen by Physical Therapy today.", "Vaccine lot 4451230 recorded.", "Appointment at 14:30.",
               "Stent 3.0 x 18 mm placed.", "Gleason 3+4=7.", "Bethesda category II.",
               "Hodgkin lymphoma in remission.",
               "Patient Education provided.", "Aged 67 at first diagnosis.", "Discussed with Cardiology."]


@dataclass
class Note:
    patient_id: str
    first_name: str
    last_name: str
    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, kind)


class _Builder:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.spans: list[tuple[int, int, str]] = []
        self.pos = 0

    def text(self, s: str) -> None:
        self.parts.append(s)
        self.pos += len(s)

    def phi(self, s: str, kind: str) -> None:
        self.spans.append((self.pos, self.pos + len(s), kind))
        self.text(s)


def _date(rng: random.Random) -> str:
    y, m, d = rng.randint(1995, 2025), rng.randint(1, 12), rng.randint(1, 28)
    mon = MONTHS[m - 1]
    fmt = rng.randrange(9)
    return [f"{y}-{m:02d}-{d:02d}", f"{m}/{d}/{y}", f"{m:02d}/{d:02d}/{y % 100:02d}", f"{m}-{d}-{y}",
            f"{mon} {d}, {y}", f"{d} {mon} {y}", f"{mon[:3]}. {d}{'th' if d > 3 else 'rd'}, {y}",
            f"{mon} {y}", f"{y}{m:02d}{d:02d}"][fmt]


def _phone(rng: random.Random) -> str:
    a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    return [f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}", f"+1 {a} {b} {c:04d}",
            f"{a}-{b}-{c:04d} ext. {rng.randint(10, 999)}", f"{b}-{c:04d}"][rng.randrange(6)]


def _id(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(10**6, 10**9 - 1)
    return [("MRN: ", f"{n:08d}"), ("MRN ", f"{n}"), ("Medical record number ", f"{n}"),
            ("Acct # ", f"A{n % 10**6:06d}"), ("SSN ", f"{n % 900 + 100}-{n % 90 + 10}-{n % 9000 + 1000}"),
            ("Insurance ID: ", f"XK{n}"), ("Please file the scan under ", f"{n:09d}"),
            ("Encounter no. ", f"{n}")][rng.randrange(8)]


def _hard(b: _Builder, rng: random.Random) -> None:
    """One identifier in a form the rules are known not to cover (so the table shows real misses)."""
    form = rng.randrange(8)
    if form == 0:
        b.text("Last seen on ")
        b.phi(f"{rng.randint(1, 12)}/{rng.randint(1, 28)}", "DATE")  # no year
    elif form == 1:
        b.text("Her mother is ")
        b.phi(rng.choice(["ninety-two", "ninety-five", "one hundred"]), "AGE")
        b.text(" years old")
    elif form == 2:
        b.text("Ref #")
        b.phi(str(rng.randint(10000, 99999)), "ID")
    elif form == 3:
        b.text("Lives on ")
        b.phi(f"{rng.choice(STREETS)} {rng.choice(SUFFIXES)}", "ADDRESS")
    elif form == 4:
        b.text("Daughter: ")
        b.phi(f"{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}", "PHONE")
    elif form == 5:
        b.text("Write to ")
        b.phi(f"{rng.choice(REL_FIRST).lower()} at example dot org", "EMAIL")
    elif form == 6:
        b.text("Moved here from ")
        b.phi(f"{rng.randint(10000, 99999)}", "ZIP")
    else:
        b.text("Visit on the ")
        b.phi(f"{rng.randint(4, 28)}th", "DATE")
    b.text(". ")


def make_notes(n: int = 400, seed: int = 0) -> list[Note]:
    """``n`` notes of 5-9 sentences; every planted identifier span recorded with its kind."""
    rng = random.Random(seed)
    notes: list[Note] = []
    for i in range(n):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        pid = f"{rng.randint(10**5, 10**6 - 1)}"
        b = _Builder()
        sentences = list(range(13))
        rng.shuffle(sentences)
        b.text(rng.choice(["Patient: ", "Name: ", "Pt "]))
        b.phi(f"{first} {last}" if rng.random() < 0.7 else last, "NAME")
        b.text(". ")
        age = rng.choice([rng.randint(20, 89), rng.randint(90, 104)])
        age_s = str(age)
        if rng.random() < 0.3:
            b.text(rng.choice(["Mr. ", "Ms. "]))
            b.phi(last, "NAME")
            b.text(" ")
        else:
            b.text("The patient ")
        b.text("is a ")
        b.phi(age_s, "AGE") if age > 89 else b.text(age_s)
        unit = rng.choice(["-year-old", " year old", " yo", " y/o"])
        b.text(f"{unit} presenting with {rng.choice(COMPLAINTS)}. ")
        for k in sentences[: rng.randint(5, 9)]:
            if k == 0:
                b.text(rng.choice(["DOB: ", "Admitted on ", "Seen in clinic ", "Follow-up scheduled for "]))
                b.phi(_date(rng), "DATE")
                b.text(". ")
            elif k == 1:
                cue, value = _id(rng)
                b.text(cue)
                b.phi(value, "ID")
                b.text(". ")
            elif k == 2:
                b.text(rng.choice(["Call ", "Contact daughter at ", "Fax: ", "Home phone "]))
                b.phi(_phone(rng), "PHONE")
                b.text(". ")
            elif k == 3:
                user = f"{first.lower()}.{last.lower().replace(chr(39), '')}{rng.randint(1, 99)}"
                b.text("Email ")
                domain = rng.choice(["example.org", "mail.example.com", "hospital.example.net"])
                b.phi(f"{user}@{domain}", "EMAIL")
                b.text(" or see ")
                b.phi(rng.choice(["https://mychart.example.org/p/", "http://portal.example.com/?id=",
                                  "www.example-clinic.com/patients/"]) + str(rng.randint(1000, 99999)), "URL")
                b.text(". ")
            elif k == 4:
                city, st = rng.choice(CITIES)
                b.text("Lives at ")
                street = f"{rng.randint(1, 9999)} {rng.choice(STREETS)} {rng.choice(SUFFIXES)}"
                if rng.random() < 0.3:
                    street += f", Apt {rng.randint(1, 40)}{rng.choice('ABC')}"
                b.phi(street, "ADDRESS")
                b.text(", ")
                b.phi(f"{city}, {st}", "ADDRESS")
                b.text(" ")
                b.phi(f"{rng.randint(10000, 99999)}", "ZIP")
                b.text(". ")
            elif k == 5:
                cf, cl = rng.choice(CLIN_FIRST), rng.choice(CLIN_LAST)
                form = rng.randrange(4)
                if form == 0:
                    b.text("Seen by Dr. ")
                    b.phi(f"{cf} {cl}", "NAME_CUED")
                elif form == 1:
                    b.text("Discussed with Dr ")
                    b.phi(cl, "NAME_CUED")
                elif form == 2:
                    b.text("Electronically signed by ")
                    b.phi(f"{cf} {cl}", "NAME_CUED")
                else:
                    b.text("Read by ")
                    b.phi(f"{cf} {cl}", "NAME_CUED")
                    b.text(", MD")
                b.text(". ")
            elif k == 6:
                b.text("Her " if rng.random() < 0.5 else "His ")
                b.text(rng.choice(["daughter ", "son ", "wife ", "husband "]))
                b.phi(rng.choice(REL_FIRST), "NAME_BARE")
                b.text(" will help at home. ")
            elif k == 7:
                b.text(rng.choice(["Previous study on ", "Compared with ", "Biopsy performed "]))
                b.phi(_date(rng), "DATE")
                b.text(". ")
            elif k == 8:
                old = rng.randint(90, 104)
                b.text("Mother died aged ")
                b.phi(str(old), "AGE")
                b.text("; father is ")
                b.text(f"{rng.randint(50, 89)} years old. ")
            elif k == 9:
                if rng.random() < 0.5:
                    b.phi(f"{last.upper()}, {first.upper()}", "NAME")
                else:
                    b.text("Patient ")
                    b.phi(first, "NAME")
                b.text(" tolerated the procedure well. ")
            elif k == 10:
                b.text("Mailing address: ")
                b.phi(f"P.O. Box {rng.randint(1, 9999)}", "ADDRESS")
                b.text(", ZIP ")
                b.phi(f"{rng.randint(10000, 99999)}-{rng.randint(1000, 9999)}", "ZIP")
                b.text(". ")
            elif k == 12:
                _hard(b, rng)
            else:
                b.text(rng.choice(DISTRACTORS) + " ")
        for _ in range(rng.randint(2, 4)):
            b.text(rng.choice(DISTRACTORS) + " ")
        notes.append(Note(pid, first, last, "".join(b.parts).strip(), b.spans))
    return notes


def as_rows(notes: list[Note]) -> list[dict[str, str]]:
    """CSV rows: note_id, patient_id, first_name, last_name, report."""
    return [{"note_id": str(i), "patient_id": n.patient_id, "first_name": n.first_name,
             "last_name": n.last_name, "report": n.text} for i, n in enumerate(notes)]
