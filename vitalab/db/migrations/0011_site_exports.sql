-- Site exports: a gym operator's export of a site's aggregates (utilisation, occupancy, suppressed vitality)
-- runs as a job of the same queue as the study exports (export_jobs, one worker: api/exports/jobs.py). A job
-- is of a study (kind 'study', study_id set) or of a site (kind 'site', site_id set), never both. Site exports
-- hold aggregates only: nothing of them goes into export_contents. Portable PostgreSQL.
-- The SQL that reads these rows lives in api/queries/exports.py and api/exports/site.py.
ALTER TABLE export_jobs
    ADD COLUMN kind text NOT NULL DEFAULT 'study' CHECK (kind IN ('study', 'site')),
    ADD COLUMN site_id text REFERENCES sites,
    ALTER COLUMN study_id DROP NOT NULL,
    ADD CONSTRAINT export_jobs_subject_check CHECK (
        (kind = 'study' AND study_id IS NOT NULL AND site_id IS NULL)
        OR (kind = 'site' AND site_id IS NOT NULL AND study_id IS NULL)
    );
CREATE INDEX export_jobs_site_idx ON export_jobs (site_id, requested_at DESC, export_id) WHERE site_id IS NOT NULL;
