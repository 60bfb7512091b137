-- Research: studies, their sites and pseudonym keys, enrolments with an append-only consent history, and
-- export jobs (a queue in PostgreSQL, claimed with FOR UPDATE SKIP LOCKED). Portable PostgreSQL.
-- The SQL that reads these tables lives in api/queries/studies.py, api/queries/exports.py and
-- api/exports/datasets.py (where consent is part of every export query).

-- studies (0001 made id, title, dates): what a study is, what it asks for, and where it stands
ALTER TABLE studies
    ADD COLUMN description            text NOT NULL DEFAULT '',
    ADD COLUMN principal_investigator text,
    ADD COLUMN ethics_ref             text,    -- the ethics committee's approval reference
    -- data scopes the study asks participants for (a participant agrees to some or all of them):
    --   derived_metrics (sessions, daily series), raw_samples (per-second samples), rr_intervals,
    --   pooled_analyses (cross-site aggregate analyses), full_profile (birth year, weight, HR limits
    --   instead of an age band)
    ADD COLUMN scopes                 text[] NOT NULL DEFAULT '{}'
        CHECK (scopes <@ ARRAY['derived_metrics', 'raw_samples', 'rr_intervals', 'pooled_analyses',
                               'full_profile']::text[]),
    ADD COLUMN status                 text NOT NULL DEFAULT 'draft'
        CHECK (status IN ('draft', 'recruiting', 'closed')),
    ADD COLUMN updated_at             timestamptz,
    ADD CONSTRAINT studies_id_check CHECK (study_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    ADD CONSTRAINT studies_dates_check CHECK (ends_on IS NULL OR starts_on IS NULL OR ends_on >= starts_on);

CREATE TABLE study_sites (
    study_id text NOT NULL REFERENCES studies ON DELETE CASCADE,
    site_id  text NOT NULL REFERENCES sites,
    PRIMARY KEY (study_id, site_id)
);
CREATE INDEX study_sites_site_idx ON study_sites (site_id);

-- The study's secret for pseudonyms (HMAC-SHA256 of the internal participant id, api/exports/pseudonyms.py).
-- Apart from `studies` so that it can be granted to the export worker alone; the API never returns it.
CREATE TABLE study_keys (
    study_id   text PRIMARY KEY REFERENCES studies ON DELETE CASCADE,
    hmac_key   bytea NOT NULL CHECK (length(hmac_key) = 32),
    created_at timestamptz NOT NULL
);

-- Enrolment: the link of a participant to a study (0001 made it with two mutable consent columns, never
-- used; the consent now lives in study_consents, one row per change)
ALTER TABLE study_enrolments
    DROP COLUMN consent_scope,
    DROP COLUMN withdrawn_at,
    ADD COLUMN enrolled_by text;           -- the key id or subject that enrolled them (a kiosk)
CREATE INDEX study_enrolments_participant_idx ON study_enrolments (participant_id);

-- Consent history, append-only: a consent given (text version, scopes agreed, given_at) or a withdrawal
-- (withdrawn_at). A change of scopes is a new consent record; the record in force at time t is the last one
-- whose given_at/withdrawn_at is <= t. UPDATE is refused; DELETE only inside an erasure (a transaction
-- that ran SET LOCAL vitalab.erasure = 'on').
CREATE TABLE study_consents (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    study_id        text NOT NULL,
    participant_id  uuid NOT NULL,
    consent_version text,                  -- version of the consent text shown (NULL on a withdrawal)
    scopes          text[] NOT NULL DEFAULT '{}',
    given_at        timestamptz,
    withdrawn_at    timestamptz,
    recorded_at     timestamptz NOT NULL,  -- when the record was written (the API's clock)
    recorded_by     text NOT NULL,         -- key id or subject of who recorded it
    FOREIGN KEY (study_id, participant_id) REFERENCES study_enrolments ON DELETE CASCADE,
    CHECK ((given_at IS NULL) <> (withdrawn_at IS NULL)),
    CHECK (given_at IS NULL OR (consent_version IS NOT NULL AND cardinality(scopes) > 0)),
    CHECK (withdrawn_at IS NULL OR cardinality(scopes) = 0),
    CHECK (scopes <@ ARRAY['derived_metrics', 'raw_samples', 'rr_intervals', 'pooled_analyses',
                           'full_profile']::text[])
);
CREATE INDEX study_consents_enrolment_idx
    ON study_consents (study_id, participant_id, (coalesce(given_at, withdrawn_at)), id);

CREATE FUNCTION study_consents_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('vitalab.erasure', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'study_consents is append-only: % refused (record a new consent or a withdrawal)', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER study_consents_append_only BEFORE UPDATE OR DELETE ON study_consents
    FOR EACH ROW EXECUTE FUNCTION study_consents_append_only();
CREATE TRIGGER study_consents_no_truncate BEFORE TRUNCATE ON study_consents
    FOR EACH STATEMENT EXECUTE FUNCTION study_consents_append_only();

-- Export jobs: a request (who, when, exact parameters) and its state. A worker claims a queued job (or a
-- running one whose lease expired: its worker died) with FOR UPDATE SKIP LOCKED, renews the lease while it
-- writes into a temporary directory, and marks the job succeeded only after the files are fsynced and
-- renamed into place. A job whose lease expired max_attempts times is failed with the reason.
CREATE TABLE export_jobs (
    export_id        uuid PRIMARY KEY,
    study_id         text NOT NULL REFERENCES studies,
    requested_by     text NOT NULL,         -- key id or subject
    requested_at     timestamptz NOT NULL,
    params           jsonb NOT NULL,        -- datasets, format, range, pseudonym subset, gzip
    status           text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    lease_owner      text,
    lease_until      timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    progress_step    text,                  -- the dataset being written
    rows_done        bigint NOT NULL DEFAULT 0,
    rows_total       bigint,                -- known once the worker counted the rows
    error            text,
    consent_snapshot timestamptz,           -- the consent records in force at this time were applied
    directory        text,                  -- where the finished files are (under the export root)
    manifest         jsonb
);
CREATE INDEX export_jobs_queue_idx ON export_jobs (status, requested_at) WHERE status IN ('queued', 'running');
CREATE INDEX export_jobs_study_idx ON export_jobs (study_id, requested_at DESC, export_id);

-- Which participants a finished export contained (internal ids: never shown to researchers). Erasure reads
-- it to list the earlier exports that held a participant's data.
CREATE TABLE export_contents (
    export_id      uuid NOT NULL REFERENCES export_jobs ON DELETE CASCADE,
    participant_id uuid NOT NULL,
    PRIMARY KEY (export_id, participant_id)
);
CREATE INDEX export_contents_participant_idx ON export_contents (participant_id);
