-- TimescaleDB extras for schema v1: applied after 0001_schema_v1.sql when the extension is available.
SELECT create_hypertable('samples', by_range('t', INTERVAL '1 day'), migrate_data => true);
SELECT create_hypertable('rr_intervals', by_range('t', INTERVAL '1 day'), migrate_data => true);
SELECT create_hypertable('device_events', by_range('t', INTERVAL '7 days'), migrate_data => true);
SELECT create_hypertable('dead_letters', by_range('received_at', INTERVAL '7 days'), migrate_data => true);
