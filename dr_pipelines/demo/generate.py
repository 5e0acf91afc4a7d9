"""Deterministic synthetic clinic data, streamed into the demo schema with COPY.

Same ``(clinics, scale, seed)`` -> byte-identical table contents: every value comes from
``random.Random`` streams seeded per table, ids are assigned explicitly in generation order,
and time is anchored to a fixed epoch (2024-01-01 UTC), never the wall clock. Identity columns
and sequences are moved past the generated ids afterwards, so later inserts do not collide.

Memory does not grow with ``scale``: a clinic's patients are generated in chunks of
``CHUNK_PATIENTS`` and each chunk's rows, pre-formatted as COPY text lines, are streamed
table by table (parents first, so the foreign keys hold) before the next chunk is made.
The whole load is one transaction: it is all there or not at all.

The data is synthetic. Names are drawn from shared pools, so the same names and the same
external ids (``P000001`` ...) appear in several tenants, as they do in real multi-tenant
databases; a few values are deliberately awkward for dump/restore code: unicode, a clinic
whose slug and name are full of quotes, backslashes and SQL metacharacters, text with tabs,
newlines and backslashes, and nullable text columns holding both NULL and ''.
"""

from __future__ import annotations

import json
import random
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

import psycopg
from psycopg import sql

from dr_pipelines.core.errors import ConfigError, DatabaseError
from dr_pipelines.core.migrate.runner import migrate
from dr_pipelines.core.pg.connect import connect
from dr_pipelines.demo.schema import MIGRATIONS_DIR

# -- knobs -------------------------------------------------------------------------------------

# scale=1.0 with 3 clinics is a few MB (tests); rows grow linearly with scale.
PATIENTS_PER_CLINIC = 50           # at scale 1.0, before the clinic's size weight (0.6 .. 1.4)
STAFF_PER_CLINIC = 4               # at scale 1.0 (at least 4 per clinic)
CHUNK_PATIENTS = 1000              # patients generated and streamed per round

# About 1 GB (pg_database_size) with BENCHMARK_CLINICS clinics; see benchmarks/demo_generate.py.
BENCHMARK_CLINICS = 20
BENCHMARK_SCALE = 54.0

EPOCH = date(2024, 1, 1)           # day 0, 00:00 UTC: all generated time is relative to it
SPAN_DAYS = 731                    # 2024-01-01 .. 2025-12-31: the audit_log partitions' range
AS_OF_DAY = 670                    # 2025-11-01, "today" of the data: later appointments are not held yet
IMPORT_DAY = -2                    # 2023-12-30: legacy import before go-live (lands in audit_log_default)

# Parents before children: the order rows are streamed in.
TABLES = (
    "clinics", "staff_users", "patients", "appointments", "visits", "clinical_notes", "prescriptions",
    "invoices", "invoice_lines", "payments", "attachments", "audit_log",
)
COLUMNS = {
    "clinics": ("id", "slug", "name", "jurisdiction", "timezone", "currency", "created_at"),
    "staff_users": ("id", "clinic_id", "email", "full_name", "role", "active", "created_at"),
    "patients": ("id", "clinic_id", "external_id", "given_name", "middle_name", "family_name", "date_of_birth",
                 "sex", "contact", "created_at"),
    "appointments": ("id", "clinic_id", "patient_id", "staff_user_id", "starts_at", "duration", "status", "reason",
                     "created_at"),
    "visits": ("id", "clinic_id", "appointment_id", "started_at", "ended_at"),
    "clinical_notes": ("id", "clinic_id", "visit_id", "author_id", "body", "structured", "created_at"),
    "prescriptions": ("id", "clinic_id", "visit_id", "prescriber_id", "drug", "dose", "dose_unit", "frequency",
                      "refills", "codes", "instructions", "prescribed_at"),
    "invoices": ("id", "clinic_id", "patient_id", "visit_id", "number", "issued_at", "currency", "total", "status"),
    "invoice_lines": ("id", "clinic_id", "invoice_id", "line_no", "code", "description", "quantity", "unit_price"),
    "payments": ("id", "clinic_id", "invoice_id", "amount", "method", "reference", "paid_at"),
    "attachments": ("id", "clinic_id", "patient_id", "filename", "content_type", "size_bytes", "sha256",
                    "storage_key", "uploaded_at"),
    "audit_log": ("id", "clinic_id", "actor_id", "action", "entity", "entity_id", "details", "occurred_at"),
}
# Identity columns and classic sequences to move past the generated ids.
SEQUENCES = {t: f"{t}_id_seq" for t in TABLES}

# The awkward tenant: its slug and name must survive every dump, restore and log line exactly.
TRICKY_CLINIC_SLUG = "o'brien \"clinic\"; DROP TABLE x; --\\"
TRICKY_CLINIC_NAME = "O'Brien & \"Söhne\" Clinic'); DROP TABLE patients; -- \\N 100%_$$\\"


class DemoDataError(DatabaseError):
    """The demo data cannot be generated into this database."""


# -- COPY text format --------------------------------------------------------------------------

NULL = "\\N"


def copy_escape(value: str) -> str:
    """A str as one field of COPY's text format: backslash, tab, newline and CR escaped."""
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\t" in value:
        value = value.replace("\t", "\\t")
    if "\n" in value:
        value = value.replace("\n", "\\n")
    if "\r" in value:
        value = value.replace("\r", "\\r")
    return value


def _json_str(value: str) -> str:
    """A JSON string literal (quotes included), escaped for COPY: for splicing into f-string JSON."""
    return copy_escape(json.dumps(value, ensure_ascii=False))


# Timestamps are ints (seconds since EPOCH 00:00 UTC) formatted through lookup tables: far
# cheaper than datetime per row.
_DAY_MIN = -500                    # clinics were founded up to 400 days before EPOCH
_DAY_TEXT = [(EPOCH + timedelta(days=d)).isoformat() for d in range(_DAY_MIN, SPAN_DAYS + 120)]
_HM_TEXT = [f"{h:02d}:{m:02d}" for h in range(24) for m in range(60)]
_SEC_TEXT = [f":{s:02d}+00" for s in range(60)]
DAY = 86_400
SPAN_END = SPAN_DAYS * DAY - 1
AS_OF = AS_OF_DAY * DAY


