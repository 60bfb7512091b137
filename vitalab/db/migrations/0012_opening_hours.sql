-- Opening hours in one place: sites.opening_hours (migration 0007, with sites.timezone; the rules are in
-- analytics/opening_hours.py), read by the fleet alerts, the live floor and the sites API alike. The rows of
-- site_opening_hours (0009, written by PUT /v1/sites/{site}/opening-hours until now) move into
-- sites.opening_hours of the sites whose opening_hours are not set. A site that has both keeps its
-- sites.opening_hours (set with the site and checked by the API); its rows are dropped, each site named in a
-- WARNING with the hours dropped. Periods of a day that overlap or touch (the table allowed overlaps) are
-- merged; a time with seconds (only SQL could write one) widens the period to whole minutes (opens rounded
-- down, closes up). A site without rows keeps NULL: always open, as before. Portable PostgreSQL.

CREATE TEMPORARY TABLE moved_opening_hours ON COMMIT DROP AS
WITH marked AS (
    SELECT site_id, iso_dow,
           floor(extract(epoch FROM opens) / 60)::int AS opens_min,
           ceil(extract(epoch FROM closes) / 60)::int AS closes_min,
           -- a period starts a new opening unless an earlier period of the day reaches it
           CASE WHEN opens <= max(closes) OVER (PARTITION BY site_id, iso_dow ORDER BY opens
                                              ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                THEN 0 ELSE 1 END AS starts
    FROM site_opening_hours
), numbered AS (
    SELECT *, sum(starts) OVER (PARTITION BY site_id, iso_dow ORDER BY opens_min, closes_min) AS opening
    FROM marked
), merged AS (
    SELECT site_id, iso_dow, min(opens_min) AS opens_min, max(closes_min) AS closes_min
    FROM numbered GROUP BY site_id, iso_dow, opening
), days AS (
    SELECT site_id, (ARRAY['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'])[iso_dow] AS day, iso_dow,
           jsonb_agg(jsonb_build_array(
               lpad((opens_min / 60)::text, 2, '0') || ':' || lpad((opens_min % 60)::text, 2, '0'),
               lpad((closes_min / 60)::text, 2, '0') || ':' || lpad((closes_min % 60)::text, 2, '0')
           ) ORDER BY opens_min) AS intervals
    FROM merged GROUP BY site_id, iso_dow
)
SELECT site_id, jsonb_object_agg(day, intervals ORDER BY iso_dow) AS hours FROM days GROUP BY site_id;

DO $$
DECLARE
    kept record;
BEGIN
    FOR kept IN
        SELECT s.site_id, s.opening_hours, m.hours FROM sites s JOIN moved_opening_hours m USING (site_id)
        WHERE s.opening_hours IS NOT NULL ORDER BY s.site_id
    LOOP
        RAISE WARNING 'site %: opening hours % kept (sites.opening_hours); % of site_opening_hours dropped',
            kept.site_id, kept.opening_hours, kept.hours;
    END LOOP;
END
$$;

UPDATE sites s SET opening_hours = m.hours
FROM moved_opening_hours m
WHERE s.site_id = m.site_id AND s.opening_hours IS NULL;

DROP TABLE site_opening_hours;
