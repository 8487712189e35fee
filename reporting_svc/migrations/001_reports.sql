-- Reports, their components and their progress events (schema "reporting").
-- Enum columns hold the proto enum numbers (surveymesh.reporting.v1.ReportState etc.).

CREATE TABLE reports (
    id               uuid PRIMARY KEY,
    org_id           text NOT NULL,
    survey_id        text NOT NULL,
    kind             smallint NOT NULL,
    state            smallint NOT NULL,
    options          jsonb NOT NULL,
    request_id       text NOT NULL,
    workflow_id      text NOT NULL,
    creator          text NOT NULL,
    batch_id         uuid,
    required_roles   text[] NOT NULL DEFAULT '{}',
    progress_percent int NOT NULL DEFAULT 0,
    current_stage    text NOT NULL DEFAULT '',
    response_count   bigint NOT NULL DEFAULT 0,
    error            jsonb,
    -- Highest event sequence; incremented under the row lock, so sequences have no gaps.
    last_sequence    bigint NOT NULL DEFAULT 0,
    create_time      timestamptz NOT NULL DEFAULT now(),
    start_time       timestamptz,
    end_time         timestamptz,
    UNIQUE (org_id, request_id)
);
CREATE INDEX reports_by_org ON reports (org_id, create_time DESC, id DESC);
CREATE INDEX reports_by_survey ON reports (org_id, survey_id, create_time DESC, id DESC);
CREATE INDEX reports_by_batch ON reports (batch_id) WHERE batch_id IS NOT NULL;

-- One row per component type: a retried activity overwrites nothing and adds nothing.
CREATE TABLE report_components (
    report_id      uuid NOT NULL REFERENCES reports (id) ON DELETE CASCADE,
    component_type text NOT NULL,
    data           bytea NOT NULL,          -- UTF-8 JSON, served as stored
    schema_version int NOT NULL DEFAULT 1,
    create_time    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (report_id, component_type)
);

CREATE TABLE report_events (
    report_id        uuid NOT NULL REFERENCES reports (id) ON DELETE CASCADE,
    sequence         bigint NOT NULL,
    type             smallint NOT NULL,
    state            smallint NOT NULL,
    stage            text NOT NULL DEFAULT '',
    component_type   text NOT NULL DEFAULT '',
    progress_percent int NOT NULL DEFAULT 0,
    items_done       bigint NOT NULL DEFAULT 0,
    items_total      bigint NOT NULL DEFAULT 0,
    message          text NOT NULL DEFAULT '',
    error            jsonb,
    -- Identifies the logical event, so a retried activity records it once.
    dedupe_key       text NOT NULL,
    create_time      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (report_id, sequence),
    UNIQUE (report_id, dedupe_key)
);

-- The snapshot: the responses one report analyses, copied from DeliveryService once.
CREATE TABLE snapshot_responses (
    report_id     uuid NOT NULL REFERENCES reports (id) ON DELETE CASCADE,
    response_id   text NOT NULL,
    start_time    timestamptz,
    complete_time timestamptz,
    completed     boolean NOT NULL,
    attributes    jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (report_id, response_id)
);

-- Answers in columnar-friendly form: statistics read one question at a time.
CREATE TABLE snapshot_answers (
    report_id   uuid NOT NULL REFERENCES reports (id) ON DELETE CASCADE,
    question_id text NOT NULL,
    response_id text NOT NULL,
    number      double precision,   -- rating, nps and number answers
    text        text,               -- single choice and free text answers
    choices     text[],             -- multiple choice answers
    PRIMARY KEY (report_id, question_id, response_id)
);

-- Progress of a snapshot, so a retried snapshot activity resumes instead of starting over.
CREATE TABLE snapshots (
    report_id          uuid PRIMARY KEY REFERENCES reports (id) ON DELETE CASCADE,
    snapshot_watermark bigint NOT NULL,
    last_response_id   text NOT NULL DEFAULT '',
    copied             bigint NOT NULL DEFAULT 0,
    total              bigint NOT NULL DEFAULT 0,
    done               boolean NOT NULL DEFAULT false,
    survey             jsonb               -- the survey definition (questions) at snapshot time
);
