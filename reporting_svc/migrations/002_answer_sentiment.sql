-- Per-answer sentiment of a report's free-text answers (written by the sentiment activity).
-- A retried activity or a fallback to the local analyzer upserts, so each answer has one row.
CREATE TABLE answer_sentiment (
    report_id   uuid NOT NULL REFERENCES reports (id) ON DELETE CASCADE,
    question_id text NOT NULL,
    response_id text NOT NULL,
    label       smallint NOT NULL,   -- 1 positive, 0 neutral, -1 negative
    score       real NOT NULL,       -- -1 (negative) .. +1 (positive)
    confidence  real NOT NULL,       -- 0 .. 1 (the analyzer's, or |score| for VADER)
    PRIMARY KEY (report_id, question_id, response_id)
);
