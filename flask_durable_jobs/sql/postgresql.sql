-- The queue's SQL on PostgreSQL (flask_durable_jobs.store.postgresql).
--
-- Binds are :name; {NAME} is a status as a literal ({RUNNING} is 'running')
-- or a partial index's condition ({WAITING_SQL}), from
-- flask_durable_jobs.models. The library's own connections autocommit: each
-- statement here is a transaction of its own, one round trip.
--
-- Every write to a running job carries the claim's lease token in its WHERE
-- clause: a worker that lost its lease updates zero rows, so its late result
-- can never overwrite newer state. The token alone is the fence: a claim sets
-- a new one, and every write that ends the run (finish, sweep, release)
-- clears it. (A status = 'running' test would add nothing, and would let the
-- planner write through the partial index of running jobs, which holds an
-- entry for every job that ran since the last VACUUM.)
--
-- Lists go in as array literals in one text parameter each (the store's
-- int_array / text_array), cast here: the driver would adapt a list element
-- by element.
--
-- Statements that write a batch of jobs by id also test id = ANY(:ids):
-- joined with their unnest() alone, a table never analysed (a burst into a
-- new table) may be planned as a hash join over a scan of the whole table,
-- per batch; with it every plan reads the rows by primary key.


-- name: insert_job
-- One new job (its payload a JSON text in :payload), the statement of a
-- single enqueue: plain VALUES, whose binds take the columns' types. With
-- an idempotency key already taken it inserts nothing and returns no row.
INSERT INTO durable_jobs ({INSERT_COLUMNS}, payload)
VALUES ({INSERT_VALUES}, CAST(:payload AS JSONB))
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id


-- name: insert_jobs
-- New jobs that differ only in payload (JSON texts, in :payloads); the ids
-- come back from one sequence in payload order. Every enqueue of more than
-- one job takes this statement: enqueue_many and batches, in the caller's
-- transaction. With an idempotency key already taken it inserts nothing
-- and returns no row. Selected values take no column's type: the integers
-- are cast ({INSERT_VALUES_CAST}).
INSERT INTO durable_jobs ({INSERT_COLUMNS}, payload)
SELECT {INSERT_VALUES_CAST}, CAST(p.payload AS JSONB)
FROM unnest(CAST(:payloads AS TEXT[])) WITH ORDINALITY AS p(payload, ord)
ORDER BY p.ord
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id


-- name: claim
-- Up to :limit due jobs of the given types, running from now under a new
-- lease token. The inner SELECT repeats the due index's condition so that it
-- reads that index in claim order; SKIP LOCKED passes over rows another
-- claim holds. ARRAY(...) makes the ids a one-off list the UPDATE looks up by
-- primary key (a join with the subquery can plan a scan of the table).
-- Without :with_secrets, jobs carrying secrets wait for a process that has a
-- key. The payload goes out as text: the handler's thread decodes it.
-- The two SET LOCAL make the ordered scan of the due index the only plan,
-- whatever the statistics say: a table never analysed (a burst into a new
-- or long-quiet table) looks empty to the planner, which then prefers a
-- bitmap scan of every due row and a sort, per claim (a drain would be
-- quadratic). They last for this statement's implicit transaction only (the
-- store sends the three as one query string).
-- :after_* is a position in the due index (store/claimscan.py): during a
-- long drain the scan starts past the last job claimed instead of walking
-- the dead entries of every job claimed since the oldest open snapshot.
SET LOCAL enable_bitmapscan = off;
SET LOCAL enable_sort = off;
UPDATE durable_jobs AS j
SET status = {RUNNING}, attempts = j.attempts + 1, lease_token = :token,
    lease_expires_at = :lease, worker_id = :worker, started_at = :now, updated_at = :now
