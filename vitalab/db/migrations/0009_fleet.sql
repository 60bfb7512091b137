-- Fleet health and maintenance (analytics/fleet.py, api/routes/fleet.py): the battery a device reports, a
-- site's opening hours, per-device odometer and running hours, service thresholds and service records,
-- alerts and their webhook outbox, a read-only role for dashboards (Grafana), and the indexes the operator
-- endpoints' queries need. Portable PostgreSQL.

-- the battery's charge of the newest state message (NULL: the device does not report one)
ALTER TABLE devices ADD COLUMN battery_pct real CHECK (battery_pct BETWEEN 0 AND 100);

-- When a site is open, in its local time (sites.timezone). Several rows per weekday are several periods; a
-- period across midnight is two rows (22:00-24:00 and 00:00-02:00 of the next day). A site without rows is
-- open around the clock. The alerts that need a device or gateway to be there only fire while it is open.
CREATE TABLE site_opening_hours (
    site_id text NOT NULL REFERENCES sites ON DELETE CASCADE,
    iso_dow smallint NOT NULL CHECK (iso_dow BETWEEN 1 AND 7),  -- 1 Monday .. 7 Sunday
    opens   time NOT NULL,
    closes  time NOT NULL,                                       -- '24:00' is the end of the day
    CHECK (closes > opens),
    PRIMARY KEY (site_id, iso_dow, opens)
);

-- Per device and UTC hour: distance covered and running time, from the samples (analytics/fleet.py has the
-- definitions), recomputed by the analytics job for the hours it processes.
CREATE TABLE device_usage_hourly (
    device_id  text NOT NULL,
    hour       timestamptz NOT NULL,
    site_id    text NOT NULL,
    distance_m double precision NOT NULL,
    running_s  double precision NOT NULL,
    PRIMARY KEY (device_id, hour)
);

-- Per device: the odometer and running time of its whole history, and since its last service (the sums of
-- device_usage_hourly; written by the analytics job, zeroed by POST /v1/devices/{device_id}/serviced).
CREATE TABLE device_counters (
    device_id          text PRIMARY KEY REFERENCES devices ON DELETE CASCADE,
    site_id            text NOT NULL,
    distance_m         double precision NOT NULL,
    running_s          double precision NOT NULL,
    service_distance_m double precision NOT NULL,  -- since last_service_at (everything when never serviced)
    service_running_s  double precision NOT NULL,
    last_service_at    timestamptz,
    computed_at        timestamptz NOT NULL
);
CREATE INDEX device_counters_site_idx ON device_counters (site_id);

-- Distance and running time between services, per kind of machine and model (model '*': every model of the
-- kind without a row of its own). NULL: not a criterion. Defaults below; change them with SQL or
-- PUT /v1/service-thresholds.
CREATE TABLE service_thresholds (
    kind  text NOT NULL CHECK (kind IN ('treadmill', 'bike', 'rower', 'cross_trainer', 'hr_strap', 'power_meter')),
    model text NOT NULL DEFAULT '*' CHECK (length(model) BETWEEN 1 AND 64),
    km    real CHECK (km > 0),
    hours real CHECK (hours > 0),
    PRIMARY KEY (kind, model)
);
INSERT INTO service_thresholds (kind, model, km, hours) VALUES
    ('treadmill', '*', 5000, 1000),
    ('bike', '*', NULL, 1000),
    ('rower', '*', 10000, 1000),
    ('cross_trainer', '*', NULL, 1000);

-- Every service of a device; the newest resets its counters (`counted`: the job has taken it into account).
CREATE TABLE device_services (
    service_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   text NOT NULL REFERENCES devices ON DELETE CASCADE,
    serviced_at timestamptz NOT NULL,
    note        text CHECK (length(note) <= 1000),
    recorded_at timestamptz NOT NULL,
    recorded_by text,
    counted     boolean NOT NULL DEFAULT false
);
CREATE INDEX device_services_device_idx ON device_services (device_id, serviced_at DESC);
CREATE INDEX device_services_uncounted_idx ON device_services (device_id) WHERE NOT counted;