def _ts(sec: int) -> str:
    day, rest = divmod(sec, DAY)
    assert day >= _DAY_MIN, sec  # a negative index would silently wrap around
    minute, second = divmod(rest, 60)
    return f"{_DAY_TEXT[day - _DAY_MIN]} {_HM_TEXT[minute]}{_SEC_TEXT[second]}"


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


# -- vocabulary --------------------------------------------------------------------------------

GIVEN_NAMES = (
    "Anna", "Lukas", "Jürgen", "Zoë", "José", "Łukasz", "Chloé", "Mohammed", "Søren", "Ngọc Anh", "Fatima",
    "Émile", "Björn", "María José", "Siobhán", "Yuki", "美咲", "Олег", "Amélie", "Noah", "Emma", "Liam", "Olivia", "Ben",
    "Mia", "Elias", "Lina", "Hannah", "Leon", "Sofia", "Ahmet", "Ayşe", "Priya", "Wei", "D'Arcy", "Jean-Luc",
    "Ingrid", "Mateo", "Aisha", "Thomas", "Julia", "Paul", "Marie", "David", "Sarah", "Jan", "Laura", "Kofi",
)
FAMILY_NAMES = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Dupont", "Martin", "Bernard", "Lefèvre", "García",
    "Fernández", "O'Connor", "O'Brien", "Nguyễn", "Kowalski", "Nowak", "van der Berg", "Smith", "Johnson",
    "Williams", "Brown", "Jones", "Øberg", "Åström", "Şahin", "Yılmaz", "Khan", "Patel", "王", "李",
    "Gonçalves",
    "Dvořák", "Papadopoulos", "Ivanova", "Meyer", "Wagner", "Becker", "Hoffmann", "Rossi", "Russo", "Durand",
    "Moreau", "Mensah", "Kim", "Park", "Tanaka", "Sato", "Silva",
)


def _ascii(name: str) -> str:
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    return "".join(ch for ch in folded if ch.isalnum()) or "user"


_GIVEN = [(copy_escape(n), _ascii(n)) for n in GIVEN_NAMES]
_FAMILY = [(copy_escape(n), _ascii(n)) for n in FAMILY_NAMES]
_GIVEN_JSON = [_json_str(n) for n in GIVEN_NAMES]
_FAMILY_JSON = [_json_str(n) for n in FAMILY_NAMES]


@dataclass(frozen=True)
class ClinicTemplate:
    name: str
    slug: str
    jurisdiction: str
    timezone: str
    currency: str
    phone_prefix: str
    cities: tuple[tuple[str, str], ...]      # (city, postcode)
    streets: tuple[str, ...]


CLINIC_TEMPLATES = (
    ClinicTemplate("Praxis Dr. Müller & Kollegen", "praxis-mueller", "DE", "Europe/Berlin", "EUR", "+49 30",
                   (("Berlin", "10115"), ("Potsdam", "14467"), ("Berlin", "12043")),
                   ("Hauptstraße", "Müllerstraße", "Kastanienallee", "Schönhauser Allee")),
    ClinicTemplate(TRICKY_CLINIC_NAME, TRICKY_CLINIC_SLUG, "IE", "Europe/Dublin", "EUR", "+353 1",
                   (("Dublin", "D02 X285"), ("Dún Laoghaire", "A96 K4D8")),
                   ("O'Connell Street", "Grafton Street", "St. Stephen's Green")),
    ClinicTemplate("Clinique Saint-Éloi", "clinique-saint-eloi", "FR", "Europe/Paris", "EUR", "+33 1",
                   (("Paris", "75011"), ("Montreuil", "93100"), ("Vincennes", "94300")),
                   ("Rue de l'Église", "Boulevard Voltaire", "Avenue de la République")),
    ClinicTemplate("Bay Area Family Medicine", "bay-area-family", "US-CA", "America/Los_Angeles", "USD", "+1 415",
                   (("San Francisco", "94110"), ("Oakland", "94612"), ("Berkeley", "94704")),
                   ("Mission St", "Valencia St", "Telegraph Ave")),
    ClinicTemplate("Hausarztzentrum Zürich", "haz-zuerich", "CH", "Europe/Zurich", "CHF", "+41 44",
                   (("Zürich", "8004"), ("Winterthur", "8400")),
                   ("Langstrasse", "Bahnhofstrasse", "Badenerstrasse")),
    ClinicTemplate("Centro Médico Salud Madrid", "centro-medico-madrid", "ES", "Europe/Madrid", "EUR", "+34 91",
                   (("Madrid", "28004"), ("Alcalá de Henares", "28801")),
                   ("Calle de Alcalá", "Gran Vía", "Calle Mayor")),
    ClinicTemplate("Northside Pediatrics", "northside-pediatrics", "US-NY", "America/New_York", "USD", "+1 718",
                   (("Brooklyn", "11211"), ("Queens", "11101")),
                   ("Bedford Ave", "Atlantic Ave", "Broadway")),
    ClinicTemplate("Harley Street Dermatology", "harley-street-derm", "GB", "Europe/London", "GBP", "+44 20",
                   (("London", "W1G 9PF"), ("London", "NW1 6XE")),
                   ("Harley Street", "Baker Street", "Marylebone Road")),
    ClinicTemplate("Ambulatorium Wien Mitte", "ambulatorium-wien", "AT", "Europe/Vienna", "EUR", "+43 1",
                   (("Wien", "1030"), ("Wien", "1100")),
                   ("Landstraßer Hauptstraße", "Favoritenstraße")),
    ClinicTemplate("Kraków Medical Center", "krakow-medical", "PL", "Europe/Warsaw", "PLN", "+48 12",
                   (("Kraków", "31-042"), ("Wieliczka", "32-020")),
                   ("ulica Floriańska", "ulica Długa")),
    ClinicTemplate("東京ファミリークリニック", "tokyo-family", "JP", "Asia/Tokyo", "JPY", "+81 3",
                   (("東京都新宿区", "160-0022"), ("東京都渋谷区", "150-0002")),
                   ("西新宿", "道玄坂")),
    ClinicTemplate("Texas Heart & Vascular", "texas-heart", "US-TX", "America/Chicago", "USD", "+1 512",
                   (("Austin", "78701"), ("Round Rock", "78664")),
                   ("Congress Ave", "Lamar Blvd")),
)
_PLAIN_TEMPLATES = [t for t in CLINIC_TEMPLATES if t.slug != TRICKY_CLINIC_SLUG]

