-- The queue's SQL on SQLite (flask_durable_jobs.store.sqlite).
--
-- Binds are :name; {NAME} is a status as a literal ({RUNNING} is 'running')
-- or a partial index's condition ({WAITING_SQL}), from
-- flask_durable_jobs.models. Timestamps are bound as the text SQLAlchemy
-- stores for a DATETIME ("2030-01-02 03:04:05.000006", UTC), which sorts in
-- time order.
--
-- SQLite has one writer: the library's writes run in BEGIN IMMEDIATE
-- transactions, which take the write lock at the start and wait for it
-- through the busy timeout, so "database is locked" never surfaces. A row's
-- writes are one statement per row (no arrays), all in one transaction.
--
-- Every write to a running job carries the claim's lease token in its WHERE
-- clause: a worker that lost its lease updates zero rows, so its late result
-- can never overwrite newer state. The token alone is the fence: a claim sets
-- a new one, and every write that ends the run (finish, sweep, release)
-- clears it.


-- name: insert_job
-- One new job (its payload a JSON text in :payload), the statement of a
-- single enqueue: plain VALUES, no JSON array to build and walk. With an
-- idempotency key already taken it inserts nothing (the cursor's rowcount
-- says 0); the new id is the connection's last rowid.
INSERT INTO durable_jobs ({INSERT_COLUMNS}, payload)
VALUES ({INSERT_VALUES}, :payload)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING


-- name: insert_jobs
-- New jobs that differ only in payload (a JSON array of the payloads, in
-- :payloads); the ids come back in payload order. Every enqueue of more
-- than one job takes this statement: enqueue_many and batches, in the
-- caller's transaction. With an idempotency key already taken it inserts
-- nothing and returns no row.
-- (WHERE true: without it SQLite could read ON CONFLICT as a join's ON.)
INSERT INTO durable_jobs ({INSERT_COLUMNS}, payload)
SELECT {INSERT_VALUES}, value
FROM json_each(:payloads)
WHERE true
ORDER BY key
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id


-- name: claim
-- Up to :limit due jobs of the given types (JSON arrays in :types and
-- :queues; no :queues, every queue), running from now under a new lease
-- token. INDEXED BY and the repeated condition make the claim read the due
-- index in claim order. Without :with_secrets, jobs carrying secrets wait
-- for a process that has a key.
UPDATE durable_jobs
SET status = {RUNNING}, attempts = attempts + 1, lease_token = :token,
    lease_expires_at = :lease, worker_id = :worker, started_at = :now, updated_at = :now
WHERE id IN (
    SELECT id FROM durable_jobs INDEXED BY ix_durable_jobs_due
    WHERE {WAITING_SQL} AND run_at <= :now
      AND job_type IN (SELECT value FROM json_each(:types))
      AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)))
      AND (:with_secrets OR secrets IS NULL)
      -- paused queues: an uncorrelated subquery, read once per statement
      AND queue NOT IN (SELECT name FROM durable_jobs_queues WHERE paused)
    ORDER BY priority, run_at, id
    LIMIT :limit
)
RETURNING id, job_type, payload, attempts, max_attempts, secrets, batch_id,
          priority, run_at


-- name: finish
-- One attempt's outcome, written if the lease still holds; returns the id
-- written and the status it got. A job that ended (not retrying) drops its
-- secrets and, with a callback URL, has its callback due now. A job whose
-- cancel was requested (cancel_requested_at) is never retried: unless it
-- succeeded it ends cancelled. The handler's last progress, when it
-- reported any, goes in with the outcome.
UPDATE durable_jobs
SET status = CASE WHEN cancel_requested_at IS NOT NULL AND :status <> {SUCCEEDED}
        THEN {CANCELLED} ELSE :status END,
    result = :result, last_error = COALESCE(:error, last_error),
    run_at = CASE WHEN cancel_requested_at IS NULL THEN COALESCE(:run_at, run_at)
        ELSE run_at END,
    finished_at = CASE WHEN :status = {RETRYING} AND cancel_requested_at IS NULL
        THEN NULL ELSE :now END,
    updated_at = :now, lease_token = NULL, lease_expires_at = NULL, worker_id = NULL,
    progress = COALESCE(:progress, progress),
    secrets = CASE WHEN :status = {RETRYING} AND cancel_requested_at IS NULL
        THEN secrets END,
    callback_status = CASE WHEN (:status <> {RETRYING} OR cancel_requested_at IS NOT NULL)
        AND callback_url IS NOT NULL THEN {CALLBACK_PENDING} ELSE callback_status END,
    callback_next_at = CASE WHEN (:status <> {RETRYING} OR cancel_requested_at IS NOT NULL)
        AND callback_url IS NOT NULL THEN :now ELSE callback_next_at END
WHERE id = :id AND lease_token = :token
RETURNING id, status


-- name: renew
-- Extend one lease if still held.
UPDATE durable_jobs SET lease_expires_at = :lease
WHERE id = :id AND lease_token = :token
RETURNING id


-- name: release
-- Give one claimed job back, due at once, the attempt not counted. A job
-- whose cancel was requested ends cancelled instead.
UPDATE durable_jobs
SET status = CASE WHEN cancel_requested_at IS NOT NULL THEN {CANCELLED}
        WHEN attempts > 1 THEN {RETRYING} ELSE {PENDING} END,
    attempts = attempts - 1, run_at = :now, updated_at = :now, started_at = NULL,
    lease_token = NULL, lease_expires_at = NULL, worker_id = NULL,
    finished_at = CASE WHEN cancel_requested_at IS NOT NULL THEN :now END,
    secrets = CASE WHEN cancel_requested_at IS NULL THEN secrets END,
    callback_status = CASE WHEN cancel_requested_at IS NOT NULL
        AND callback_url IS NOT NULL THEN {CALLBACK_PENDING} ELSE callback_status END,
    callback_next_at = CASE WHEN cancel_requested_at IS NOT NULL
        AND callback_url IS NOT NULL THEN :now ELSE callback_next_at END