-- Alerts computed by the analytics job: one open row (ended_at NULL) per subject and kind, closed when the
-- condition clears. `subject`: what the alert is about (a device, a gateway, or the site itself for dead
-- letters without a device).
CREATE TABLE alerts (
    alert_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id    text NOT NULL,
    subject    text NOT NULL CHECK (subject IN ('device', 'gateway', 'site')),
    subject_id text NOT NULL,
    kind       text NOT NULL
        CHECK (kind IN ('silent', 'service_due', 'clock_skew', 'dead_letters', 'gateway_offline')),
    started_at timestamptz NOT NULL,
    ended_at   timestamptz,
    detail     jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL,
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);
CREATE UNIQUE INDEX alerts_open_idx ON alerts (site_id, subject, subject_id, kind) WHERE ended_at IS NULL;
CREATE INDEX alerts_site_idx ON alerts (site_id, started_at DESC, alert_id DESC);

-- Where a site's alerts are pushed (POST JSON), and what is still to be delivered: the job appends to the
-- outbox in its own transaction; deliveries happen after the commit, with retries (analytics/fleet.py).
CREATE TABLE site_webhooks (
    site_id    text PRIMARY KEY REFERENCES sites ON DELETE CASCADE,
    url        text NOT NULL CHECK (url ~ '^https?://[^[:space:]]+$' AND length(url) <= 2000),
    updated_at timestamptz NOT NULL
);
CREATE TABLE alert_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id         text NOT NULL,
    url             text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    delivered_at    timestamptz,
    failed_at       timestamptz,  -- given up after the last attempt
    last_error      text
);
CREATE INDEX alert_outbox_due_idx ON alert_outbox (next_attempt_at, id)
    WHERE delivered_at IS NULL AND failed_at IS NULL;

-- Indexes of the operator endpoints (EXPLAINed on a 100-device, 90-day data set: bench/bench_operators.py).
-- sessions of a site and algorithm version by start: GET /v1/sessions?site= pages along this index
CREATE INDEX sessions_site_version_idx ON sessions (site_id, algorithm_version, started_at, session_id);
-- ... and by end: the occupancy's sessions overlapping a recent range (`ended_at >= since`), and the
-- fingerprint of those sessions (api/queries/report_inputs.py) read from the index alone
CREATE INDEX sessions_site_version_end_idx ON sessions (site_id, algorithm_version, ended_at)
    INCLUDE (started_at, session_id, computed_at);
-- device_hourly of a site over a range: utilisation and occupancy read whole hour ranges of one site
DROP INDEX device_hourly_site_idx;
CREATE INDEX device_hourly_site_idx ON device_hourly (site_id, hour)
    INCLUDE (device_id, in_session_s, minutes_with_data);
-- the last hour of dead letters per device (alerts)
CREATE INDEX dead_letters_device_idx ON dead_letters (device_id, received_at) WHERE device_id IS NOT NULL;

-- A read-only role for dashboards (Grafana): the operator-level tables and views only, no participant ids,
-- no keys, no audit log. The login that uses it is made by the deployment (deploy/grafana/init.sh). Roles are
-- shared by every database of a server: made when missing, and only when this user may make roles.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vitalab_readonly') THEN
        IF (SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user) THEN
            BEGIN
                CREATE ROLE vitalab_readonly NOLOGIN;
            EXCEPTION WHEN duplicate_object THEN
                NULL;  -- made by a concurrent migration of another database
            END;
        ELSE
            RAISE NOTICE 'vitalab_readonly not created: % may not create roles', current_user;
        END IF;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'vitalab_readonly') THEN
        EXECUTE 'GRANT USAGE ON SCHEMA public TO vitalab_readonly';
        EXECUTE 'GRANT SELECT ON sites, gateways, site_opening_hours, device_hourly, device_quality_daily, '
                'device_usage_hourly, device_counters, service_thresholds, device_services, alerts, '
                'samples_1m, site_samples_1h TO vitalab_readonly';
        EXECUTE 'GRANT SELECT (device_id, site_id, kind, vendor, model, firmware, transport, features, '
                'quarantined, online, training, errors, battery_pct, state_at, first_seen, last_seen) '
                'ON devices TO vitalab_readonly';
        EXECUTE 'GRANT SELECT (session_id, site_id, device_ids, started_at, ended_at, source, '
                'algorithm_version, duration_s, energy_kcal, distance_m) ON sessions TO vitalab_readonly';
    END IF;
END
$$;