ROLES = ("physician", "nurse", "receptionist", "billing")
ROLE_WEIGHTS = (35, 30, 22, 13)

REASONS = tuple(copy_escape(r) for r in (
    "Routine check-up", "Follow-up: hypertension", "Vaccination", "Lab results review", "Back pain",
    "Persistent cough", "Skin rash", "Prescription renewal", "Diabetes control (HbA1c)", "Headache / migraine",
    "Pre-operative assessment", "Ear pain", "Sports injury – left knee", "Anxiety, sleep problems",
    "Well-child visit", "Chest pain (non-acute)", "Allergy consultation", "Blood pressure check",
))
DURATIONS = ("00:10:00", "00:15:00", "00:15:00", "00:20:00", "00:30:00", "00:30:00", "00:45:00", "01:00:00")

SYMPTOMS = ("a dry cough", "intermittent headaches", "lower back pain", "fatigue", "a sore throat",
            "dizziness on standing", "an itchy rash on both forearms", "shortness of breath on exertion",
            "epigastric discomfort after meals", "swelling of the right ankle", "poor sleep", "palpitations")
EXAM = ("Lungs clear on auscultation.", "Abdomen soft, non-tender.", "No focal neurological deficit.",
        "Mild erythema of the pharynx, no exudate.", "Tenderness over L4/L5, straight-leg raise negative.",
        "Heart sounds regular, no murmur.", "Skin: scattered papules, no signs of infection.",
        "Right ankle: mild oedema, full range of motion.")
DIAGNOSES = (("Essential hypertension", "I10"), ("Type 2 diabetes mellitus", "E11.9"),
             ("Acute upper respiratory infection", "J06.9"), ("Low back pain", "M54.5"),
             ("Migraine without aura", "G43.0"), ("Atopic dermatitis", "L20.9"), ("Iron deficiency anaemia", "D50.9"),
             ("Gastro-oesophageal reflux disease", "K21.9"), ("Insomnia", "G47.0"), ("Sprain of ankle", "S93.4"),
             ("Generalised anxiety disorder", "F41.1"), ("Hypothyroidism", "E03.9"))
PLANS = ("Continue current medication", "Start low-dose therapy and review in 4 weeks",
         "Blood tests ordered (FBC, CRP, TSH)", "Physiotherapy referral", "Lifestyle advice given: diet, exercise",
         "Refer to specialist", "Symptomatic treatment, return if worse", "ECG today, results discussed",
         "Patient educated about warning signs")
MEDS_TABLE = ("Meds:\tmetformin 500 mg\t1-0-1", "Meds:\tramipril 5 mg\t1-0-0", "Meds:\tlevothyroxine 50 mcg\t1-0-0")
BACKSLASH_NOTE = "Scanned report filed under \\\\fileserver\\scans\\{year}\\ (old system)."

# (drug, doses, unit, frequencies, ATC code, RxNorm code)
DRUGS = (
    ("Amoxicillin", ("250", "500", "875"), "mg", ("three times daily for 7 days", "twice daily for 5 days"),
     "J01CA04", "723"),
    ("Ibuprofen", ("200", "400", "600"), "mg", ("as needed, max 3 per day", "three times daily with food"),
     "M01AE01", "5640"),
    ("Metformin", ("500", "850", "1000"), "mg", ("twice daily",), "A10BA02", "6809"),
    ("Ramipril", ("2.5", "5", "10"), "mg", ("once daily",), "C09AA05", "35296"),
    ("Levothyroxine", ("25", "50", "75", "100"), "mcg", ("once daily before breakfast",), "H03AA01", "10582"),
    ("Salbutamol inhaler", ("0.1",), "mg", ("1-2 puffs as needed",), "R03AC02", "435"),
    ("Paracetamol", ("500", "1000"), "mg", ("up to four times daily",), "N02BE01", "161"),
    ("Vitamin D3", ("1000", "20000"), "IU", ("once daily", "once weekly"), "A11CC05", "2418"),
    ("Amoxicillin oral suspension", ("2.5", "5"), "ml", ("three times daily for 10 days",), "J01CA04", "723"),
    ("Atorvastatin", ("10", "20", "40"), "mg", ("once daily in the evening",), "C10AA05", "83367"),
    ("Sertraline", ("50", "100"), "mg", ("once daily",), "N06AB06", "36437"),
    ("Omeprazole", ("20", "40"), "mg", ("once daily before breakfast",), "A02BC01", "7646"),
    ("Colecalciferol drops", ("0.125",), "mg", ("once daily",), "A11CC05", "2418"),
)
INSTRUCTIONS = tuple(copy_escape(s) for s in (
    "Take with a full glass of water.", "Do not drive if drowsy.", "Stop and call us if rash appears.",
    "Avoid alcohol.", "Complete the full course.",
))

# (code, description, base price in cents)
BILLING_CODES = tuple((copy_escape(c), copy_escape(d), p) for c, d, p in (
    ("99213", "Office visit, established patient, low complexity", 9200),
    ("99214", "Office visit, established patient, moderate complexity", 13100),
    ("99203", "Office visit, new patient", 11300),
    ("GOÄ-1", "Beratung, auch telefonisch", 1072),
    ("GOÄ-5", "Symptombezogene Untersuchung", 1866),
    ("NGAP-G", "Consultation de médecine générale", 3000),
    ("85025", "Complete blood count (CBC)", 1100),
    ("93000", "Electrocardiogram, 12 leads", 1700),
    ("90471", "Immunization administration", 2500),
    ("36415", "Venipuncture", 300),
    ("81002", "Urinalysis, non-automated", 350),
    ("NO-SHOW", "Missed appointment fee", 4000),
))
PAYMENT_METHODS = ("card", "card", "card", "card", "card", "insurance", "insurance", "insurance",
                   "bank_transfer", "bank_transfer", "cash")

