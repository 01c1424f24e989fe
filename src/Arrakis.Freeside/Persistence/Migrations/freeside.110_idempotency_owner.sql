-- Each idempotency claim names its owner: the reservation of the call that holds the key. Only the owner renews,
-- completes, rewrites or abandons the key, and a lapsed key is taken over only once its owner's reservation is no longer
-- pending (IdempotencyStore), so a call that lost its key can neither charge it a second time nor free another call's
-- claim (C4). Keys claimed before this step have no owner and go by the lease alone, as before.
ALTER TABLE idempotency_keys ADD COLUMN owner TEXT NULL;
