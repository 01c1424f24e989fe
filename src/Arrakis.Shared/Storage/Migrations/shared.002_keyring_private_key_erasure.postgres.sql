-- A key that can no longer sign keeps no private key: revocation destroys it at once, and a retired key's is destroyed
-- when the key leaves the JWKS. The row stays (kid, status, timestamps, public point) for 'loa keys list' and audits.
ALTER TABLE signing_keys ALTER COLUMN private_key_enc DROP NOT NULL;
UPDATE signing_keys SET private_key_enc = NULL WHERE status = 'revoked';
ALTER TABLE signing_keys ADD CONSTRAINT signing_keys_private_key_while_signing CHECK (private_key_enc IS NOT NULL OR status IN ('retired', 'revoked'));