ATTACHMENT_KINDS = (
    ("lab_results_{d}.pdf", "application/pdf"),
    ("Röntgenbefund {n}.pdf", "application/pdf"),
    ("referral letter.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ("ECG-{d}.png", "image/png"),
    ("insurance_card.jpg", "image/jpeg"),
    ("scan (1).tiff", "image/tiff"),
    ("consent form – signed.pdf", "application/pdf"),
    ("photo_{d}.heic", "image/heic"),
)

USER_AGENTS = tuple(_json_str(ua) for ua in (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "ClinicDesk/3.8.1 (Windows; build 2207)",
))
_IPS = [f"10.{a}.{b}.{c}" for a in (0, 4, 12) for b in (1, 2, 3, 7) for c in range(10, 250, 10)]


# -- plan ----------------------------------------------------------------------------------------


@dataclass
class Clinic:
    id: int
    slug: str
    name: str
    template: ClinicTemplate
    created_at: int
    n_staff: int
    n_patients: int
    domain: str
    staff: list[int] = field(default_factory=list)
    clinicians: list[int] = field(default_factory=list)       # physicians and nurses
    physicians: list[int] = field(default_factory=list)
    front_desk: list[int] = field(default_factory=list)       # admin, receptionists and billing


def plan_clinics(clinics: int, scale: float, seed: int) -> list[Clinic]:
    """The tenants and their sizes; the awkward clinic is the second (the only one if there is one)."""
    rng = random.Random(f"drp-demo/{seed}/plan")
    tricky_index = min(1, clinics - 1)
    out = []
    plain = 0
    for i in range(clinics):
        if i == tricky_index:
            tpl = CLINIC_TEMPLATES[1]
            slug, name, domain = tpl.slug, tpl.name, "obrien-clinic.example"
        else:
            tpl = _PLAIN_TEMPLATES[plain % len(_PLAIN_TEMPLATES)]
            rnd = plain // len(_PLAIN_TEMPLATES)
            slug = tpl.slug if rnd == 0 else f"{tpl.slug}-{rnd + 1}"
            name = tpl.name if rnd == 0 else f"{tpl.name} {rnd + 1}"
            domain = f"{slug}.example"
            plain += 1
        weight = 0.6 + 0.8 * rng.random()
        out.append(Clinic(
            id=i + 1, slug=slug, name=name, template=tpl,
            created_at=-rng.randrange(30, 400) * DAY + rng.randrange(8 * 3600, 18 * 3600),
            n_staff=max(4, round(STAFF_PER_CLINIC * scale * weight)),
            n_patients=max(3, round(PATIENTS_PER_CLINIC * scale * weight)),
            domain=domain,
        ))
    return out


# -- the generator -------------------------------------------------------------------------------


class _Generator:
    """Holds the per-table random streams and id counters; emits COPY lines per chunk."""

    def __init__(self, seed: int) -> None:
        self.rng = {t: random.Random(f"drp-demo/{seed}/{t}") for t in TABLES}
        self.last_id = dict.fromkeys(TABLES, 0)
        self.invoice_number = 0

    # The methods return COPY text lines (one per row, newline-terminated), ids already assigned.

    def clinics(self, plan: list[Clinic]) -> list[str]:
        lines = []
        for c in plan:
            t = c.template
            lines.append(f"{c.id}\t{copy_escape(c.slug)}\t{copy_escape(c.name)}\t{t.jurisdiction}\t{t.timezone}"
                         f"\t{t.currency}\t{_ts(c.created_at)}\n")
        self.last_id["clinics"] = len(plan)
        return lines

    def staff(self, c: Clinic) -> list[str]:
        rng = self.rng["staff_users"]
        rnd = rng.random
        lines = []
        sid = self.last_id["staff_users"]
        for i in range(c.n_staff):
            sid += 1
            role = "admin" if i == 0 else ("physician" if i == 1 else rng.choices(ROLES, ROLE_WEIGHTS)[0])
            g, g_ascii = _GIVEN[int(rnd() * len(_GIVEN))]
            f, f_ascii = _FAMILY[int(rnd() * len(_FAMILY))]
            title = "Dr. " if role == "physician" else ""
            email = f"{g_ascii}.{f_ascii}.{i + 1}@{c.domain}"
            active = "f" if i > 1 and rnd() < 0.08 else "t"
            created = c.created_at + int(rnd() * -c.created_at)   # onboarded before go-live (day 0)
            lines.append(f"{sid}\t{c.id}\t{copy_escape(email)}\t{title}{g} {f}\t{role}\t{active}\t{_ts(created)}\n")
            c.staff.append(sid)
            if role in ("physician", "nurse"):
                c.clinicians.append(sid)
            if role == "physician":
                c.physicians.append(sid)
            if role in ("receptionist", "billing", "admin"):
                c.front_desk.append(sid)
        self.last_id["staff_users"] = sid
        return lines

    def logins(self, c: Clinic, staff_ids: list[int]) -> list[str]:
        """Login events: about one per staff member per five days over the data's span."""
        rng = self.rng["audit_log"]
        rnd = rng.random
        aid = self.last_id["audit_log"]
        lines = []
        n_ips, n_ua = len(_IPS), len(USER_AGENTS)
        for sid in staff_ids:
            for _ in range(SPAN_DAYS // 5):
                aid += 1
                at = int(rnd() * AS_OF_DAY) * DAY + 6 * 3600 + int(rnd() * 12 * 3600)
                mfa = "true" if rnd() < 0.9 else "false"
                lines.append(
                    f'{aid}\t{c.id}\t{sid}\tlogin\tstaff_user\t{sid}\t{{"ip": "{_IPS[int(rnd() * n_ips)]}", '
                    f'"mfa": {mfa}, "user_agent": {USER_AGENTS[int(rnd() * n_ua)]}}}\t{_ts(at)}\n')
        self.last_id["audit_log"] = aid
        return lines

    def chunk(self, c: Clinic, first: int, count: int) -> dict[str, list[str]]:  # noqa: C901 - one pass, on purpose
        """Patients first..first+count-1 (1-based within the clinic) with everything that hangs off them.

        Returns {table: lines} for patients .. audit_log, in TABLES (= foreign key) order.
        """
        R = self.rng
        ids = self.last_id
        cid = c.id
        tpl = c.template
        currency = tpl.currency
        out: dict[str, list[str]] = {t: [] for t in TABLES[2:]}
        P, A, V, N, RX = (out["patients"].append, out["appointments"].append, out["visits"].append,
                          out["clinical_notes"].append, out["prescriptions"].append)
        INV, IL, PAY, ATT, AU = (out["invoices"].append, out["invoice_lines"].append, out["payments"].append,
                                 out["attachments"].append, out["audit_log"].append)
        ts = _ts
        clinicians, physicians, front_desk, staff = c.clinicians, c.physicians, c.front_desk, c.staff
        is_physician = set(physicians)
        n_cl, n_ph, n_fd, n_st = len(clinicians), len(physicians), len(front_desk), len(staff)
        n_ips = len(_IPS)
        ips = _IPS
        n_sym, n_exam, n_plan = len(SYMPTOMS), len(EXAM), len(PLANS)

        rp = R["patients"].random
        ra = R["appointments"].random
        rv = R["visits"].random
        rn = R["clinical_notes"].random
        rrx = R["prescriptions"].random
        ri = R["invoices"].random
        rl = R["invoice_lines"].random
        rpay = R["payments"].random
        ratt = R["attachments"].random
        rau = R["audit_log"].random
        expo_a = R["appointments"].expovariate
        bits = R["attachments"].getrandbits
        pay_bits = R["payments"].getrandbits
        au_bits = R["audit_log"].getrandbits

        pid, apid, vid = ids["patients"], ids["appointments"], ids["visits"]
        nid, rxid, iid = ids["clinical_notes"], ids["prescriptions"], ids["invoices"]
        ilid, payid, attid, aid = ids["invoice_lines"], ids["payments"], ids["attachments"], ids["audit_log"]
        inv_no = self.invoice_number

        def reads(entity: str, eid: int, after: int, n: int) -> None:
            """n chart views of one entity by clinicians, after a moment."""
            nonlocal aid
            span = SPAN_END - after
            for _ in range(n):
                aid += 1
                AU(f'{aid}\t{cid}\t{clinicians[int(rau() * n_cl)]}\tread\t{entity}\t{eid}\t'
                   f'{{"ip": "{ips[int(rau() * n_ips)]}", "session": "{au_bits(64):016x}", "via": "web"}}\t'
                   f'{ts(after + int(rau() * span))}\n')

        for number in range(first, first + count):
            # -- patient
            pid += 1
            g = int(rp() * len(_GIVEN))
            f = int(rp() * len(_FAMILY))
            x = rp()
            middle = NULL if x < 0.5 else ("" if x < 0.75 else _GIVEN[int(rp() * len(_GIVEN))][0])
            dob = date.fromordinal(718_000 + int(rp() * 21_000)).isoformat()   # 1966 .. 2023, roughly
            if rp() < 0.3:
                dob = date.fromordinal(705_000 + int(rp() * 13_000)).isoformat()  # older patients, 1931 ..
            x = rp()
            sex = "female" if x < 0.49 else ("male" if x < 0.97 else ("other" if x < 0.98 else "unknown"))
            city, postcode = tpl.cities[int(rp() * len(tpl.cities))]
            street = tpl.streets[int(rp() * len(tpl.streets))]
            phone = f"{tpl.phone_prefix} {int(rp() * 9_000_000) + 1_000_000}"
            email = "" if rp() < 0.2 else (f', "email": "{_GIVEN[g][1]}.{_FAMILY[f][1]}{int(rp() * 100)}'
                                           f'@example.{"org" if rp() < 0.5 else "com"}"')
            house = _json_str(f"{street} {int(rp() * 180) + 1}")
            contact = (f'{{"phone": "{phone}"{email}, "address": {{"street": {house}, '
                       f'"postcode": {_json_str(postcode)}, "city": {_json_str(city)}, '
                       f'"country": "{tpl.jurisdiction[:2]}"}}}}')
            imported = rp() < 0.4
            if imported:
                created = IMPORT_DAY * DAY + 2 * 3600 + int(rp() * 3600)
            else:
                created = int(rp() * (AS_OF_DAY - 1)) * DAY + 6 * 3600 + int(rp() * 3600)
            P(f"{pid}\t{cid}\tP{number:06d}\t{_GIVEN[g][0]}\t{middle}\t{_FAMILY[f][0]}\t{dob}\t{sex}\t{contact}"
              f"\t{ts(created)}\n")
            aid += 1
            if imported:
                AU(f'{aid}\t{cid}\t\\N\tcreate\tpatient\t{pid}\t{{"source": "import", "batch": "legacy-2023-12"}}'
                   f'\t{ts(created)}\n')
            else:
                AU(f'{aid}\t{cid}\t{front_desk[int(rau() * n_fd)]}\tcreate\tpatient\t{pid}\t'
                   f'{{"source": "front_desk", "ip": "{ips[int(rau() * n_ips)]}"}}\t{ts(created)}\n')
            reads("patient", pid, created, 2 + int(rau() * 7))

            # -- attachments
            x = ratt()
            n_att = 0 if x < 0.55 else (1 if x < 0.8 else (2 if x < 0.92 else 3 + int(ratt() * 4)))
            for k in range(n_att):
                attid += 1
                up = created + int(ratt() * (SPAN_END - created))
                name_tpl, ctype = ATTACHMENT_KINDS[int(ratt() * len(ATTACHMENT_KINDS))]
                fname = copy_escape(name_tpl.format(d=ts(up)[:10], n=k + 1))
                size = 1024 + int(ratt() * ratt() * 8_000_000)   # skewed to small files
                key = f"clinics/{cid}/patients/{pid}/{attid:010d}-{bits(48):012x}"
                ATT(f"{attid}\t{cid}\t{pid}\t{fname}\t{ctype}\t{size}\t\\\\x{bits(256):064x}\t{key}\t{ts(up)}\n")
                aid += 1
                AU(f'{aid}\t{cid}\t{staff[int(rau() * n_st)]}\tcreate\tattachment\t{attid}\t'
                   f'{{"size_bytes": {size}, "content_type": "{ctype}"}}\t{ts(up)}\n')
                reads("attachment", attid, up, int(rau() * 3))

            # -- appointments
            n_appt = min(25, int(expo_a(1 / 3.5)))
            first_day = max(0, created // DAY + 1)
            for _ in range(n_appt):
                apid += 1
                day = first_day + int(ra() * (SPAN_DAYS - first_day))
                start = day * DAY + 7 * 3600 + int(ra() * 40) * 900
                dur = DURATIONS[int(ra() * len(DURATIONS))]
                dur_s = int(dur[:2]) * 3600 + int(dur[3:5]) * 60
                doctor = clinicians[int(ra() * n_cl)]
                x = ra()
                reason = NULL if x < 0.2 else ("" if x < 0.25 else REASONS[int(ra() * len(REASONS))])
                booked = max(created, start - int(ra() * 45 * DAY) - 3600)
                if day > AS_OF_DAY:
                    status = "scheduled" if ra() < 0.6 else "confirmed"
                elif day == AS_OF_DAY:
                    status = "checked_in"
                else:
                    x = ra()
                    status = "completed" if x < 0.83 else ("cancelled" if x < 0.93 else "no_show")
                A(f"{apid}\t{cid}\t{pid}\t{doctor}\t{ts(start)}\t{dur}\t{status}\t{reason}\t{ts(booked)}\n")
                aid += 1
                AU(f'{aid}\t{cid}\t{front_desk[int(rau() * n_fd)]}\tcreate\tappointment\t{apid}\t'
                   f'{{"starts_at": "{ts(start)}", "staff_user_id": {doctor}}}\t{ts(booked)}\n')
                if status != "scheduled":
                    aid += 1
                    to = "confirmed" if status in ("completed", "checked_in") else status
                    AU(f'{aid}\t{cid}\t{front_desk[int(rau() * n_fd)]}\tupdate\tappointment\t{apid}\t'
                       f'{{"field": "status", "from": "scheduled", "to": "{to}"}}'
                       f'\t{ts(booked + int(rau() * (start - booked)))}\n')
                if status == "no_show" and rv() < 0.3:
                    # missed-appointment fee: an invoice without a visit
                    iid += 1
                    inv_no += 1
                    code, desc, price = BILLING_CODES[-1]
                    issued = start + DAY
                    ilid += 1
                    IL(f"{ilid}\t{cid}\t{iid}\t1\t{code}\t{desc}\t1\t{_money(price)}\n")
                    paid = ri() < 0.5
                    INV(f"{iid}\t{cid}\t{pid}\t\\N\tINV-{inv_no:08d}\t{ts(issued)}\t{currency}\t{_money(price)}"
                        f"\t{'paid' if paid else 'issued'}\n")
                    aid += 1
                    AU(f'{aid}\t{cid}\t{front_desk[int(rau() * n_fd)]}\tcreate\tinvoice\t{iid}\t'
                       f'{{"number": "INV-{inv_no:08d}", "total": "{_money(price)}"}}\t{ts(issued)}\n')
                    if paid:
                        payid += 1
                        pat = issued + int(rpay() * 20 * DAY)
                        PAY(f"{payid}\t{cid}\t{iid}\t{_money(price)}\tcard\tch_{pay_bits(64):016x}\t{ts(pat)}\n")
                        aid += 1
                        AU(f'{aid}\t{cid}\t\\N\tcreate\tpayment\t{payid}\t'
                           f'{{"method": "card", "amount": "{_money(price)}"}}\t{ts(pat)}\n')
                if status not in ("completed", "checked_in"):
                    continue

                # -- the visit
                vid += 1
                v_start = start + int(rv() * 20) * 60
                v_end = v_start + max(300, dur_s + int(rv() * 20 - 5) * 60)
                open_visit = status == "checked_in"
                V(f"{vid}\t{cid}\t{apid}\t{ts(v_start)}\t{NULL if open_visit else ts(v_end)}\n")
                aid += 1
                AU(f'{aid}\t{cid}\t{doctor}\tcreate\tvisit\t{vid}\t{{"appointment_id": {apid}}}\t{ts(v_start)}\n')
                aid += 1
                AU(f'{aid}\t{cid}\t{front_desk[int(rau() * n_fd)]}\tupdate\tappointment\t{apid}\t'
                   f'{{"field": "status", "from": "confirmed", "to": "checked_in"}}\t{ts(v_start - 60)}\n')
                if open_visit:
                    continue
                aid += 1
                AU(f'{aid}\t{cid}\t{doctor}\tupdate\tappointment\t{apid}\t'
                   f'{{"field": "status", "from": "checked_in", "to": "completed"}}\t{ts(v_end)}\n')

                # -- clinical notes
                x = rn()
                n_notes = 1 if x < 0.7 else (2 if x < 0.95 else 3)
                for k in range(n_notes):
                    nid += 1
                    author = doctor if k == 0 else clinicians[int(rn() * n_cl)]
                    written = v_end + int(rn() * 3 * 3600)
                    dx, icd = DIAGNOSES[int(rn() * len(DIAGNOSES))]
                    sys_bp, dia_bp, hr = 105 + int(rn() * 60), 62 + int(rn() * 35), 52 + int(rn() * 50)
                    temp = 360 + int(rn() * 25)
                    s1, e1, p1 = int(rn() * n_sym), int(rn() * n_exam), int(rn() * n_plan)
                    s2 = (s1 + 1 + int(rn() * (n_sym - 1))) % n_sym   # a second, different one
                    e2 = (e1 + 1 + int(rn() * (n_exam - 1))) % n_exam
                    p2 = (p1 + 1 + int(rn() * (n_plan - 1))) % n_plan
                    weeks = 1 + int(rn() * 8)
                    parts = [
                        f"Subjective: presents with {SYMPTOMS[s1]} for {2 + int(rn() * 20)} days. "
                        f"Also reports {SYMPTOMS[s2]}.",
                        f"Objective: BP {sys_bp}/{dia_bp} mmHg, HR {hr}/min, T {temp // 10}.{temp % 10} °C, "
                        f"SpO2 {94 + int(rn() * 6)}%. {EXAM[e1]} {EXAM[e2]}",
                        f"Assessment: {dx} ({icd}).",
                        f"Plan: {PLANS[p1]}. {PLANS[p2]}. Follow-up in {weeks} week{'s' if weeks > 1 else ''}.",
                    ]
                    x = rn()
                    if x < 0.1:
                        parts.append(MEDS_TABLE[int(rn() * len(MEDS_TABLE))])
                    elif x < 0.12:
                        parts.append(BACKSLASH_NOTE.format(year=ts(written)[:4]))
                    body = copy_escape("\n".join(parts))
                    if rn() < 0.75:
                        structured = (f'{{"vitals": {{"bp": [{sys_bp}, {dia_bp}], "heart_rate": {hr}, '
                                      f'"temp_c": {temp // 10}.{temp % 10}}}, "icd10": ["{icd}"], "version": 2}}')
                    else:
                        structured = NULL
                    N(f"{nid}\t{cid}\t{vid}\t{author}\t{body}\t{structured}\t{ts(written)}\n")
                    aid += 1
                    AU(f'{aid}\t{cid}\t{author}\tcreate\tclinical_note\t{nid}\t'
                       f'{{"visit_id": {vid}, "chars": {len(body)}}}'
                       f'\t{ts(written)}\n')
                    reads("clinical_note", nid, written, int(rau() * 7))

                # -- prescriptions
                x = rrx()
                n_rx = 0 if x < 0.55 else (1 if x < 0.85 else (2 if x < 0.97 else 3))
                for _ in range(n_rx):
                    rxid += 1
                    drug, doses, unit, freqs, atc, rxnorm = DRUGS[int(rrx() * len(DRUGS))]
                    x = rrx()
                    codes = "{}" if x < 0.05 else (f"{{{atc}}}" if x < 0.3 else f"{{{atc},RXCUI:{rxnorm}}}")
                    x = rrx()
                    instr = NULL if x < 0.4 else ("" if x < 0.5 else INSTRUCTIONS[int(rrx() * len(INSTRUCTIONS))])
                    refills = 0 if rrx() < 0.5 else int(rrx() * 6)
                    prescriber = doctor if doctor in is_physician else physicians[int(rrx() * n_ph)]
                    at = v_end - int(rrx() * 600)
                    RX(f"{rxid}\t{cid}\t{vid}\t{prescriber}\t{drug}\t{doses[int(rrx() * len(doses))]}\t{unit}"
                       f"\t{freqs[int(rrx() * len(freqs))]}\t{refills}\t{codes}\t{instr}\t{ts(at)}\n")
                    aid += 1
                    AU(f'{aid}\t{cid}\t{prescriber}\tcreate\tprescription\t{rxid}\t'
                       f'{{"drug": "{drug}", "refills": {refills}}}'
                       f'\t{ts(at)}\n')
                    if rau() < 0.5:
                        aid += 1
                        AU(f'{aid}\t{cid}\t{prescriber}\tprint\tprescription\t{rxid}\t{{"copies": 1}}'
                           f'\t{ts(at + 120)}\n')

                # -- invoice, lines, payments
                if ri() < 0.05:
                    continue
                iid += 1
                inv_no += 1
                issued = v_end + int(ri() * 2 * DAY)
                n_lines = 1 + int(rl() * 4)
                total = 0
                for line_no in range(1, n_lines + 1):
                    ilid += 1
                    code, desc, base = BILLING_CODES[int(rl() * (len(BILLING_CODES) - 1))]
                    qty = 1 if rl() < 0.85 else 2
                    price = base + int(rl() * base * 0.2)
                    total += qty * price
                    IL(f"{ilid}\t{cid}\t{iid}\t{line_no}\t{code}\t{desc}\t{qty}\t{_money(price)}\n")
                x = ri()
                recent = issued > AS_OF - 30 * DAY
                if recent:
                    inv_status = "issued" if x < 0.6 else "paid"
                else:
                    inv_status = "paid" if x < 0.85 else ("issued" if x < 0.93 else ("void" if x < 0.98 else "draft"))
                number = f"INV-{inv_no:08d}"
                INV(f"{iid}\t{cid}\t{pid}\t{vid}\t{number}\t{ts(issued)}\t{currency}\t{_money(total)}\t{inv_status}\n")
                aid += 1
                AU(f'{aid}\t{cid}\t{front_desk[int(rau() * n_fd)]}\tcreate\tinvoice\t{iid}\t'
                   f'{{"number": "{number}", "total": "{_money(total)}"}}\t{ts(issued)}\n')
                if rau() < 0.3:
                    aid += 1
                    AU(f'{aid}\t{cid}\t{front_desk[int(rau() * n_fd)]}\tprint\tinvoice\t{iid}\t{{"copies": 1}}'
                       f'\t{ts(issued + 300)}\n')
                if inv_status == "paid":
                    parts_cents = [total] if rpay() < 0.85 or total < 2 else [0, 0]
                    if len(parts_cents) == 2:
                        first_part = max(1, min(total - 1, int(total * (0.3 + rpay() * 0.4))))
                        parts_cents = [first_part, total - first_part]
                elif inv_status == "issued" and rpay() < 0.25 and total >= 2:
                    parts_cents = [max(1, int(total * (0.2 + rpay() * 0.5)))]
                else:
                    parts_cents = []
                pat = issued
                for amount in parts_cents:
                    payid += 1
                    pat += int(rpay() * 25 * DAY) + 60
                    method = PAYMENT_METHODS[int(rpay() * len(PAYMENT_METHODS))]
                    if method == "cash":
                        ref = NULL
                    elif rpay() < 0.08:
                        ref = ""
                    else:
                        ref = f"{'clm' if method == 'insurance' else 'ch'}_{pay_bits(64):016x}"
                    PAY(f"{payid}\t{cid}\t{iid}\t{_money(amount)}\t{method}\t{ref}\t{ts(pat)}\n")
                    aid += 1
                    AU(f'{aid}\t{cid}\t\\N\tcreate\tpayment\t{payid}\t'
                       f'{{"method": "{method}", "amount": "{_money(amount)}"}}'
                       f'\t{ts(pat)}\n')

        ids.update(patients=pid, appointments=apid, visits=vid, clinical_notes=nid, prescriptions=rxid, invoices=iid,
                   invoice_lines=ilid, payments=payid, attachments=attid, audit_log=aid)
        self.invoice_number = inv_no
        return out


# -- loading -------------------------------------------------------------------------------------

COPY_BATCH_LINES = 20_000  # lines joined per copy.write


def _copy(cur: psycopg.Cursor, table: str, lines: list[str]) -> None:
    if not lines:
        return
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, COLUMNS[table])))
    with cur.copy(stmt) as copy:
        for start in range(0, len(lines), COPY_BATCH_LINES):
            copy.write("".join(lines[start:start + COPY_BATCH_LINES]))