WHERE j.id = ANY(ARRAY(
    SELECT id FROM durable_jobs
    WHERE {WAITING_SQL} AND run_at <= :now
      AND job_type = ANY(CAST(:types AS TEXT[]))
      AND (CAST(:queues AS TEXT[]) IS NULL OR queue = ANY(CAST(:queues AS TEXT[])))
      AND (:with_secrets OR secrets IS NULL)
      -- paused queues: read once per statement (an InitPlan)
      AND queue <> ALL(ARRAY(SELECT name FROM durable_jobs_queues WHERE paused))
      AND (CAST(:after_priority AS INTEGER) IS NULL
           OR (priority, run_at, id) > (CAST(:after_priority AS INTEGER),
                                        CAST(:after_run_at AS TIMESTAMPTZ),
                                        CAST(:after_id AS BIGINT)))
    ORDER BY priority, run_at, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
))
RETURNING j.id, j.job_type, j.payload::text, j.attempts, j.max_attempts,
          j.secrets, j.batch_id,
          -- the sort key only: an integer loads far faster than a timestamptz
          j.priority, (extract(epoch FROM j.run_at) * 1000000)::bigint


-- name: finish
-- The outcomes of a batch of attempts, written where the lease still holds;
-- returns the ids written and the status each got. A job that ended (not
-- retrying) drops its secrets and, with a callback URL, has its callback due
-- now. A job whose cancel was requested (cancel_requested_at) is never
-- retried: unless it succeeded it ends cancelled. The handler's last
-- progress, when it reported any, goes in with the outcome. The statement
-- announces the ids that ended, one notification for the batch
-- (jobs.wait(); a list too long for NOTIFY goes as '', "look again").
-- SET LOCAL (for this statement's implicit transaction, as the claim's):
-- the rows are read by primary key, never by a scan of the table,
-- whatever the statistics say.
SET LOCAL enable_seqscan = off;
WITH done AS (
UPDATE durable_jobs AS j
SET status = CASE WHEN j.cancel_requested_at IS NOT NULL AND v.status <> {SUCCEEDED}
        THEN {CANCELLED} ELSE v.status END,
    result = v.result::jsonb, last_error = COALESCE(v.error, j.last_error),
    run_at = CASE WHEN j.cancel_requested_at IS NULL THEN COALESCE(v.run_at, j.run_at)
        ELSE j.run_at END,
    finished_at = CASE WHEN v.status = {RETRYING} AND j.cancel_requested_at IS NULL
        THEN NULL ELSE :now END,
    updated_at = :now, lease_token = NULL, lease_expires_at = NULL, worker_id = NULL,
    progress = COALESCE(v.progress::jsonb, j.progress),
    secrets = CASE WHEN v.status = {RETRYING} AND j.cancel_requested_at IS NULL
        THEN j.secrets END,
    callback_status = CASE WHEN (v.status <> {RETRYING} OR j.cancel_requested_at IS NOT NULL)
        AND j.callback_url IS NOT NULL THEN {CALLBACK_PENDING} ELSE j.callback_status END,
    callback_next_at = CASE WHEN (v.status <> {RETRYING} OR j.cancel_requested_at IS NOT NULL)
        AND j.callback_url IS NOT NULL THEN :now ELSE j.callback_next_at END
FROM unnest(CAST(:ids AS BIGINT[]), CAST(:tokens AS TEXT[]), CAST(:statuses AS TEXT[]),
            CAST(:results AS TEXT[]), CAST(:errors AS TEXT[]),
            CAST(:run_ats AS TIMESTAMPTZ[]), CAST(:progress AS TEXT[]))
     AS v(id, token, status, result, error, run_at, progress)
WHERE j.id = v.id AND j.lease_token = v.token
  AND j.id = ANY(CAST(:ids AS BIGINT[]))
RETURNING j.id, j.status
)
SELECT id, status, (
    SELECT count(pg_notify('durable_jobs_ended',
                           CASE WHEN length(ids) > 7000 THEN '' ELSE ids END))
    FROM (SELECT string_agg(id::text, ',') AS ids FROM done WHERE status <> {RETRYING}) AS e
    WHERE ids IS NOT NULL
) FROM done


-- name: renew
-- Extend the leases still held; returns their ids.
UPDATE durable_jobs AS j SET lease_expires_at = :lease
FROM unnest(CAST(:ids AS BIGINT[]), CAST(:tokens AS TEXT[])) AS v(id, token)
WHERE j.id = v.id AND j.lease_token = v.token
  AND j.id = ANY(CAST(:ids AS BIGINT[]))
RETURNING j.id


