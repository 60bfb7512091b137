-- Rollups every dashboard reads: per device per minute, per site per hour.
-- Plain PostgreSQL: views computed on the fly. TimescaleDB (0002_aggregates.timescale.sql): continuous
-- aggregates with the same names and columns, kept fresh by policies, with real-time aggregation on.
-- date_bin with a midnight origin gives the same minute and hour buckets as time_bucket.

CREATE VIEW samples_1m AS
SELECT device_id,
       site_id,
       date_bin('1 minute', t, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
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
GROUP BY device_id, site_id, bucket;

CREATE VIEW site_samples_1h AS
SELECT site_id,
       date_bin('1 hour', bucket, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
       count(*)                                AS device_minutes,  -- minutes with data, summed over devices
       sum(n_samples)                          AS n_samples,
       sum(hr_sum_bpm) / NULLIF(sum(n_hr), 0)  AS hr_avg_bpm,
       max(hr_max_bpm)                         AS hr_max_bpm
FROM samples_1m
GROUP BY site_id, 2;
