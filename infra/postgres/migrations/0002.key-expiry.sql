-- Keys that expire (issue 16): the key view keeps, beside each key's document, when an active
-- key is due to expire (NULL: never, or it is already revoked or recorded as expired), so
-- that workers find the keys whose expiry is to be recorded with one index range scan
-- (infra/postgres/keys.py). Keys recorded before have no expiry: NULL is right for them.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS expiry_due timestamptz;
CREATE INDEX IF NOT EXISTS api_keys_expiry_due_idx ON api_keys (expiry_due)
    WHERE expiry_due IS NOT NULL;