-- name: release
-- Give claimed jobs back, due at once, the attempt not counted. A job whose
-- cancel was requested ends cancelled instead (announced as finish does).
WITH released AS (
UPDATE durable_jobs AS j
SET status = CASE WHEN j.cancel_requested_at IS NOT NULL THEN {CANCELLED}
        WHEN j.attempts > 1 THEN {RETRYING} ELSE {PENDING} END,
    attempts = j.attempts - 1, run_at = :now, updated_at = :now, started_at = NULL,
    lease_token = NULL, lease_expires_at = NULL, worker_id = NULL,
    finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL THEN :now END,
    secrets = CASE WHEN j.cancel_requested_at IS NULL THEN j.secrets END,
    callback_status = CASE WHEN j.cancel_requested_at IS NOT NULL
        AND j.callback_url IS NOT NULL THEN {CALLBACK_PENDING} ELSE j.callback_status END,
    callback_next_at = CASE WHEN j.cancel_requested_at IS NOT NULL
        AND j.callback_url IS NOT NULL THEN :now ELSE j.callback_next_at END
FROM unnest(CAST(:ids AS BIGINT[]), CAST(:tokens AS TEXT[])) AS v(id, token)
WHERE j.id = v.id AND j.lease_token = v.token
  AND j.id = ANY(CAST(:ids AS BIGINT[]))
RETURNING j.id, j.status
)
SELECT id, status, (
    SELECT count(pg_notify('durable_jobs_ended', ids))
    FROM (SELECT string_agg(id::text, ',') AS ids FROM released
          WHERE status = {CANCELLED}) AS e
    WHERE ids IS NOT NULL AND length(ids) <= 7000
) FROM released


-- name: sweep
-- Up to :limit running jobs whose lease expired (the process died, was killed
-- or froze): a failed attempt, due again at once without backoff, or dead
-- when no attempt is left or the handler asked for it (orphan_policy 'dead',
-- a policy, not a status); cancelled when a cancel was requested. The ids
-- that ended are announced as finish does.
WITH swept AS (
UPDATE durable_jobs
SET status = CASE WHEN cancel_requested_at IS NOT NULL THEN {CANCELLED}
        WHEN attempts >= max_attempts OR orphan_policy = 'dead' THEN {DEAD}
        ELSE {RETRYING} END,
    finished_at = CASE WHEN attempts >= max_attempts OR orphan_policy = 'dead'
        OR cancel_requested_at IS NOT NULL THEN :now ELSE NULL END,
    run_at = :now,
    updated_at = :now,
    last_error = 'lease expired: worker ' || COALESCE(worker_id, '?')
        || ' stopped renewing it (the process died, was killed or froze)',
    lease_token = NULL,
    lease_expires_at = NULL,
    worker_id = NULL,
    secrets = CASE WHEN attempts >= max_attempts OR orphan_policy = 'dead'
        OR cancel_requested_at IS NOT NULL THEN NULL ELSE secrets END,
    callback_status = CASE WHEN (attempts >= max_attempts OR orphan_policy = 'dead'
        OR cancel_requested_at IS NOT NULL)
        AND callback_url IS NOT NULL THEN {CALLBACK_PENDING} ELSE callback_status END,
    callback_next_at = CASE WHEN (attempts >= max_attempts OR orphan_policy = 'dead'
        OR cancel_requested_at IS NOT NULL)
        AND callback_url IS NOT NULL THEN :now ELSE callback_next_at END
WHERE id = ANY(ARRAY(
    SELECT id FROM durable_jobs
    WHERE {RUNNING_SQL} AND lease_expires_at < :now
    ORDER BY id LIMIT :limit
    FOR UPDATE SKIP LOCKED
))
RETURNING id, job_type, status, batch_id
)
SELECT id, job_type, status, batch_id, (
    SELECT count(pg_notify('durable_jobs_ended',
                           CASE WHEN length(ids) > 7000 THEN '' ELSE ids END))
    FROM (SELECT string_agg(id::text, ',') AS ids FROM swept WHERE status <> {RETRYING}) AS e
    WHERE ids IS NOT NULL
) FROM swept


