-- Retention: the dispatcher deletes finished deliveries (with their attempts and kept
-- emails) and done notifications older than SURVEYMESH_NOTIFICATION_RETENTION_DAYS, in
-- small batches. These indexes let each batch find its rows without scanning a table.
CREATE INDEX deliveries_finished ON deliveries (update_time) WHERE status IN (2, 4);
-- Also serves the foreign-key check when a delivery row is deleted.
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);
CREATE INDEX notifications_created ON notifications (create_time);

-- Webhook signing secrets are encrypted at rest (notification_svc/secretbox.py): both
-- columns hold 'enc:v1:<key id>:<base64 nonce|ciphertext|tag>', bound to the row's id.
-- Rows written before this migration hold a plain 'whsec_...' value until the service
-- re-encrypts them at start; a deleted endpoint's secret is erased ('').
COMMENT ON COLUMN webhook_endpoints.secret IS
    'AES-256-GCM sealed signing secret (enc:v1:kid:...); legacy rows plain whsec_';
COMMENT ON COLUMN webhook_endpoints.previous_secret IS
    'the secret before the last rotation, sealed like secret; live until its expire time';
