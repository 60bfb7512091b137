-- The analytics job's own record: every run's outcome, and the rows it set aside instead of failing for
-- everyone; device quality separates backfilled history from late data. Portable PostgreSQL (small tables).

-- One row per run of an analytics job (skipped runs, which found another run in progress, are not recorded).
-- Written in the run's own transaction when it succeeds, and in a transaction of its own after a failed run
-- rolled back. Read by analytics/job_runs.py:job_health (the API's /health). Rows older than 7 days are
-- pruned by the job.
CREATE TABLE analytics_job_runs (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job            text NOT NULL,
    started_at     timestamptz NOT NULL,  -- the run's clock (the `now` it was given)
    finished_at    timestamptz NOT NULL,  -- started_at + the run's duration (monotonic timer)
    outcome        text NOT NULL CHECK (outcome IN ('ok', 'failed')),
    error          text,                  -- the failure: exception type and message
    rows_set_aside integer NOT NULL DEFAULT 0 CHECK (rows_set_aside >= 0),
    report         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX analytics_job_runs_job_idx ON analytics_job_runs (job, started_at DESC, id DESC);

-- Rows the analytics job could not process, set aside with their reason while the rest was computed. One
-- row per (source, row_key): `source` names what was set aside (a table, or a unit of the job's work such
-- as a site window), `row_key` its identity there; seen again, a row counts `times` up. Fix the data (or
-- the code), delete the row here and run `vitalab analytics run --full` to recompute.
CREATE TABLE analytics_rejects (
    source        text NOT NULL,
    row_key       text NOT NULL,
    reason        text NOT NULL,
    detail        jsonb NOT NULL DEFAULT '{}',
    first_seen_at timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL,
    times         integer NOT NULL DEFAULT 1,
    PRIMARY KEY (source, row_key)
);

-- rows that arrived more than a minute behind in a catch-up stream (history published in bulk, a gateway's
-- buffer emptied after an outage): not late data (analytics/device_quality.py has the definitions)
ALTER TABLE device_quality_daily ADD COLUMN backfill_samples bigint NOT NULL DEFAULT 0;