def _check_target(conn: psycopg.Connection) -> None:
    missing = [t for t in TABLES
               if conn.execute("SELECT to_regclass(%s)", (f"public.{t}",)).fetchone()[0] is None]
    if missing:
        raise DemoDataError(
            f"the demo schema is missing from this database (no table {missing[0]})",
            fix="apply the demo migrations first: use seed_demo(), which migrates then generates",
        )
    # Serialise against a concurrent generator, then refuse to mix with existing tenants.
    conn.execute("LOCK TABLE clinics IN EXCLUSIVE MODE")
    if conn.execute("SELECT EXISTS (SELECT 1 FROM clinics)").fetchone()[0]:
        raise DemoDataError(
            "the database already has clinics; demo data is only generated into an empty demo schema",
            fix="generate into a new database (or drop and recreate this one), then seed again",
        )


def _validate(clinics: int, scale: float, seed: int) -> None:
    if not isinstance(clinics, int) or clinics < 1:
        raise ConfigError(f"clinics must be a whole number >= 1, not {clinics!r}", fix="pass clinics=1 or more")
    if not scale > 0 or scale > 100_000:
        raise ConfigError(f"scale must be > 0 (and sane), not {scale!r}", fix="pass e.g. scale=1.0 (a few MB)")
    if not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, not {seed!r}", fix="pass e.g. seed=42")


