-- Analytics storage: what the ingester counted per device and day, sessions' typed columns, per-participant
-- daily series, per-device hourly utilisation, per-device daily quality, and the incremental job's state.
-- Portable PostgreSQL; nothing here needs TimescaleDB (all tables are small next to `samples`).

-- One row per ingest batch, appended by ingest/writer.py in the same transaction as the batch's rows (one
-- GROUP BY over the staging table; no update of shared rows, so concurrent ingesters never wait on each
-- other): per device and UTC day of device time, the valid samples received (duplicates included) and the
-- device-time range they cover. The analytics job consumes it: it deletes the rows it read, adds their
-- counts to ingest_device_stats and recomputes the ranges. Rows committed while a job runs are not visible
-- to its DELETE and stay for the next run.
CREATE TABLE ingest_batches (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    written_at timestamptz NOT NULL DEFAULT now(),
    messages   integer NOT NULL,           -- messages in the batch (all topics)
    device_id  text[] NOT NULL,
    day        date[] NOT NULL,
    received   integer[] NOT NULL,
    t_from     timestamptz[] NOT NULL,
    t_to       timestamptz[] NOT NULL
);

-- Per device and UTC day: valid samples received by the ingester (duplicates included), folded in from
-- ingest_batches by the analytics job. Duplicates = samples_received - rows stored for that device-day.
CREATE TABLE ingest_device_stats (
    device_id        text NOT NULL,
    day              date NOT NULL,
    samples_received bigint NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, day)
);

