-- Access: API keys (only a hash of the secret is stored) and the append-only audit log (api/keys.py,
-- api/audit.py, api/policy.py). Portable PostgreSQL.

-- A key is `vl_<key_id>_<secret>`; the secret (256 random bits) is shown once at creation and stored only as
-- SHA-256(key_id ':' secret). Scope: `sites` / `studies` NULL means all of them, an empty array none.
CREATE TABLE api_keys (
    key_id        text PRIMARY KEY CHECK (key_id ~ '^[a-z0-9]{16}$'),
    secret_sha256 bytea NOT NULL CHECK (length(secret_sha256) = 32),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    owner         text NOT NULL CHECK (length(owner) BETWEEN 1 AND 200),
    role          text NOT NULL CHECK (role IN ('admin', 'operator', 'researcher', 'integrator', 'kiosk')),
    sites         text[],
    studies       text[],
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz,
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    CHECK (expires_at IS NULL OR expires_at > created_at)
);
CREATE INDEX api_keys_created_idx ON api_keys (created_at, key_id);

-- Every write, every read of participant-level data and every authentication failure. Rows are only ever
-- added: the triggers below refuse UPDATE, DELETE and TRUNCATE (for everyone but a superuser who drops them).
CREATE TABLE audit_log (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL,
    key_id   text,          -- the API key used (or claimed, for a failed authentication)
    subject  text,          -- the single-sign-on subject (or the key's owner)
    role     text,
    action   text NOT NULL, -- e.g. `GET /v1/participants/{participant_id}`, `authenticate`, `keys.create`
    resource text NOT NULL, -- what was acted on: the request path and query, a key id
    outcome  text NOT NULL, -- the HTTP status (`200`, `404`), with the reason of a refusal (`401 revoked`)
    address  text           -- the client's address
);
CREATE INDEX audit_log_at_idx ON audit_log (at, id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
