-- vitalab schema v1: portable PostgreSQL (>= 15). TimescaleDB extras live in 0001_schema_v1.timescale.sql.
-- Identifiers of sites, devices and gateways are the ids of the MQTT topic tree (text, [A-Za-z0-9_.-]).

CREATE TABLE sites (
    site_id     text PRIMARY KEY,
    name        text,
    timezone    text NOT NULL DEFAULT 'UTC',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gateways (
    gateway_id  text PRIMARY KEY,
    site_id     text NOT NULL REFERENCES sites,
    online      boolean NOT NULL DEFAULT false,
    last_seen   timestamptz
);

CREATE TABLE devices (
    device_id     text PRIMARY KEY,
    site_id       text NOT NULL REFERENCES sites,
    kind          text CHECK (kind IN ('treadmill', 'bike', 'rower', 'cross_trainer', 'hr_strap', 'power_meter')),
    vendor        text,
    model         text,
    firmware      text,
    transport     text,
    features      text[] NOT NULL DEFAULT '{}',
    mqtt_username text UNIQUE,
    secret_hash   text,                       -- per-device credential (hash only, never the secret)
    quarantined   boolean NOT NULL DEFAULT false,
    online        boolean,
    training      text,
    errors        text[] NOT NULL DEFAULT '{}',
    state_at      timestamptz,                -- device time of the newest state message applied
    first_seen    timestamptz NOT NULL DEFAULT now(),
    last_seen     timestamptz
);
CREATE INDEX devices_site_idx ON devices (site_id);

CREATE TABLE participants (
    participant_id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),  -- pseudonym: no names, no e-mail
    site_id              text NOT NULL REFERENCES sites,
    birth_year           smallint CHECK (birth_year BETWEEN 1900 AND 2100),
    sex                  text CHECK (sex IN ('female', 'male')),
    weight_kg            real CHECK (weight_kg BETWEEN 20 AND 400),
    hr_rest_bpm          real CHECK (hr_rest_bpm BETWEEN 20 AND 150),
    hr_max_bpm           real CHECK (hr_max_bpm BETWEEN 100 AND 250),
    consent_given_at     timestamptz,
    consent_withdrawn_at timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now()
);

-- who used (or wore) which device when; open-ended while ended_at is null
CREATE TABLE device_assignments (
    device_id      text NOT NULL REFERENCES devices ON DELETE CASCADE,
    participant_id uuid NOT NULL REFERENCES participants ON DELETE CASCADE,
    started_at     timestamptz NOT NULL,
    ended_at       timestamptz,
    PRIMARY KEY (device_id, started_at),
    CHECK (ended_at IS NULL OR ended_at > started_at)
);
CREATE INDEX device_assignments_participant_idx ON device_assignments (participant_id, started_at);

CREATE TABLE studies (
    study_id    text PRIMARY KEY,
    title       text NOT NULL,
    starts_on   date,
    ends_on     date,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE study_enrolments (
    study_id       text NOT NULL REFERENCES studies ON DELETE CASCADE,
    participant_id uuid NOT NULL REFERENCES participants ON DELETE CASCADE,
    enrolled_at    timestamptz NOT NULL DEFAULT now(),
    consent_scope  text[] NOT NULL DEFAULT '{}',
    withdrawn_at   timestamptz,
    PRIMARY KEY (study_id, participant_id)
);

CREATE TABLE sessions (
    session_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id           text NOT NULL REFERENCES sites,
    participant_id    uuid REFERENCES participants ON DELETE CASCADE,
    device_ids        text[] NOT NULL,
    started_at        timestamptz NOT NULL,
    ended_at          timestamptz NOT NULL,
    source            text NOT NULL CHECK (source IN ('machine_status', 'check_in', 'activity_gap')),
    summary           jsonb NOT NULL DEFAULT '{}',
    algorithm_version text NOT NULL,
    computed_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (ended_at >= started_at)
);
CREATE UNIQUE INDEX sessions_identity_idx ON sessions (device_ids, started_at, algorithm_version);
CREATE INDEX sessions_participant_idx ON sessions (participant_id, started_at);

-- time series -----------------------------------------------------------------------------------------

-- one row per device and instant; the row identity is (device_id, t): redeliveries never add a row
CREATE TABLE samples (
    device_id        text NOT NULL,
    t                timestamptz NOT NULL,
    site_id          text NOT NULL,
    seq              bigint,                   -- the message's per-device sequence number
    received_at      timestamptz NOT NULL DEFAULT now(),
    speed_kmh        real,
    incline_pct      real,
    distance_m       double precision,
    energy_kcal      real,
    power_w          real,
    cadence_rpm      real,
    stroke_rate_spm  real,
    pace_s_per_500m  real,
    hr_bpm           real,
    elapsed_s        real,
    resistance_level real,
    met              real,
    PRIMARY KEY (device_id, t)
);

-- RR intervals of a sample, oldest first (idx 0..n-1)
CREATE TABLE rr_intervals (
    device_id text NOT NULL,
    t         timestamptz NOT NULL,
    idx       smallint NOT NULL,
    rr_ms     real NOT NULL,
    PRIMARY KEY (device_id, t, idx)
);

-- online/offline, training status, errors, meta changes
CREATE TABLE device_events (
    device_id   text NOT NULL,
    t           timestamptz NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('online', 'offline', 'state', 'meta', 'error')),
    detail      jsonb NOT NULL DEFAULT '{}',
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, t, kind)
);

-- everything the ingester could not accept, with why; payload capped (payload_size is the original size)
CREATE TABLE dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    topic        text NOT NULL,
    reason       text NOT NULL,
    detail       text NOT NULL,
    path         text,
    device_id    text,
    payload      bytea NOT NULL,
    payload_size integer NOT NULL,
    PRIMARY KEY (received_at, id)
);
CREATE INDEX dead_letters_reason_idx ON dead_letters (reason, received_at);
