-- A site's own pseudonymous reference for a participant (a membership or kiosk number; never a name or an
-- e-mail): registering the same reference at the same site again finds the participant instead of adding
-- one (POST /v1/participants). NULLs are distinct, so participants without a reference are unaffected.
ALTER TABLE participants ADD COLUMN external_ref text
    CHECK (external_ref ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$');
ALTER TABLE participants ADD CONSTRAINT participants_site_ref_key UNIQUE (site_id, external_ref);