def generate(
    dsn: str,
    *,
    clinics: int = 3,
    scale: float = 1.0,
    seed: int = 42,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Fill an empty, migrated demo schema; returns rows per table (TABLES order).

    ``progress(table, rows)`` is called once per table after the load committed.
    Raises DemoDataError if the schema is missing or already holds clinics.
    """
    _validate(clinics, scale, seed)
    plan = plan_clinics(clinics, scale, seed)
    gen = _Generator(seed)
    counts = dict.fromkeys(TABLES, 0)

    def load(cur: psycopg.Cursor, table: str, lines: list[str]) -> None:
        _copy(cur, table, lines)
        counts[table] += len(lines)

    try:
        with connect(dsn) as conn:
            _check_target(conn)
            with conn.cursor() as cur:
                load(cur, "clinics", gen.clinics(plan))
                for c in plan:
                    load(cur, "staff_users", gen.staff(c))
                    for first in range(1, c.n_patients + 1, CHUNK_PATIENTS):
                        rows = gen.chunk(c, first, min(CHUNK_PATIENTS, c.n_patients + 1 - first))
                        for table, lines in rows.items():
                            load(cur, table, lines)
                        del rows
                    for start in range(0, len(c.staff), 50):
                        load(cur, "audit_log", gen.logins(c, c.staff[start:start + 50]))
                _set_sequences(cur, gen)
            conn.commit()
    except psycopg.Error as exc:
        raise DatabaseError(
            f"loading the demo data failed: {str(exc).strip()}",
            fix="nothing was committed; check the database is the freshly migrated demo schema and retry",
        ) from None
    if progress:
        for table in TABLES:
            progress(table, counts[table])
    return counts


def _set_sequences(cur: psycopg.Cursor, gen: _Generator) -> None:
    """Move every identity/sequence past the explicit ids (nextval then returns last + 1)."""
    for table, seq in SEQUENCES.items():
        last = gen.last_id[table]
        cur.execute("SELECT setval(%s::regclass, %s, %s)", (f"public.{seq}", max(last, 1), last > 0))
    n = gen.invoice_number
    cur.execute("SELECT setval('public.invoice_number_seq'::regclass, %s, %s)", (max(n, 1), n > 0))


def seed_demo(
    dsn: str,
    *,
    clinics: int = 3,
    scale: float = 1.0,
    seed: int = 42,
    progress: Callable[[str, int], None] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, int]:
    """Migrate the database to the demo schema, generate the data, ANALYZE; returns rows per table.

    ``timings``, if given, receives the seconds spent in "migrations", "generation" and "analyze".
    """
    _validate(clinics, scale, seed)
    started = time.monotonic()
    migrate(dsn, MIGRATIONS_DIR)
    migrated = time.monotonic()
    counts = generate(dsn, clinics=clinics, scale=scale, seed=seed, progress=progress)
    generated = time.monotonic()
    with connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE")
    if timings is not None:
        timings.update(migrations=migrated - started, generation=generated - migrated,
                       analyze=time.monotonic() - generated)
    return counts


__all__ = [
    "BENCHMARK_CLINICS", "BENCHMARK_SCALE", "COLUMNS", "TABLES", "TRICKY_CLINIC_NAME", "TRICKY_CLINIC_SLUG",
    "DemoDataError", "copy_escape", "generate", "plan_clinics", "seed_demo",
]
