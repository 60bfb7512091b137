-- Device identity (issue 11). A device id is unique in the deployment (the devices' primary key) and belongs to
-- one site for good: the site segment of its topics must be that site. The broker's ACL lets a device (or a
-- gateway, for the devices attached to it) publish under its own site only, and the ingester dead-letters a
-- message whose topic names another site than the device's as `site_mismatch`.
--
-- Devices and gateways are registered through the API (`registered_at`), which issues their broker logins; under
-- the ingester's default `register` policy an unregistered device (and its site) also appears when first heard
-- of (`registered_at` NULL) and is bound to the site it was first heard at. Retiring one (`retired_at`) revokes
-- its broker login and keeps its data. Broker credentials are not kept here: the broker's account store holds
-- their hashes (vitalab.broker), so the unused credential columns of schema v1 go.

ALTER TABLE sites ADD COLUMN opening_hours jsonb
    CHECK (opening_hours IS NULL OR jsonb_typeof(opening_hours) = 'object');
COMMENT ON COLUMN sites.opening_hours IS
    'local opening hours per weekday: {"mon": [["06:00", "22:00"]], ...}; a day not named is closed; NULL: not set';

ALTER TABLE gateways
    ADD COLUMN registered_at timestamptz,
    ADD COLUMN retired_at    timestamptz,
    ADD CONSTRAINT gateways_retired_after_registered
        CHECK (retired_at IS NULL OR registered_at IS NULL OR retired_at >= registered_at),
    ADD CONSTRAINT gateways_id_site_key UNIQUE (gateway_id, site_id);

ALTER TABLE devices
    DROP COLUMN mqtt_username,
    DROP COLUMN secret_hash,
    ADD COLUMN gateway_id    text,
    ADD COLUMN registered_at timestamptz,
    ADD COLUMN retired_at    timestamptz,
    ADD CONSTRAINT devices_retired_after_registered
        CHECK (retired_at IS NULL OR registered_at IS NULL OR retired_at >= registered_at),
    -- a device attached to a gateway is at the gateway's site
    ADD CONSTRAINT devices_gateway_same_site
        FOREIGN KEY (gateway_id, site_id) REFERENCES gateways (gateway_id, site_id);
CREATE INDEX devices_gateway_idx ON devices (gateway_id) WHERE gateway_id IS NOT NULL;

-- the site of a device or a gateway never changes (a device that moves to another site gets a new id)
CREATE FUNCTION site_is_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%: the site of % never changes (% -> %)', TG_TABLE_NAME, to_jsonb(OLD) ->> TG_ARGV[0],
        OLD.site_id, NEW.site_id
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;
CREATE TRIGGER devices_site_fixed BEFORE UPDATE OF site_id ON devices
    FOR EACH ROW WHEN (OLD.site_id IS DISTINCT FROM NEW.site_id) EXECUTE FUNCTION site_is_fixed('device_id');
CREATE TRIGGER gateways_site_fixed BEFORE UPDATE OF site_id ON gateways
    FOR EACH ROW WHEN (OLD.site_id IS DISTINCT FROM NEW.site_id) EXECUTE FUNCTION site_is_fixed('gateway_id');
