-- DeliveryService schema: surveys and the responses imported for them.

-- One sequence numbers every import: a response's `seq` says when it became visible, and
-- a survey's `last_seq` is the highest `seq` of its responses (the snapshot watermark a
-- StreamResponses call serves). A new survey takes a value too, so its watermark is never
-- 0 (which the API reserves for "take a new snapshot").
CREATE SEQUENCE response_seq AS bigint;

CREATE TABLE surveys (
    id             uuid        PRIMARY KEY,
    org_id         text        NOT NULL,
    title          text        NOT NULL,
    description    text        NOT NULL DEFAULT '',
    -- The questions as a JSON array of proto3-JSON Question objects (readable in psql).
    questions      jsonb       NOT NULL,
    creator        text        NOT NULL,
    -- CreateSurvey's idempotency key; NULL when the caller sent none.
    request_id     text,
    create_time    timestamptz NOT NULL DEFAULT clock_timestamp(),
    response_count bigint      NOT NULL DEFAULT 0,
    last_seq       bigint      NOT NULL DEFAULT nextval('response_seq')
);

CREATE UNIQUE INDEX surveys_org_request_id ON surveys (org_id, request_id)
    WHERE request_id IS NOT NULL;
-- ListSurveys: newest first, keyset on (create_time, id).
CREATE INDEX surveys_org_newest ON surveys (org_id, create_time DESC, id DESC);

CREATE TABLE responses (
    survey_id uuid    NOT NULL,
    -- "C" collation: ids sort bytewise, the same order clients see and resume from.
    id        text    COLLATE "C" NOT NULL,
    seq       bigint  NOT NULL DEFAULT nextval('response_seq'),
    completed boolean NOT NULL,
    -- The serialized surveymesh.delivery.v1.Response (survey_id set), streamed back as is.
    payload   bytea   NOT NULL,
    PRIMARY KEY (survey_id, id)
);
-- No foreign key to surveys: the service checks the survey (and its org) before every
-- import, and a per-row FK trigger would cost a large share of a COPY-class import.

-- total_count of a snapshot: count(*) WHERE survey_id = $1 AND seq <= $2.
CREATE INDEX responses_survey_seq ON responses (survey_id, seq) INCLUDE (completed);