WHERE id = :id AND lease_token = :token
RETURNING id


-- name: sweep
-- Up to :limit running jobs whose lease expired (the process died, was killed
-- or froze): a failed attempt, due again at once without backoff, or dead
-- when no attempt is left or the handler asked for it (orphan_policy 'dead',
-- a policy, not a status); cancelled when a cancel was requested.
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
WHERE id IN (
    SELECT id FROM durable_jobs
    WHERE {RUNNING_SQL} AND lease_expires_at < :now
    ORDER BY id LIMIT :limit
)
RETURNING id, job_type, status, batch_id


-- name: write_progress
-- What a handler reported of its progress, for one running job, if the
-- lease still holds (at most once a second per job).
UPDATE durable_jobs SET progress = :progress
WHERE id = :id AND lease_token = :token
RETURNING id


-- name: start_schedule
-- A recurring schedule seen for the first time; another process may have
-- recorded it already.
INSERT INTO durable_jobs_periodic (key, cron, timezone, last_fire_at, updated_at)
VALUES (:key, :cron, :timezone, :last_fire_at, :updated_at)
ON CONFLICT (key) DO NOTHING


-- name: counts
-- Jobs per queue, type and status, and with :due the waiting ones already
-- due and the oldest due time, in one statement (one snapshot): one aggregate
-- per partial index (ended, waiting, running jobs), so no part reads every row.
SELECT queue, job_type, status, count(*), 0, NULL
FROM durable_jobs WHERE {ENDED_SQL} GROUP BY 1, 2, 3
UNION ALL
SELECT queue, job_type, status, count(*),
       sum(CASE WHEN :due AND run_at <= :now THEN 1 ELSE 0 END),
       min(CASE WHEN :due AND run_at <= :now THEN run_at END)
FROM durable_jobs WHERE {WAITING_SQL} GROUP BY 1, 2, 3
UNION ALL
SELECT queue, job_type, status, count(*), 0, NULL
FROM durable_jobs WHERE {RUNNING_SQL} GROUP BY 1, 2, 3


-- name: throughput
-- Jobs that ended (succeeded, dead) per minute since :since, from the partial
-- finished_at index, and jobs now waiting for a retry by the minute their
-- attempt failed (updated_at). The stored text's first 16 characters are its
-- minute ("2030-01-02 03:04").
SELECT substr(finished_at, 1, 16) AS minute, status, count(*)
FROM durable_jobs
WHERE finished_at IS NOT NULL AND finished_at >= :since
  AND status IN ({SUCCEEDED}, {DEAD})
GROUP BY 1, 2
UNION ALL
SELECT substr(updated_at, 1, 16), status, count(*)
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
-- need be; returns the rate window's start times. (The BEGIN IMMEDIATE
-- around the limited claim is the lock: one writer at a time.)
INSERT INTO durable_jobs_limits (job_type, starts, updated_at)
VALUES (:job_type, NULL, :now)
ON CONFLICT (job_type) DO UPDATE SET job_type = excluded.job_type
RETURNING starts


-- name: save_limits
-- The rate window's start times after a limited claim.
UPDATE durable_jobs_limits SET starts = :starts, updated_at = :now WHERE job_type = :job_type


-- name: claim_limited
-- Up to :limit due jobs of one limited type, at most :concurrency running
-- per concurrency key (running jobs whose lease has not expired: a dead
-- process's slot frees when its lease ends). Each key's waiting jobs are
-- numbered in claim order and a key gives as many as it has free slots, so a
-- full key never holds back the others.
WITH busy AS (
    SELECT concurrency_key AS k, count(*) AS n FROM durable_jobs
    WHERE {LIMITED_RUNNING_SQL} AND job_type = :job_type AND lease_expires_at > :now
    GROUP BY concurrency_key
),
ranked AS (
    SELECT id, priority, run_at, concurrency_key AS k,
           row_number() OVER (PARTITION BY concurrency_key
                              ORDER BY priority, run_at, id) AS n
    FROM durable_jobs INDEXED BY ix_durable_jobs_limited
    WHERE {LIMITED_WAITING_SQL} AND job_type = :job_type AND run_at <= :now
      AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)))
      AND queue NOT IN (SELECT name FROM durable_jobs_queues WHERE paused)
      AND (:with_secrets OR secrets IS NULL)
)
UPDATE durable_jobs
SET status = {RUNNING}, attempts = attempts + 1, lease_token = :token,
    lease_expires_at = :lease, worker_id = :worker, started_at = :now, updated_at = :now
WHERE id IN (
    SELECT r.id FROM ranked AS r LEFT JOIN busy AS b ON b.k = r.k
    WHERE r.n <= :concurrency - COALESCE(b.n, 0)
    ORDER BY r.priority, r.run_at, r.id
    LIMIT :limit
)
RETURNING id, job_type, payload, attempts, max_attempts, secrets, batch_id,
          priority, run_at


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
-- JSON text (json_extract gives 1 for true, so booleans are spelled out);
-- null, objects and arrays never match. The field name holds no quote
-- (listing refuses one), so it can sit inside the quoted path label.
(json_type(payload, '$."' || :payload_field || '"') IN ('text', 'integer', 'real', 'true', 'false')
 AND CASE json_type(payload, '$."' || :payload_field || '"')
         WHEN 'true' THEN 'true'
         WHEN 'false' THEN 'false'
         ELSE CAST(json_extract(payload, '$."' || :payload_field || '"') AS TEXT)
     END = :payload_value)