-- name: write_progress
-- What handlers reported of their progress, for a batch of running jobs,
-- where the lease still holds (at most once a second per job).
UPDATE durable_jobs AS j SET progress = v.progress::jsonb
FROM unnest(CAST(:ids AS BIGINT[]), CAST(:tokens AS TEXT[]), CAST(:progress AS TEXT[]))
     AS v(id, token, progress)
WHERE j.id = v.id AND j.lease_token = v.token
RETURNING j.id


-- name: notify_ended
-- Jobs ended outside the queue's own statements (a cancel): wake jobs.wait().
SELECT pg_notify('durable_jobs_ended', :ids)


-- name: listen_ended
-- jobs.wait(): the ids of jobs that ended, from finish, sweep, release and
-- notify_ended. A shortcut: the waiter reads the job again now and then.
LISTEN durable_jobs_ended


-- name: start_schedule
-- A recurring schedule seen for the first time; another process may have
-- recorded it already.
INSERT INTO durable_jobs_periodic (key, cron, timezone, last_fire_at, updated_at)
VALUES (:key, :cron, :timezone, :last_fire_at, :updated_at)
ON CONFLICT (key) DO NOTHING


-- name: server_clock
-- The server's clock as it reads now, not at the start of the transaction
-- (flask_durable_jobs.clock measures each process's offset to it).
SELECT clock_timestamp()


-- name: vacuum_state
-- What keeps vacuum from the job table (flask_durable_jobs.store.vacuum):
-- its dead and live tuples as the statistics collector counts them, and the
-- session with the oldest snapshot in this database (backend_xmin), which
-- no vacuum can look past: its pid, state, and since when its transaction
-- (or, outside one, its statement) runs. Other roles' sessions show these
-- only to a role with pg_read_all_stats. Autovacuum workers don't pin the
-- table: they are left out, as is this session.
SELECT s.n_dead_tup, s.n_live_tup,
       EXTRACT(EPOCH FROM clock_timestamp() - s.last_autovacuum),
       h.pid, h.state,
       EXTRACT(EPOCH FROM clock_timestamp() - COALESCE(h.xact_start, h.query_start)),
       age(h.backend_xmin)
FROM (SELECT 1) AS one
LEFT JOIN pg_stat_user_tables AS s ON s.relid = to_regclass('durable_jobs')
LEFT JOIN LATERAL (
    SELECT pid, state, xact_start, query_start, backend_xmin FROM pg_stat_activity
    WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()
      AND datname = current_database() AND backend_type <> 'autovacuum worker'
    ORDER BY age(backend_xmin) DESC
    LIMIT 1
) AS h ON true


-- name: listen
-- Wake-ups (the insert trigger's NOTIFY). A shortcut only: polling stays the
-- correctness path, and PgBouncer in transaction mode drops LISTEN.
LISTEN durable_jobs


-- name: after_create.notify_function
-- One NOTIFY per inserting statement (not per row); PostgreSQL folds
-- identical notifications of one transaction into one.
CREATE OR REPLACE FUNCTION durable_jobs_notify() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('durable_jobs', ''); RETURN NULL; END $$


-- name: after_create.notify_trigger
CREATE TRIGGER durable_jobs_notify AFTER INSERT ON durable_jobs
FOR EACH STATEMENT EXECUTE FUNCTION durable_jobs_notify()


-- name: before_drop.notify_function
DROP FUNCTION IF EXISTS durable_jobs_notify() CASCADE


-- name: after_create.count_table
-- Changes to the counts of jobs, per queue, type and status (see
-- durable_jobs_count below). Made with the job table, like its triggers,
-- and left out of the models: SQLite counts its table directly.
CREATE TABLE IF NOT EXISTS durable_jobs_counts (
    queue VARCHAR(100) NOT NULL,
    job_type VARCHAR(200) NOT NULL,
    status VARCHAR(16) NOT NULL,
    n BIGINT NOT NULL
)


-- name: after_create.payload_index_waiting
-- The admin list's payload-field filter (payload_matches): the jobs whose
-- payload contains {field: value}, found in GIN indexes (jsonb_path_ops:
-- smaller than the default and all @> needs) instead of read row by row.
-- Two, by who writes them. Waiting jobs come one enqueue at a time, from
-- many connections at once: each entry goes straight into the index
-- (fastupdate off), as no shared pending list would let them. Ended jobs
-- come a finish statement at a time: their entries go to the pending list
-- and are merged later (fastupdate, the default). A claim makes a job
-- running, which neither holds: running jobs are few, and the filter reads
-- them through the lease index.
CREATE INDEX IF NOT EXISTS ix_durable_jobs_payload_waiting ON durable_jobs
USING gin (payload jsonb_path_ops) WITH (fastupdate = off) WHERE {WAITING_SQL}


-- name: after_create.payload_index_ended
CREATE INDEX IF NOT EXISTS ix_durable_jobs_payload_ended ON durable_jobs
USING gin (payload jsonb_path_ops) WHERE {ENDED_SQL}


-- name: after_create.count_function
-- The counts of jobs per queue, type and status are kept as they change
-- instead of counted from the table, which holds mostly ended jobs: every
-- statement that inserts, updates or deletes rows adds its net change per
-- queue, type and status to durable_jobs_counts as new rows (inserts only,
-- so two writers never wait for each other there); the sweep folds them into
-- one row per group (fold_counts). An enqueue adds one row, a claim or a
-- finish of a batch one or two per queue and type; a statement that changes
-- no status (a lease renewal, a progress write) adds none.
CREATE OR REPLACE FUNCTION durable_jobs_count() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO durable_jobs_counts (queue, job_type, status, n)
        SELECT queue, job_type, status, count(*) FROM new_rows GROUP BY 1, 2, 3;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO durable_jobs_counts (queue, job_type, status, n)
        SELECT queue, job_type, status, -count(*) FROM old_rows GROUP BY 1, 2, 3;
    ELSE
        INSERT INTO durable_jobs_counts (queue, job_type, status, n)
        SELECT queue, job_type, status, sum(change) FROM (
            SELECT queue, job_type, status, 1 AS change FROM new_rows
            UNION ALL
            SELECT queue, job_type, status, -1 FROM old_rows
        ) AS changes
        GROUP BY 1, 2, 3 HAVING sum(change) <> 0;
    END IF;
    RETURN NULL;
END $$


-- name: after_create.count_update
CREATE TRIGGER durable_jobs_count_update AFTER UPDATE ON durable_jobs
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION durable_jobs_count()


-- name: after_create.count_delete
CREATE TRIGGER durable_jobs_count_delete AFTER DELETE ON durable_jobs
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION durable_jobs_count()


-- name: after_create.count_insert
CREATE TRIGGER durable_jobs_count_insert AFTER INSERT ON durable_jobs
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION durable_jobs_count()


-- name: after_create.count_clear_function
CREATE OR REPLACE FUNCTION durable_jobs_count_clear() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN DELETE FROM durable_jobs_counts; RETURN NULL; END $$


-- name: after_create.count_truncate
CREATE TRIGGER durable_jobs_count_truncate AFTER TRUNCATE ON durable_jobs
FOR EACH STATEMENT EXECUTE FUNCTION durable_jobs_count_clear()


-- name: before_drop.count_function
DROP FUNCTION IF EXISTS durable_jobs_count() CASCADE


-- name: before_drop.count_clear_function
DROP FUNCTION IF EXISTS durable_jobs_count_clear() CASCADE


-- name: before_drop.count_insert_function
DROP FUNCTION IF EXISTS durable_jobs_count_insert() CASCADE


-- name: before_drop.count_table
DROP TABLE IF EXISTS durable_jobs_counts


-- name: counts
-- Jobs per queue, type and status, from the rows the count triggers keep (no
-- job row is read), and with :due, the waiting ones already due and the
-- oldest due time, from the waiting jobs (the due index), in the same
-- statement (one snapshot). Without :due that arm is not run at all.
SELECT queue, job_type, status, CAST(sum(n) AS BIGINT), CAST(sum(due) AS BIGINT),
       min(oldest_due)
FROM (
    SELECT queue, job_type, status, n, 0 AS due, CAST(NULL AS TIMESTAMPTZ) AS oldest_due
    FROM durable_jobs_counts
    UNION ALL
    SELECT queue, job_type, status, 0, count(*), min(run_at)
    FROM durable_jobs WHERE {WAITING_SQL} AND run_at <= :now AND CAST(:due AS BOOLEAN)
    GROUP BY 1, 2, 3
) AS counted
GROUP BY 1, 2, 3 HAVING sum(n) <> 0


-- name: fold_counts
-- The changes the count triggers added, folded into one row per queue, type
-- and status (the sweep's). Rows added meanwhile are left for the next fold;
-- a second fold at the same time waits for this one's rows, then finds them
-- gone.
WITH gone AS (
    DELETE FROM durable_jobs_counts RETURNING queue, job_type, status, n
)
INSERT INTO durable_jobs_counts (queue, job_type, status, n)
SELECT queue, job_type, status, sum(n) FROM gone
GROUP BY 1, 2, 3 HAVING sum(n) <> 0


-- name: throughput
-- Jobs that ended (succeeded, dead) per minute since :since, from the partial
-- finished_at index, and jobs now waiting for a retry by the minute their
-- attempt failed (updated_at). Counted here; no row leaves the database.
SELECT to_char(date_trunc('minute', finished_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD HH24:MI')
           AS minute,
       status, count(*)
FROM durable_jobs
WHERE finished_at IS NOT NULL AND finished_at >= :since
  AND status IN ({SUCCEEDED}, {DEAD})
GROUP BY 1, 2
UNION ALL
SELECT to_char(date_trunc('minute', updated_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD HH24:MI'),
       status, count(*)
FROM durable_jobs
-- A retry is due no earlier than the failure it follows (run_at >= updated_at):
-- the run_at bound lets the scan of waiting jobs skip, inside the due index,
-- the backlog that was due before the window.
WHERE status = {RETRYING} AND updated_at >= :since AND run_at >= :since
GROUP BY 1, 2


-- name: set_queue_state
-- A queue's stored state (paused or not); every claim reads it.
INSERT INTO durable_jobs_queues (name, paused, updated_at)
VALUES (:name, :paused, :now)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at


-- name: adopt_unkeyed
-- Waiting jobs of a type that gained a limit, enqueued while it had none
-- (or by a process whose code has none yet): they carry no concurrency key,
-- so the limited claim would never see them. They take the type's one key
-- ''. Run under the type's limits row lock, once a minute per process.
UPDATE durable_jobs SET concurrency_key = ''
WHERE {WAITING_SQL} AND job_type = :job_type AND concurrency_key IS NULL


-- name: lock_limits
-- The limited claim's first statement: the job type's limits row, made if
-- need be, locked until the claim's transaction ends (one limited claim of
-- a type at a time, on every host); returns the rate window's start times.
INSERT INTO durable_jobs_limits (job_type, starts, updated_at)
VALUES (:job_type, NULL, :now)
ON CONFLICT (job_type) DO UPDATE SET job_type = excluded.job_type
RETURNING starts


-- name: save_limits
-- The rate window's start times after a limited claim (under the row's lock).
UPDATE durable_jobs_limits SET starts = :starts, updated_at = :now WHERE job_type = :job_type


-- name: claim_limited
-- Up to :limit due jobs of one limited type, at most :concurrency running
-- per concurrency key, under the type's limits row lock (lock_limits, in the
-- same transaction: this statement's snapshot sees every claim before it).
-- keys: the keys with waiting jobs, one index probe each (a loose index scan
-- of ix_durable_jobs_limited); busy: running jobs per key whose lease has not
-- expired (a dead process's slot frees when its lease ends); each key then
-- gives its next jobs in claim order, as many as it has free slots, so a full
-- key never holds back the others. The UPDATE repeats the waiting condition:
-- a job cancelled meanwhile is left alone.
WITH RECURSIVE keys(k) AS (
    (SELECT concurrency_key FROM durable_jobs
     WHERE {LIMITED_WAITING_SQL} AND job_type = :job_type
     ORDER BY concurrency_key LIMIT 1)
    UNION ALL
    SELECT (SELECT concurrency_key FROM durable_jobs
            WHERE {LIMITED_WAITING_SQL} AND job_type = :job_type AND concurrency_key > keys.k
            ORDER BY concurrency_key LIMIT 1)
    FROM keys WHERE keys.k IS NOT NULL
),
busy AS (
    SELECT concurrency_key AS k, count(*) AS n FROM durable_jobs
    WHERE {LIMITED_RUNNING_SQL} AND job_type = :job_type AND lease_expires_at > :now
    GROUP BY concurrency_key
),
picked AS (
    SELECT c.id FROM keys
    LEFT JOIN busy ON busy.k = keys.k
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at FROM durable_jobs
        WHERE {LIMITED_WAITING_SQL} AND job_type = :job_type AND concurrency_key = keys.k
          AND run_at <= :now
          AND (CAST(:queues AS JSONB) IS NULL
               OR queue IN (SELECT jsonb_array_elements_text(CAST(:queues AS JSONB))))
          AND queue <> ALL(ARRAY(SELECT name FROM durable_jobs_queues WHERE paused))
          AND (:with_secrets OR secrets IS NULL)
        ORDER BY priority, run_at, id
        LIMIT GREATEST(0, CAST(:concurrency AS INTEGER) - COALESCE(busy.n, 0))
    ) AS c
    WHERE keys.k IS NOT NULL
    ORDER BY c.priority, c.run_at, c.id
    LIMIT :limit
)
UPDATE durable_jobs AS j
SET status = {RUNNING}, attempts = j.attempts + 1, lease_token = :token,
    lease_expires_at = :lease, worker_id = :worker, started_at = :now, updated_at = :now
WHERE j.id IN (SELECT id FROM picked) AND j.status IN ({PENDING}, {RETRYING})
RETURNING j.id, j.job_type, j.payload::text, j.attempts, j.max_attempts,
          j.secrets, j.batch_id,
          j.priority, (extract(epoch FROM j.run_at) * 1000000)::bigint


-- name: beat_process
-- This process's record in the registry, made or renewed by its heartbeat.
INSERT INTO durable_jobs_processes (
    id, host, pid, started_at, last_seen, queues, concurrency, version, inflight
)
VALUES (:id, :host, :pid, :started_at, :now, :queues, :concurrency, :version, :inflight)
ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, inflight = excluded.inflight


-- name: payload_matches
-- A condition of the admin list and the bulk actions (flask_durable_jobs.listing):
-- the payload's top-level field :payload_field, in string form, equals
-- :payload_value. A string compares as itself, a number or boolean as its
-- JSON text; null, objects and arrays never match. The first condition
-- finds the candidates in the payload indexes (ix_durable_jobs_payload_*): the
-- payload contains {field: value} with the value as a string, or as the
-- JSON number or boolean it spells (else null: a candidate the second
-- condition turns down, as it does a number written another way).
-- Each index's condition leads its own arm (the planner ORs the indexes'
-- bitmaps); running jobs are in neither: they come from the lease index.
(({WAITING_SQL} AND payload @> ANY(ARRAY[
    jsonb_build_object(CAST(:payload_field AS text), CAST(:payload_value AS text)),
    jsonb_build_object(CAST(:payload_field AS text), CAST(CASE
        WHEN CAST(:payload_value AS text)
             ~ '^(-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?|true|false)$'
        THEN CAST(:payload_value AS text) ELSE 'null' END AS jsonb))]))
 OR ({ENDED_SQL} AND payload @> ANY(ARRAY[
    jsonb_build_object(CAST(:payload_field AS text), CAST(:payload_value AS text)),
    jsonb_build_object(CAST(:payload_field AS text), CAST(CASE
        WHEN CAST(:payload_value AS text)
             ~ '^(-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?|true|false)$'
        THEN CAST(:payload_value AS text) ELSE 'null' END AS jsonb))]))
 OR {RUNNING_SQL})
AND (jsonb_typeof(payload -> CAST(:payload_field AS text)) IN ('string', 'number', 'boolean')
 AND payload ->> CAST(:payload_field AS text) = CAST(:payload_value AS text))


-- name: after_create.autovacuum
-- Vacuum and analyse the job table after 1 % of its rows changed instead of
-- PostgreSQL's 20 % and 10 %: every claim and finish leaves dead index
-- entries behind, and a burst into a quiet table should get statistics
-- soon. (Migration 0005 sets the same on existing tables.)
ALTER TABLE durable_jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.01
)
