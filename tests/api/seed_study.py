"""A recruiting study with one enrolment and one finished export on top of tests/api/seed.py (for the walks of
every operation), and a participant to erase: returns the path parameters that name the study's."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from api.exports.pseudonyms import pseudonym
from tests.api.seed import NOW, PARTICIPANT

KEY = bytes(range(32))
EXPORT = uuid.UUID("6d1f4c1e-0000-4000-8000-000000000001")
SITE_EXPORT = uuid.UUID("5e0e4a11-0000-4000-8000-000000000001")
"""A succeeded site export of gym-a (``/v1/sites/{site_id}/exports/{export_id}``)."""
ERASABLE = uuid.UUID("e1a5e000-0000-4000-8000-000000000001")
"""A participant of gym-a for the walks to erase (``POST /v1/participants/{participant_id}/erase``)."""


def seed_study(url: str, root: Path) -> dict[str, str]:
    """``root``: the API's export directory (a succeeded export's manifest is written under it)."""
    for export_id in (EXPORT, SITE_EXPORT):
        directory = root / str(export_id) / "attempt-1"
        directory.mkdir(parents=True)
        (directory / "manifest.json").write_text(json.dumps({"export_id": str(export_id), "files": []}))
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO participants (participant_id, site_id, external_ref) "
            "VALUES (%s, 'gym-a', 'erase-me')",
            (ERASABLE,),
        )
        conn.execute(
            "INSERT INTO studies (study_id, title, starts_on, scopes, status) "
            "VALUES ('st-1', 'T', '2026-01-01', '{derived_metrics,raw_samples}', 'recruiting')"
        )
        conn.execute("INSERT INTO study_sites VALUES ('st-1', 'gym-a')")
        conn.execute("INSERT INTO study_keys VALUES ('st-1', %s, %s)", (KEY, NOW))
        conn.execute(
            "INSERT INTO study_enrolments (study_id, participant_id, enrolled_at) VALUES ('st-1', %s, %s)",
            (PARTICIPANT, NOW),
        )
        conn.execute(
            "INSERT INTO study_consents (study_id, participant_id, consent_version, scopes, given_at, "
            "recorded_at, recorded_by) VALUES ('st-1', %s, 'v1', '{derived_metrics}', %s, %s, 'kiosk')",
            (PARTICIPANT, NOW, NOW),
        )
        conn.execute(
            "INSERT INTO export_jobs (export_id, study_id, requested_by, requested_at, params, status, "
            "directory, manifest) VALUES (%s, 'st-1', 'tester', %s, %s, 'succeeded', %s, %s)",
            (
                EXPORT,
                NOW,
                Jsonb({"datasets": ["sessions"], "format": "csv"}),
                f"{EXPORT}/attempt-1",
                Jsonb({"export_id": str(EXPORT), "files": []}),
            ),
        )
        conn.execute(
            "INSERT INTO export_jobs (export_id, kind, site_id, requested_by, requested_at, params, status, "
            "directory, manifest) VALUES (%s, 'site', 'gym-a', 'tester', %s, %s, 'succeeded', %s, %s)",
            (
                SITE_EXPORT,
                NOW,
                Jsonb({"datasets": ["utilisation"], "format": "csv"}),
                f"{SITE_EXPORT}/attempt-1",
                Jsonb({"export_id": str(SITE_EXPORT), "files": []}),
            ),
        )
    return {
        "study_id": "st-1",
        "export_id": str(EXPORT),
        "pseudonym": pseudonym(KEY, PARTICIPANT),
        "name": "manifest.json",
    }
