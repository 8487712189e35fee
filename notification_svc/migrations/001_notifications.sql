-- NotificationService schema: notifications, the delivery outbox, attempts, endpoints and
-- the email outbox. Applied with search_path = notification.

-- Per-recipient counter of in-app sequences. Its row lock, held until the sending
-- transaction commits, makes sequences of one user become visible in increasing order, so
-- a WatchNotifications reader that has seen N never later finds a smaller one committed.
CREATE TABLE user_sequences (
    org_id        text   NOT NULL,
    user_id       text   NOT NULL,
    last_sequence bigint NOT NULL,
    PRIMARY KEY (org_id, user_id)
);

CREATE TABLE notifications (
    id              uuid        PRIMARY KEY,
    org_id          text        NOT NULL,
    user_id         text        NOT NULL,
    type            text        NOT NULL,
    title           text        NOT NULL,
    body            text        NOT NULL,
    link            text        NOT NULL,
    metadata        jsonb       NOT NULL,
    channels        smallint[]  NOT NULL,
    email           text        NOT NULL DEFAULT '',
    idempotency_key text        NOT NULL,
    -- 0 when the notification is not in-app (it has no place in the user's stream).
    sequence        bigint      NOT NULL DEFAULT 0,
    create_time     timestamptz NOT NULL DEFAULT now(),
    read_time       timestamptz,
    UNIQUE (org_id, idempotency_key)
);
CREATE UNIQUE INDEX notifications_stream ON notifications (org_id, user_id, sequence)
    WHERE sequence > 0;
CREATE INDEX notifications_unread ON notifications (org_id, user_id, sequence)
    WHERE sequence > 0 AND read_time IS NULL;

CREATE TABLE webhook_endpoints (
    id                   uuid        PRIMARY KEY,
    org_id               text        NOT NULL,
    url                  text        NOT NULL,
    event_types          text[]      NOT NULL,
    description          text        NOT NULL,
    secret               text        NOT NULL,
    -- Secret rotation: while previous_secret_expire_time is in the future, deliveries
    -- carry a signature with the previous secret too, so receivers can switch at leisure.
    previous_secret      text,
    previous_secret_expire_time timestamptz,
    request_id           text        NOT NULL DEFAULT '',
    create_time          timestamptz NOT NULL DEFAULT now(),
    delete_time          timestamptz,
    position             bigserial   NOT NULL
);
CREATE UNIQUE INDEX webhook_endpoints_request ON webhook_endpoints (org_id, request_id)
    WHERE request_id <> '';
CREATE INDEX webhook_endpoints_org ON webhook_endpoints (org_id, position)
    WHERE delete_time IS NULL;

-- The outbox: one row per (notification, channel, endpoint), written in the same
-- transaction as the notification, so a delivery is never lost between "stored" and "sent".
-- status: 1 pending, 2 succeeded, 3 retrying, 4 failed (the DeliveryStatus enum values).
-- A dispatcher claims a due row by moving next_attempt_time one lease ahead and setting
-- claim_token; a crashed dispatcher's claim simply expires and the row is due again.
CREATE TABLE deliveries (
    id                uuid        PRIMARY KEY,
    org_id            text        NOT NULL,
    notification_id   uuid        NOT NULL REFERENCES notifications (id),
    channel           smallint    NOT NULL,
    endpoint_id       uuid        REFERENCES webhook_endpoints (id),
    message_id        text        NOT NULL,
    status            smallint    NOT NULL DEFAULT 1,
    attempts          integer     NOT NULL DEFAULT 0,
    next_attempt_time timestamptz NOT NULL DEFAULT now(),
    claim_token       uuid,
    last_error        text        NOT NULL DEFAULT '',
    create_time       timestamptz NOT NULL DEFAULT now(),
    update_time       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_time) WHERE status IN (1, 3);
CREATE INDEX deliveries_notification ON deliveries (notification_id);
CREATE INDEX deliveries_endpoint ON deliveries (endpoint_id) WHERE status IN (1, 3);

CREATE TABLE delivery_attempts (
    id                uuid        PRIMARY KEY,
    org_id            text        NOT NULL,
    delivery_id       uuid        NOT NULL REFERENCES deliveries (id),
    notification_id   uuid        NOT NULL,
    channel           smallint    NOT NULL,
    endpoint_id       uuid,
    message_id        text        NOT NULL,
    attempt_number    integer     NOT NULL,
    status            smallint    NOT NULL,
    response_code     integer     NOT NULL,
    latency_ms        double precision NOT NULL,
    error             text        NOT NULL,
    attempt_time      timestamptz NOT NULL,
    next_attempt_time timestamptz,
    position          bigserial   NOT NULL
);
CREATE INDEX delivery_attempts_notification ON delivery_attempts (org_id, notification_id, position);
CREATE INDEX delivery_attempts_endpoint ON delivery_attempts (org_id, endpoint_id, position);

-- Emails "sent" with no SMTP server configured, for a developer to read (also as .eml).
CREATE TABLE email_outbox (
    id              uuid        PRIMARY KEY,
    org_id          text        NOT NULL,
    notification_id uuid        NOT NULL,
    delivery_id     uuid        NOT NULL UNIQUE REFERENCES deliveries (id),
    to_address      text        NOT NULL,
    subject         text        NOT NULL,
    text_body       text        NOT NULL,
    html_body       text        NOT NULL,
    raw_message     text        NOT NULL,
    eml_path        text        NOT NULL,
    create_time     timestamptz NOT NULL DEFAULT now()
);
