-- TimescaleDB: the rollups of 0002_aggregates.sql as (hierarchical) continuous aggregates, and columnstore
-- settings. Policies whose ages are settings (compression age, retention) are applied by
-- vitalab.db.timescale.apply_policies after every migration run.

DROP VIEW site_samples_1h;
DROP VIEW samples_1m;

CREATE MATERIALIZED VIEW samples_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT device_id,
       site_id,
       time_bucket(INTERVAL '1 minute', t) AS bucket,
       count(*)          AS n_samples,
       count(hr_bpm)     AS n_hr,
       sum(hr_bpm)       AS hr_sum_bpm,
       min(hr_bpm)       AS hr_min_bpm,
       max(hr_bpm)       AS hr_max_bpm,
       avg(power_w)      AS power_avg_w,
       max(power_w)      AS power_max_w,
       avg(speed_kmh)    AS speed_avg_kmh,
       avg(cadence_rpm)  AS cadence_avg_rpm,
       max(distance_m)   AS distance_max_m,
       max(energy_kcal)  AS energy_max_kcal
FROM samples
GROUP BY device_id, site_id, time_bucket(INTERVAL '1 minute', t)
WITH NO DATA;

CREATE MATERIALIZED VIEW site_samples_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT site_id,
       time_bucket(INTERVAL '1 hour', bucket)  AS bucket,
       count(*)                                AS device_minutes,
       sum(n_samples)                          AS n_samples,
       sum(hr_sum_bpm) / NULLIF(sum(n_hr), 0)  AS hr_avg_bpm,
       max(hr_max_bpm)                         AS hr_max_bpm
FROM samples_1m
GROUP BY site_id, time_bucket(INTERVAL '1 hour', bucket)
WITH NO DATA;

SELECT add_continuous_aggregate_policy('samples_1m',
    start_offset => INTERVAL '2 days', end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute');
SELECT add_continuous_aggregate_policy('site_samples_1h',
    start_offset => INTERVAL '7 days', end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '15 minutes');

-- columnstore: one segment per device, newest first inside it
ALTER TABLE samples SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id',
                         timescaledb.compress_orderby = 't DESC');
ALTER TABLE rr_intervals SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id',
                              timescaledb.compress_orderby = 't DESC, idx');
