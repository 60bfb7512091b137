-- Indexes of the operator endpoints, each matching its query (`python bench/bench_operators.py --explain`
-- prints the plan of every query the endpoints send, on a 100-device, 90-day data set).

-- the open alerts of a site, newest first (GET /v1/sites/{site}/alerts?active=true)
CREATE INDEX alerts_site_active_idx ON alerts (site_id, started_at DESC, alert_id DESC) WHERE ended_at IS NULL;

-- occupancy: the fingerprint of its sessions (api/queries/report_inputs.py) and the sessions themselves
-- (api/queries/sites.py sessions_overlapping), both from the index alone
DROP INDEX sessions_site_version_end_idx;
CREATE INDEX sessions_site_version_end_idx ON sessions (site_id, algorithm_version, ended_at)
    INCLUDE (started_at, session_id, computed_at, participant_id, device_ids);

-- vitality: the fingerprint of the member-days of a range (api/queries/report_inputs.py), read on every
-- request, from the index alone
CREATE INDEX participant_daily_day_idx ON participant_daily (day) INCLUDE (participant_id, sessions, computed_at);
