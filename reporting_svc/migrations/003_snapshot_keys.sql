-- Cheaper writes of a snapshot (issue 11). A snapshot of a million responses copies about
-- eight million answer rows; per row, the foreign-key trigger (a locking look-up of the
-- report) and the unique three-column index cost several times the COPY itself.
--
-- What the dropped constraints guaranteed still holds:
--   * Snapshot rows belong to an existing report: only the snapshot activity writes them,
--     in the transaction that holds its report's `snapshots` row FOR UPDATE (that row keeps
--     its foreign key). Deleting a report deletes its `snapshots` row (waiting for that lock)
--     and, through the trigger below, the copied rows.
--   * Each answer is copied exactly once: a response's answers are copied in the same
--     transaction as the response, whose primary key (report_id, response_id) stays, and
--     Delivery accepts at most one answer per question of a response.
-- Statistics, sentiment and themes read one question at a time: (report_id, question_id).

ALTER TABLE snapshot_responses DROP CONSTRAINT snapshot_responses_report_id_fkey;
ALTER TABLE snapshot_answers DROP CONSTRAINT snapshot_answers_report_id_fkey;
ALTER TABLE snapshot_answers DROP CONSTRAINT snapshot_answers_pkey;
CREATE INDEX snapshot_answers_by_question ON snapshot_answers (report_id, question_id);

CREATE FUNCTION delete_report_snapshot() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM snapshot_answers WHERE report_id = OLD.id;
    DELETE FROM snapshot_responses WHERE report_id = OLD.id;
    RETURN OLD;
END
$$;

CREATE TRIGGER reports_delete_snapshot AFTER DELETE ON reports
    FOR EACH ROW EXECUTE FUNCTION delete_report_snapshot();

-- Answers copied so far, advanced with each batch (counting them at the end read the
-- whole snapshot once more).
ALTER TABLE snapshots ADD COLUMN answers bigint NOT NULL DEFAULT 0;
UPDATE snapshots s SET answers = (
    SELECT count(*) FROM snapshot_answers a WHERE a.report_id = s.report_id
);