-- Ranges whose sessions must be re-assembled because a device event or a check-in changed (fed by triggers;
-- samples go through ingest_batches instead, without a per-row trigger on the hot path), or because a
-- session was still open at the last run.
CREATE TABLE analytics_dirty (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id text NOT NULL,
    t_from    timestamptz NOT NULL,
    t_to      timestamptz NOT NULL,
    reason    text NOT NULL,
    noted_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION analytics_note_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind IN ('state', 'offline', 'error') THEN
        INSERT INTO analytics_dirty (device_id, t_from, t_to, reason) VALUES (NEW.device_id, NEW.t, NEW.t, 'event');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER device_events_analytics AFTER INSERT ON device_events
    FOR EACH ROW EXECUTE FUNCTION analytics_note_event();

-- an open check-in (ended_at NULL) dirties up to its start plus a day; the job also re-reads open ones
CREATE FUNCTION analytics_note_assignment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO analytics_dirty (device_id, t_from, t_to, reason)
        VALUES (OLD.device_id, OLD.started_at, COALESCE(OLD.ended_at, OLD.started_at + INTERVAL '1 day'),
                'check_in');
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO analytics_dirty (device_id, t_from, t_to, reason)
        VALUES (NEW.device_id, NEW.started_at, COALESCE(NEW.ended_at, NEW.started_at + INTERVAL '1 day'),
                'check_in');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER device_assignments_analytics AFTER INSERT OR UPDATE OR DELETE ON device_assignments
    FOR EACH ROW EXECUTE FUNCTION analytics_note_assignment();

-- sessions: typed copies of the most used summary metrics (the full summary stays in `summary`)
ALTER TABLE sessions
    ADD COLUMN hr_source       text CHECK (hr_source IN ('strap', 'machine')),
    ADD COLUMN duration_s      real,
    ADD COLUMN hr_avg_bpm      real,
    ADD COLUMN trimp           real,   -- Banister TRIMP (the daily load)
    ADD COLUMN moderate_min    real,
    ADD COLUMN vigorous_min    real,   -- vigorous + near-maximal %HRR minutes
    ADD COLUMN pai_as          real,   -- PAI activity score of the session (Nes 2017 step 1)
    ADD COLUMN hr_rest_est_bpm real,   -- lowest 5-min rolling HR of the session (resting-HR proxy)
    ADD COLUMN rmssd_ms        real,
    ADD COLUMN energy_kcal     real,
    ADD COLUMN distance_m      real;
CREATE INDEX sessions_site_time_idx ON sessions (site_id, started_at);
CREATE INDEX sessions_devices_idx ON sessions USING gin (device_ids);

-- per participant and day (UTC): load, fitness/fatigue, ratios, guideline minutes, PAI, trends
CREATE TABLE participant_daily (
    participant_id    uuid NOT NULL REFERENCES participants ON DELETE CASCADE,
    day               date NOT NULL,
    sessions          integer NOT NULL,
    load              real NOT NULL,   -- sum of session TRIMP (Banister) that day; 0 on rest days
    load_7d           real NOT NULL,   -- rolling 7-day sum (weekly load)
    ctl               real NOT NULL,   -- chronic training load, N = 42 (GoldenCheetah convention)
    atl               real NOT NULL,   -- acute training load, N = 7
    tsb               real NOT NULL,   -- training stress balance: CTL - ATL of the previous day
    acwr_ewma         real,            -- EWMA acute (7) / chronic (28), Williams 2017; NULL when chronic = 0
    acwr_rolling      real,            -- rolling 7-day mean / rolling 28-day mean (coupled)
    moderate_min      real NOT NULL,
    vigorous_min      real NOT NULL,
    who_min_7d        real NOT NULL,   -- rolling 7-day moderate + 2 x vigorous minutes
    who_status        text NOT NULL CHECK (who_status IN ('below', 'within', 'above')),
    pai_as            real NOT NULL,   -- activity score earned that day
    pai_7d            real,            -- PAI over the rolling 7 days (NULL: sex or HRrest unknown)
    rhr_bpm           real,            -- that day's resting-HR proxy (lowest 5-min rolling HR of its sessions)
    rhr_7d_bpm        real,            -- mean of the available proxies over 7 / 28 days
    rhr_28d_bpm       real,
    rmssd_ms          real,            -- mean session RMSSD that day
    ln_rmssd_7d       real,            -- mean ln(RMSSD) over the rolling 7 days
    vo2max_ml_kg_min  real,            -- Uth-Sorensen 15.3 x HRmax / HRrest (HRrest: 28-day proxy or profile)
    algorithm_version text NOT NULL,
    computed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (participant_id, day)
);

-- ISO weeks (Monday first) of participant_daily
CREATE VIEW participant_weekly AS
SELECT participant_id,
       date_trunc('week', day)::date AS week,
       sum(sessions)                AS sessions,
       sum(load)                    AS load,
       sum(moderate_min)            AS moderate_min,
       sum(vigorous_min)            AS vigorous_min,
       sum(moderate_min) + 2 * sum(vigorous_min) AS who_min,
       sum(pai_as)                  AS pai_as,
       count(*)                     AS days
FROM participant_daily
GROUP BY participant_id, date_trunc('week', day);

-- per device and UTC hour: time inside sessions, minutes with any sample, sessions started
CREATE TABLE device_hourly (
    device_id         text NOT NULL,
    hour              timestamptz NOT NULL,
    site_id           text NOT NULL,
    in_session_s      real NOT NULL,
    minutes_with_data smallint NOT NULL,
    sessions_started  smallint NOT NULL,
    computed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, hour)
);
CREATE INDEX device_hourly_site_idx ON device_hourly (site_id, hour);

-- per device and UTC day: data quality (see analytics/device_quality.py for every definition)
CREATE TABLE device_quality_daily (
    device_id          text NOT NULL,
    day                date NOT NULL,
    site_id            text NOT NULL,
    samples            bigint NOT NULL,  -- rows stored
    samples_received   bigint,           -- from ingest_device_stats (NULL: not written through the ingester)
    duplicates         bigint,           -- samples_received - samples
    late_samples       bigint NOT NULL,
    lag_p05_s          real,
    lag_p50_s          real,
    lag_p95_s          real,
    clock_skew_s       real,
    period_s           real,
    on_s               real NOT NULL,
    expected_samples   real NOT NULL,
    received_ratio     real,
    dropouts           bigint NOT NULL,
    gaps               integer NOT NULL,
    gap_s              real NOT NULL,
    hr_valid_share     real,             -- rows with a valid heart rate (straps: wear fraction)
    computed_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, day)
);

-- one row per job: what the incremental job has done
CREATE TABLE analytics_state (
    job               text PRIMARY KEY,
    algorithm_version text,
    daily_through     date,            -- participant_daily rows extend through this day
    last_run_at       timestamptz,
    last_run_s        real,
    last_result       jsonb NOT NULL DEFAULT '{}'
);
