"""All the SQL of the PostgreSQL backend, in one place.

The tables mirror the SQLite ones (same names, same columns, times as Unix seconds), so
the semantics and the ``copy`` tool are the same on both. Differences, and why:

* claims use ``FOR UPDATE SKIP LOCKED``: consumers on many machines never wait on each
  other's rows;
* payloads are ``body_text`` (readable in psql) or ``body_bytes`` (bytes, and text with
  NUL characters, which PostgreSQL text cannot hold);
* counts and totals live in ``sqqueue_counters`` rows sharded by server process, so
  concurrent transactions never queue on one hot row; stats add the shards up;
* a message of a group takes a transaction-level advisory lock on its group, so
  "one at a time, in order" holds between producers and consumers on different machines;
* functions are created with ``SET search_path FROM CURRENT``, so the triggers work from
  any connection, whatever its search_path;
* the time is the server's: ``$now`` reads the server's clock when the statement runs
  (after any wait for a connection or a retry), so every machine's lease, delay and time
  to live is measured on one clock, whatever the clients' clocks say. Instants are
  computed in the statements from durations (``$now + %(lease)s``).

Templates: ``$q``, ``$dlq``, ``$done``, ``$dedup`` are the queue's tables, ``$lit`` its name
as a literal, ``$ix_*``/``$tr_*``/``$fn_*``/``$pk_*``/``$seq`` its indexes, triggers,
functions, primary keys and id sequence, ``$now`` the current time.

Every object of a queue ``q`` but ``q`` and ``q_dlq`` is named ``q#...`` (schema version 3;
earlier versions used ``q_done``, ``q_ready``, PostgreSQL's ``q_pkey``, ...): queue names cannot
contain ``#`` nor end in ``_dlq``, so no queue's name is ever another queue's object.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from string import Template

__all__ = [
    "COLUMNS",
    "COPY_TABLES",
    "DEAD_COLUMNS",
    "DONE_COLUMNS",
    "REGISTRY_DDL",
    "SCHEMA_VERSION",
    "Rendered",
    "render",
]

#: The layout version this module creates, recorded per queue in sqqueue_queues:
#: 2: a result column in the history table (UPGRADE_FROM_1); 3: internal names "q#..."
#: (upgrade_from_2); 4: the counters' pending_count renamed unleased_count (in REGISTRY_DDL,
#: as the counters table holds every queue of the schema); 5: message signatures
#: (UPGRADE_FROM_4).
SCHEMA_VERSION = 5
#: The first version whose internal objects are named "q#..." (see object_names).
SEPARATED_NAMES = 3
#: A version with the names before SEPARATED_NAMES ("$old_done", ... in the upgrades).
OLD_NAMES = SEPARATED_NAMES - 1

COUNTER_SHARDS = 64

# The server's time in Unix seconds. A scalar subquery is computed once per statement (one
# time for all its rows, and a value the planner can use in an index search, which a bare
# clock_timestamp() is not).
SERVER_NOW = "(SELECT extract(epoch FROM clock_timestamp())::float8)"
# The time pinned by a test (PostgresQueue(server_clock=...)): the statement's "now"
# parameter instead of the server's clock.
PINNED_NOW = "%(now)s::float8"

#: sqqueue_count's argument types, as DROP and GRANT name the function
COUNT_FN_ARGS = ", ".join(["text"] + ["bigint"] * 9)
# Adds to this connection's shard of a queue's counters.
COUNT_FUNCTION = f"""CREATE OR REPLACE FUNCTION sqqueue_count(
    q TEXT, unleased BIGINT, processing BIGINT, dead BIGINT,
    enqueued BIGINT DEFAULT 0, completed BIGINT DEFAULT 0, failed BIGINT DEFAULT 0,
    dead_lettered BIGINT DEFAULT 0, expired BIGINT DEFAULT 0, ttl_expired BIGINT DEFAULT 0)
RETURNS void LANGUAGE sql SET search_path FROM CURRENT AS $$
    INSERT INTO sqqueue_counters AS c (queue, shard, unleased_count, processing_count,
        dead_count, enqueued_total, completed_total, failed_total, dead_lettered_total,
        expired_total, ttl_expired_total)
    VALUES (q, pg_backend_pid() % {COUNTER_SHARDS}, unleased, processing, dead, enqueued,
            completed, failed, dead_lettered, expired, ttl_expired)
    ON CONFLICT (queue, shard) DO UPDATE SET
        unleased_count = c.unleased_count + excluded.unleased_count,
        processing_count = c.processing_count + excluded.processing_count,
        dead_count = c.dead_count + excluded.dead_count,
        enqueued_total = c.enqueued_total + excluded.enqueued_total,
        completed_total = c.completed_total + excluded.completed_total,
        failed_total = c.failed_total + excluded.failed_total,
        dead_lettered_total = c.dead_lettered_total + excluded.dead_lettered_total,
        expired_total = c.expired_total + excluded.expired_total,
        ttl_expired_total = c.ttl_expired_total + excluded.ttl_expired_total
$$"""

# What every queue of a schema shares: the registry of queues (their schema versions)
# and the function that keeps the counters.
REGISTRY_DDL = (
    """
CREATE TABLE IF NOT EXISTS sqqueue_queues (
    name            TEXT PRIMARY KEY,
    schema_version  INTEGER NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL
)""",
    """
CREATE TABLE IF NOT EXISTS sqqueue_counters (
    queue                TEXT NOT NULL,
    shard                INTEGER NOT NULL,
    unleased_count       BIGINT NOT NULL DEFAULT 0,  -- ready, delayed or waiting
    processing_count     BIGINT NOT NULL DEFAULT 0,
    dead_count           BIGINT NOT NULL DEFAULT 0,
    enqueued_total       BIGINT NOT NULL DEFAULT 0,
    completed_total      BIGINT NOT NULL DEFAULT 0,
    failed_total         BIGINT NOT NULL DEFAULT 0,
    dead_lettered_total  BIGINT NOT NULL DEFAULT 0,
    expired_total        BIGINT NOT NULL DEFAULT 0,
    ttl_expired_total    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, shard)
)""",
    # Before schema 4 the unleased count was named pending_count, though it holds the
    # waiting messages too (the glossary's pending is ready + delayed): renamed once, for
    # every queue of the schema. sqqueue_count's parameter was named pending too, which
    # only dropping the function changes: it is made again at once, with the grants it had.
    f"""
DO $migrate$
DECLARE
    acl aclitem[];
    grantee_name TEXT;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute
                WHERE attrelid = 'sqqueue_counters'::regclass
                  AND attname = 'pending_count' AND NOT attisdropped) THEN
        SELECT proacl INTO acl FROM pg_proc
         WHERE oid = to_regprocedure('sqqueue_count({COUNT_FN_ARGS})');
        ALTER TABLE sqqueue_counters RENAME COLUMN pending_count TO unleased_count;
        DROP FUNCTION IF EXISTS sqqueue_count({COUNT_FN_ARGS});
        EXECUTE $ddl${COUNT_FUNCTION}$ddl$;
        IF acl IS NOT NULL THEN  -- NULL: the default privileges, which it has again
            REVOKE ALL ON FUNCTION sqqueue_count({COUNT_FN_ARGS}) FROM PUBLIC;
            FOR grantee_name IN
                SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END
                  FROM aclexplode(acl) AS a LEFT JOIN pg_roles AS r ON r.oid = a.grantee
                 WHERE a.privilege_type = 'EXECUTE'
            LOOP
                EXECUTE format('GRANT EXECUTE ON FUNCTION sqqueue_count({COUNT_FN_ARGS}) TO %s',
                               grantee_name);
            END LOOP;
        END IF;
    END IF;
END $migrate$""",
    COUNT_FUNCTION,
)

# A queue's tables, indexes, and the triggers (and their functions) that keep its counts.
QUEUE_DDL = (
    """
CREATE TABLE $q (
    id                BIGINT GENERATED BY DEFAULT AS IDENTITY (SEQUENCE NAME $seq)
                      CONSTRAINT $pk_q PRIMARY KEY,
    body_text         TEXT,
    body_bytes        BYTEA,
    encoding          TEXT NOT NULL,
    checksum          BIGINT,
    status            TEXT NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'waiting', 'processing')),
    priority          INTEGER NOT NULL DEFAULT 0,
    visible_at        DOUBLE PRECISION NOT NULL,
    lease_token       BIGINT,
    lease_expires_at  DOUBLE PRECISION,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL,
    last_error        TEXT,
    created_at        DOUBLE PRECISION NOT NULL,
    updated_at        DOUBLE PRECISION NOT NULL,
    group_key         TEXT,
    expires_at        DOUBLE PRECISION,
    prior_attempts    INTEGER NOT NULL DEFAULT 0,
    signature         TEXT               -- HMAC of the message (sqqueue.signing); NULL: unsigned
)""",
    "CREATE INDEX $ix_ready ON $q (priority DESC, visible_at, id) WHERE status = 'pending'",
    "CREATE INDEX $ix_leases ON $q (lease_expires_at) WHERE status = 'processing'",
    "CREATE INDEX $ix_expiry ON $q (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX $ix_group ON $q (group_key, id) WHERE group_key IS NOT NULL",
    """
CREATE TABLE $dlq (
    id                BIGINT CONSTRAINT $pk_dlq PRIMARY KEY,
    body_text         TEXT,
    body_bytes        BYTEA,
    encoding          TEXT NOT NULL,
    checksum          BIGINT,
    status            TEXT NOT NULL DEFAULT 'dead',
    priority          INTEGER NOT NULL DEFAULT 0,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL,
    last_error        TEXT,
    created_at        DOUBLE PRECISION NOT NULL,
    updated_at        DOUBLE PRECISION NOT NULL,
    dead_at           DOUBLE PRECISION NOT NULL,
    group_key         TEXT,
    prior_attempts    INTEGER NOT NULL DEFAULT 0,
    signature         TEXT
)""",
    """
CREATE TABLE $done (
    id                BIGINT CONSTRAINT $pk_done PRIMARY KEY,
    body_text         TEXT,
    body_bytes        BYTEA,
    encoding          TEXT NOT NULL,
    checksum          BIGINT,
    priority          INTEGER NOT NULL,
    attempts          INTEGER NOT NULL,
    created_at        DOUBLE PRECISION NOT NULL,
    completed_at      DOUBLE PRECISION NOT NULL,
    group_key         TEXT,
    result            TEXT,                 -- JSON: what complete(..., result=) kept
    signature         TEXT
)""",
    "CREATE INDEX $ix_done ON $done (completed_at)",
    """
CREATE TABLE $dedup (
    key               TEXT CONSTRAINT $pk_dedup PRIMARY KEY,
    message_id        BIGINT NOT NULL,
    expires_at        DOUBLE PRECISION
)""",
    # Exact counts by state, kept by triggers (rows changed by hand are counted too).
    """
CREATE FUNCTION $fn_count() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$$$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- every insert is an enqueue but a revived dead letter's, which compensates
        PERFORM sqqueue_count($lit, (NEW.status <> 'processing')::int,
                              (NEW.status = 'processing')::int, 0, 1);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM sqqueue_count($lit, -(OLD.status <> 'processing')::int,
                              -(OLD.status = 'processing')::int, 0);
    ELSIF (OLD.status = 'processing') IS DISTINCT FROM (NEW.status = 'processing') THEN
        PERFORM sqqueue_count($lit,
            (OLD.status = 'processing')::int - (NEW.status = 'processing')::int,
            (NEW.status = 'processing')::int - (OLD.status = 'processing')::int, 0);
    END IF;
    RETURN NULL;
END $$$$""",
    "CREATE TRIGGER $tr_count AFTER INSERT OR DELETE OR UPDATE OF status ON $q "
    "FOR EACH ROW EXECUTE FUNCTION $fn_count()",
    """
CREATE FUNCTION $fn_dlq_count() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$$$
BEGIN
    PERFORM sqqueue_count($lit, 0, 0, CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE -1 END);
    RETURN NULL;
END $$$$""",
    "CREATE TRIGGER $tr_dlq_count AFTER INSERT OR DELETE ON $dlq "
    "FOR EACH ROW EXECUTE FUNCTION $fn_dlq_count()",
    # When a message of a group leaves, the next one of the group becomes deliverable.
    """
CREATE FUNCTION $fn_group() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$$$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended($lit || '/' || OLD.group_key, 0));
    UPDATE $q SET status = 'pending'
     WHERE id = (SELECT min(id) FROM $q WHERE group_key = OLD.group_key AND status = 'waiting')
       AND NOT EXISTS (SELECT 1 FROM $q WHERE group_key = OLD.group_key
                                           AND status IN ('pending', 'processing'));
    RETURN NULL;
END $$$$""",
    "CREATE TRIGGER $tr_group AFTER DELETE ON $q FOR EACH ROW "
    "WHEN (OLD.group_key IS NOT NULL AND OLD.status <> 'waiting') "
    "EXECUTE FUNCTION $fn_group()",
)

COLUMNS = (
    "id, body_text, body_bytes, encoding, checksum, priority, attempts, max_attempts, "
    "created_at, visible_at, lease_token, lease_expires_at, last_error, group_key, "
    "expires_at, prior_attempts, status, signature"
)
# For a listing of all states: the stored 'pending' reads as the state it is in now, ready
# or delayed (the words of the glossary).
LIST_ALL_COLUMNS = COLUMNS.replace(
    "status",
    "CASE WHEN status <> 'pending' THEN status WHEN visible_at > $now THEN 'delayed' "
    "ELSE 'ready' END",
)
_COPY = "body_text, body_bytes, encoding, checksum, priority"
DEAD_COLUMNS = (
    "id, body_text, body_bytes, encoding, checksum, priority, attempts, max_attempts, "
    "last_error, created_at, updated_at, dead_at, group_key, prior_attempts, signature"
)
DONE_COLUMNS = (
    "id, body_text, body_bytes, encoding, checksum, priority, attempts, created_at, "
    "completed_at, group_key, result, signature"
)
_LIVE = (
    "status = 'processing' AND lease_expires_at > $now "
    "AND (%(token)s::bigint IS NULL OR lease_token = %(token)s::bigint)"
)

# A lease expiry no sqqueue call could have set: NULL on a processing row, more than 30
# days ahead (leases are at most 7 days), infinite or NaN (which PostgreSQL orders above
# every other number).
_IMPOSSIBLE_LEASE = "(lease_expires_at IS NULL OR lease_expires_at > $now + 2592000)"

# A visibility time no sqqueue call could have set: later than the latest clock it takes
# (2100) plus the longest delay (ten years), infinite or NaN. Not measured from now, so a
# clock set back by years leaves delayed messages as they are.
_IMPOSSIBLE_VISIBILITY = "visible_at > 4418668800"
# A waiting row nothing will promote: no message of its group is pending or processing
# (its group key is NULL, or the messages ahead of it were edited away by hand).
_STRANDED = """w.status = 'waiting' AND NOT EXISTS (
                   SELECT 1 FROM $q WHERE group_key = w.group_key AND status <> 'waiting')"""

# Is there an expired lease (or an impossible one: see "lease_repair"), or a message past
# its time to live?
_ANY_EXPIRED = """coalesce((SELECT min(lease_expires_at) FROM $q
                          WHERE status = 'processing') <= $now, false)
            OR coalesce((SELECT max(lease_expires_at) FROM $q
                          WHERE status = 'processing') > $now + 2592000, false)
            OR EXISTS (SELECT 1 FROM $q WHERE status = 'processing' AND lease_expires_at IS NULL)
            OR coalesce((SELECT min(expires_at) FROM $q
                          WHERE expires_at IS NOT NULL) <= $now, false)"""

STATEMENTS = {
    # Serialise enqueues of one group (the first of a group is ready, later ones wait).
    "group_lock": "SELECT pg_advisory_xact_lock(hashtextextended($lit || '/' || %(group_key)s, 0))",
    # Insert one message with every option.
    "insert": """
        INSERT INTO $q (id, body_text, body_bytes, encoding, checksum, status, priority,
                        visible_at, max_attempts, created_at, updated_at, expires_at, group_key,
                        signature)
        VALUES (coalesce(%(id)s, nextval(pg_get_serial_sequence($q_regclass, 'id'))),
                %(text)s, %(bytes)s, %(encoding)s, %(checksum)s,
                CASE WHEN %(group_key)s::text IS NOT NULL AND EXISTS (
                         SELECT 1 FROM $q WHERE group_key = %(group_key)s::text)
                     THEN 'waiting' ELSE 'pending' END,
                %(priority)s, $now + %(delay)s, %(max_attempts)s, $now, $now,
                $now + %(ttl)s::float8, %(group_key)s, %(signature)s)
        RETURNING id""",
    # One plain message (no group, no dedup key) in one statement that also wakes the
    # listeners: one round trip in autocommit.
    "insert_one": """
        WITH added AS (
            INSERT INTO $q (body_text, body_bytes, encoding, checksum, priority, visible_at,
                            max_attempts, created_at, updated_at, expires_at, signature)
            VALUES (%(text)s, %(bytes)s, %(encoding)s, %(checksum)s, %(priority)s,
                    $now + %(delay)s, %(max_attempts)s, $now, $now, $now + %(ttl)s::float8,
                    %(signature)s)
            RETURNING id)
        SELECT id, pg_notify('sqqueue', current_schema() || '.' || $lit) FROM added""",
    # Plain messages (no group, no dedup key) of any number in one statement, which also
    # wakes the listeners: one round trip in autocommit. Ids come back in item order.
    "insert_many": """
        WITH added AS (
            INSERT INTO $q (body_text, body_bytes, encoding, checksum, priority, visible_at,
                            max_attempts, created_at, updated_at, expires_at, signature)
            SELECT t, b, e, c, p, $now + v, m, $now, $now, $now + x, s
              FROM unnest(%(text)s::text[], %(bytes)s::bytea[], %(encoding)s::text[],
                          %(checksum)s::bigint[], %(priority)s::int[], %(delay)s::float8[],
                          %(max_attempts)s::int[], %(ttl)s::float8[], %(signature)s::text[])
                   WITH ORDINALITY AS u (t, b, e, c, p, v, m, x, s, n)
             ORDER BY n
            RETURNING id)
        SELECT array_agg(id ORDER BY id), pg_notify('sqqueue', current_schema() || '.' || $lit)
          FROM added""",
    # Draw the id the next message gets from the queue's sequence.
    "next_id": "SELECT nextval(pg_get_serial_sequence($q_regclass, 'id'))",
    # The name of the id sequence, qualified and quoted as SQL text needs it.
    "sequence": "SELECT pg_get_serial_sequence($q_regclass, 'id')",
    # Take a dedup key for a new message; nothing when another message holds it.
    "dedup_claim": """
        INSERT INTO $dedup (key, message_id, expires_at)
        VALUES (%(key)s, %(id)s, $now + %(window)s::float8)
        ON CONFLICT (key) DO NOTHING RETURNING key""",
    # The message a key points to, whether it has an expiry, and whether that is to come.
    "dedup_get": """
        SELECT message_id, expires_at IS NOT NULL, expires_at > $now
          FROM $dedup WHERE key = %(key)s FOR UPDATE""",
    # The dedup key a message holds, if any: for showing one message (it reads the keys,
    # which upkeep keeps to those of the dedup window).
    "dedup_of": "SELECT key FROM $dedup WHERE message_id = %(id)s LIMIT 1",
    # Point a dedup key at a new message, its window starting now.
    "dedup_set": """
        UPDATE $dedup SET message_id = %(id)s, expires_at = $now + %(window)s::float8
         WHERE key = %(key)s""",
    # Whether an id is taken, by a message or a dead letter.
    "exists": """
        SELECT EXISTS (SELECT 1 FROM $q WHERE id = %(id)s)
            OR EXISTS (SELECT 1 FROM $dlq WHERE id = %(id)s)""",
    # Messages counted against max_depth: ready, delayed, waiting and processing.
    "depth": """
        SELECT coalesce(sum(unleased_count + processing_count), 0)
          FROM sqqueue_counters WHERE queue = $lit""",
    # For DDL applied by hand: what opening a new queue does after creating its tables.
    "register": f"""
        INSERT INTO sqqueue_queues (name, schema_version, created_at)
        VALUES ($lit, {SCHEMA_VERSION}, extract(epoch FROM clock_timestamp()))""",
    # Wake listeners of this queue (consumers waiting in other processes).
    "notify": "SELECT pg_notify('sqqueue', current_schema() || '.' || $lit)",
    # Lease up to :limit ready messages, skipping rows other claims hold.
    "claim": f"""
        WITH picked AS (
            SELECT id FROM $q
             WHERE status = 'pending' AND visible_at <= $now
             ORDER BY priority DESC, visible_at, id
             LIMIT %(limit)s
             FOR UPDATE SKIP LOCKED)
        UPDATE $q AS m
           SET status = 'processing', attempts = attempts + 1, lease_token = %(token)s,
               lease_expires_at = $now + %(lease)s, updated_at = $now
          FROM picked WHERE m.id = picked.id
        RETURNING {", ".join("m." + c.strip() for c in COLUMNS.split(","))}""",
    # One statement, so one round trip in autocommit: claim what is ready, unless an
    # expired lease or a message past its time to live must be folded first (then it
    # claims nothing and says so, and the caller folds and claims in a transaction). At
    # least one row comes back: the probe's, with NULLs if nothing was claimed.
    "claim_probe": f"""
        WITH probe AS (SELECT {_ANY_EXPIRED} AS expired),
        picked AS (
            SELECT id FROM $q
             WHERE status = 'pending' AND visible_at <= $now
               AND NOT (SELECT expired FROM probe)
             ORDER BY priority DESC, visible_at, id
             LIMIT %(limit)s
             FOR UPDATE SKIP LOCKED),
        claimed AS (
            UPDATE $q AS m
               SET status = 'processing', attempts = attempts + 1, lease_token = %(token)s,
                   lease_expires_at = $now + %(lease)s, updated_at = $now
              FROM picked WHERE m.id = picked.id
            RETURNING {", ".join("m." + c.strip() for c in COLUMNS.split(","))})
        SELECT claimed.*, probe.expired FROM probe LEFT JOIN claimed ON true""",
    # Written with min() over the partial indexes so that every plan, including the
    # generic plan of a prepared statement, seeks instead of scanning the table.
    "any_expired": f"SELECT {_ANY_EXPIRED}",
    # A processing row whose lease expiry is impossible (edited by hand) would never expire:
    # its lease ends now, and the fold that follows returns it to the queue (or to the
    # dead-letter queue on its last attempt).
    "lease_repair": f"""
        UPDATE $q SET lease_expires_at = $now
         WHERE id IN (SELECT id FROM $q WHERE status = 'processing' AND {_IMPOSSIBLE_LEASE}
                      FOR UPDATE SKIP LOCKED)""",
    # Is there a row edited by hand that no claim would ever take: a pending one whose
    # visibility time is impossible, or a stranded waiting one? A pass over the table, so
    # a queue object looks only when a claim found nothing, at most once a minute.
    "any_stranded": f"""
        SELECT EXISTS (SELECT 1 FROM $q WHERE status = 'pending' AND {_IMPOSSIBLE_VISIBILITY})
            OR EXISTS (SELECT 1 FROM $q AS w WHERE {_STRANDED})""",
    # A stranded waiting row becomes pending: the first of its group, or each one
    # without a group (a row another repair promoted meanwhile is left as it is).
    "stranded_repair": f"""
        UPDATE $q SET status = 'pending'
         WHERE status = 'waiting'
           AND id IN (SELECT id FROM $q WHERE status = 'waiting' AND group_key IS NULL
                      UNION ALL
                      SELECT min(id) FROM $q AS w WHERE w.group_key IS NOT NULL AND {_STRANDED}
                       GROUP BY w.group_key)""",
    # An impossible visibility time (edited by hand) becomes now: the message is ready.
    "visibility_repair": f"""
        UPDATE $q SET visible_at = $now, updated_at = $now
         WHERE id IN (SELECT id FROM $q WHERE status = 'pending' AND {_IMPOSSIBLE_VISIBILITY}
                      FOR UPDATE SKIP LOCKED)""",
    # Rows to fold are locked first (SKIP LOCKED), so concurrent consumers never fold the
    # same row twice.
    "lock_expired": """
        SELECT id FROM $q
         WHERE (status = 'processing' AND lease_expires_at <= $now)
            OR (expires_at <= $now
                AND (status <> 'processing' OR lease_expires_at <= $now))
         LIMIT 1000
         FOR UPDATE SKIP LOCKED""",
    # Dead-letter the messages past their time to live.
    "ttl_bury": f"""
        INSERT INTO $dlq ({DEAD_COLUMNS})
        SELECT id, {_COPY}, attempts, max_attempts,
               'expired: its time to live ran out before it was completed',
               created_at, $now, $now, group_key, prior_attempts, signature
          FROM $q
         WHERE id = ANY(%(ids)s) AND expires_at <= $now""",
    # Delete the messages past their time to live (once buried, or when dropped).
    "ttl_delete": "DELETE FROM $q WHERE id = ANY(%(ids)s) AND expires_at <= $now",
    # Dead-letter the messages whose lease ran out on their last attempt.
    "lease_bury": f"""
        INSERT INTO $dlq ({DEAD_COLUMNS})
        SELECT id, {_COPY}, attempts, max_attempts,
               'lease expired on the last attempt (' || attempts || ' of ' || max_attempts
                   || ') without being completed',
               created_at, $now, $now, group_key, prior_attempts, signature
          FROM $q
         WHERE id = ANY(%(ids)s) AND status = 'processing' AND attempts >= max_attempts""",
    # Delete those messages from the queue table, once buried.
    "lease_delete_dead": """
        DELETE FROM $q
         WHERE id = ANY(%(ids)s) AND status = 'processing' AND attempts >= max_attempts""",
    # Return the messages whose lease ran out, visible from when it ran out.
    "lease_return": """
        UPDATE $q
           SET status = 'pending', visible_at = lease_expires_at, lease_token = NULL,
               lease_expires_at = NULL, updated_at = $now,
               last_error = 'lease expired on attempt ' || attempts || ' of ' || max_attempts
         WHERE id = ANY(%(ids)s) AND status = 'processing'""",
    # Delete a message under a live lease (the caller's, when a token is given).
    "complete": f"DELETE FROM $q WHERE id = %(id)s AND {_LIVE} RETURNING group_key",
    # complete as one statement: the delete and the completed total together; returns
    # the number of messages completed (0: not held, ask why).
    "complete_counted": f"""
        WITH gone AS (DELETE FROM $q WHERE id = %(id)s AND {_LIVE} RETURNING id)
        SELECT s.n FROM (SELECT count(*) AS n FROM gone) AS s
          LEFT JOIN LATERAL (SELECT sqqueue_count($lit, 0, 0, 0, completed => s.n)
                              WHERE s.n > 0) AS bump ON true""",
    # complete_batch as one statement: all of the messages, or none if any is not held
    # (a duplicate id counts as not held); returns how many were completed.
    "complete_all": """
        WITH wanted AS (
            SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::bigint[]) AS r (id, token)),
        held AS (
            SELECT m.id FROM $q AS m JOIN wanted AS w ON m.id = w.id
             WHERE m.status = 'processing' AND m.lease_expires_at > $now
               AND (w.token IS NULL OR m.lease_token = w.token)
               FOR UPDATE OF m),
        gone AS (
            DELETE FROM $q WHERE id IN (SELECT id FROM held)
               AND (SELECT count(DISTINCT id) FROM held) = %(n)s
               AND (SELECT count(*) FROM wanted) = %(n)s
            RETURNING id)
        SELECT s.n FROM (SELECT count(*) AS n FROM gone) AS s
          LEFT JOIN LATERAL (SELECT sqqueue_count($lit, 0, 0, 0, completed => s.n)
                              WHERE s.n > 0) AS bump ON true""",
    # A completed message kept as history, with the result its consumer gave (or NULL).
    "keep_done": f"""
        INSERT INTO $done ({DONE_COLUMNS})
        SELECT id, {_COPY}, attempts, created_at, $now, group_key, %(result)s, signature
          FROM $q WHERE id = %(id)s AND {_LIVE}""",
    # Give a leased message back: visible after :delay, its attempt refunded if asked.
    "release": f"""
        UPDATE $q
           SET status = 'pending', visible_at = $now + %(delay)s, lease_token = NULL,
               lease_expires_at = NULL, attempts = greatest(attempts - %(refund)s, 0),
               last_error = coalesce(%(error)s, last_error), updated_at = $now
         WHERE id = %(id)s AND {_LIVE}""",
    # Move a live lease's expiry to lease seconds from now.
    "extend": f"""
        UPDATE $q SET lease_expires_at = $now + %(lease)s, updated_at = $now
         WHERE id = %(id)s AND {_LIVE}
        RETURNING lease_expires_at""",
    # Move every live lease of the (id, token) pairs to lease seconds from now, in id order.
    "extend_many": """
        WITH wanted AS (
            SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::bigint[]) AS r (id, token)),
        held AS (
            SELECT m.id FROM $q AS m JOIN wanted AS w ON m.id = w.id
             WHERE m.status = 'processing' AND m.lease_expires_at > $now
               AND (w.token IS NULL OR m.lease_token = w.token)
             ORDER BY m.id FOR UPDATE OF m)
        UPDATE $q SET lease_expires_at = $now + %(lease)s, updated_at = $now
         WHERE id IN (SELECT id FROM held)
        RETURNING id, lease_token, lease_expires_at""",
    # The attempt count of a message under a live lease (the caller's, when a token is given).
    "attempts_if_live": f"""
        SELECT attempts, max_attempts FROM $q WHERE id = %(id)s AND {_LIVE} FOR UPDATE""",
    # The status and lease token of one message.
    "state": "SELECT status, lease_token FROM $q WHERE id = %(id)s",
    # Whether a message is in the dead-letter table.
    "in_dlq": "SELECT 1 FROM $dlq WHERE id = %(id)s",
    # Copy one message into the dead-letter table, with its error and the time it died.
    "bury": f"""
        INSERT INTO $dlq ({DEAD_COLUMNS})
        SELECT id, {_COPY}, attempts, max_attempts, coalesce(%(error)s, last_error),
               created_at, $now, $now, group_key, prior_attempts, signature
          FROM $q WHERE id = %(id)s""",
    # Delete one message by id, whatever its state.
    "delete": "DELETE FROM $q WHERE id = %(id)s",
    # Put a dead letter back in the queue with its id and a fresh attempt count.
    "revive": f"""
        INSERT INTO $q (id, {_COPY}, status, visible_at, attempts, max_attempts, last_error,
                        created_at, updated_at, group_key, prior_attempts, signature)
        SELECT id, {_COPY},
               CASE WHEN d.group_key IS NOT NULL AND EXISTS (
                        SELECT 1 FROM $q WHERE group_key = d.group_key)
                    THEN 'waiting' ELSE 'pending' END,
               $now, 0, max_attempts, last_error, created_at, $now, group_key,
               prior_attempts + attempts, signature
          FROM $dlq AS d WHERE id = %(id)s""",
    # The group of a dead letter, to put it back behind its group's messages.
    "dead_group": "SELECT group_key FROM $dlq WHERE id = %(id)s FOR UPDATE",
    # Whether this role administers the queue (may delete its dead letters): purging is
    # refused to the others, as a consumer's DELETE on the queue is only for completing.
    "may_administer": "SELECT has_table_privilege($dlq_regclass, 'DELETE')",
    # Delete one dead letter by id.
    "delete_dead": "DELETE FROM $dlq WHERE id = %(id)s",
    # Whether a queue is registered.
    "queue_exists": "SELECT 1 FROM sqqueue_queues WHERE name = %(name)s",
    # A page of dead letter ids, in id order.
    "dead_ids": "SELECT id FROM $dlq WHERE id > %(after)s ORDER BY id LIMIT %(limit)s",
    # The message a claim would take next, without leasing it.
    "peek": f"""
        SELECT {COLUMNS} FROM $q
         WHERE status = 'pending' AND visible_at <= $now
           AND (expires_at IS NULL OR expires_at > $now)
         ORDER BY priority DESC, visible_at, id
         LIMIT 1""",
    # A message under a lease that ran out, which a claim would take back first.
    "peek_expired": f"""
        SELECT {COLUMNS} FROM $q
         WHERE status = 'processing' AND lease_expires_at <= $now
           AND attempts < max_attempts AND (expires_at IS NULL OR expires_at > $now)
         ORDER BY priority DESC, lease_expires_at, id
         LIMIT 1""",
    # Whether the queue holds no message at all (dead letters and history aside).
    "is_drained": "SELECT NOT EXISTS (SELECT 1 FROM $q)",
    # Ready, delayed and waiting messages (the depth less those processing): the size gauge.
    "count_unleased": """
        SELECT coalesce(sum(unleased_count), 0) FROM sqqueue_counters WHERE queue = $lit""",
    # Add to the queue's totals through sqqueue_count (one row per slot, no hot row).
    "bump": """
        SELECT sqqueue_count($lit, 0, 0, 0, %(enqueued)s, %(completed)s, %(failed)s,
                             %(dead_lettered)s, %(expired)s, %(ttl_expired)s)""",
    # Exact counts from the rows, when a queue is created or migrated.
    "recount": """
        WITH counted AS (
            SELECT (SELECT count(*) FROM $q WHERE status <> 'processing') AS p,
                   (SELECT count(*) FROM $q WHERE status = 'processing') AS r,
                   (SELECT count(*) FROM $dlq) AS d)
        SELECT sqqueue_count($lit, p - coalesce(sum(unleased_count), 0),
                             r - coalesce(sum(processing_count), 0),
                             d - coalesce(sum(dead_count), 0))
          FROM counted LEFT JOIN sqqueue_counters ON queue = $lit
         GROUP BY p, r, d""",
    # Start the enqueued total from the messages already there.
    "seed_totals": """
        SELECT sqqueue_count($lit, 0, 0, 0, coalesce(sum(unleased_count + processing_count
                                                         + dead_count), 0))
          FROM sqqueue_counters WHERE queue = $lit""",
    # Every counter of the queue, for stats.
    "counters": """
        SELECT coalesce(sum(unleased_count), 0), coalesce(sum(processing_count), 0),
               coalesce(sum(dead_count), 0), coalesce(sum(enqueued_total), 0),
               coalesce(sum(completed_total), 0), coalesce(sum(failed_total), 0),
               coalesce(sum(dead_lettered_total), 0), coalesce(sum(expired_total), 0),
               coalesce(sum(ttl_expired_total), 0),
               (SELECT created_at FROM sqqueue_queues WHERE name = $lit)
          FROM sqqueue_counters WHERE queue = $lit""",
    # Per priority level, seek into the ready index: pending rows not yet visible, and
    # the oldest visible one. Costs a few seeks per level plus one step per delayed row,
    # not a pass over every pending row (which made stats() slow on a deep queue).
    "delayed_and_oldest": """
        WITH RECURSIVE levels(p) AS (
            SELECT max(priority) FROM $q WHERE status = 'pending'
            UNION ALL
            SELECT (SELECT max(priority) FROM $q WHERE status = 'pending' AND priority < levels.p)
              FROM levels WHERE levels.p IS NOT NULL
        )
        SELECT coalesce(sum((SELECT count(*) FROM $q WHERE status = 'pending'
                              AND priority = levels.p AND visible_at > $now)), 0),
               $now - min((SELECT min(visible_at) FROM $q WHERE status = 'pending'
                            AND priority = levels.p AND visible_at <= $now
                            AND (expires_at IS NULL OR expires_at > $now)))
          FROM levels WHERE levels.p IS NOT NULL""",
    # Only grouped messages wait: counted through the group index, not the whole table.
    "waiting": """
        SELECT count(*) FROM $q WHERE group_key IS NOT NULL AND status = 'waiting'""",
    # Live leases that run out within the horizon; leases already run out (which the next
    # claim folds back), and of those: how many were on their last attempt, within their
    # time to live (dead then), how many are past their time to live (taken out then, as
    # "past_ttl" says), and how long ago the first of the rest ran out (ready since).
    "leases": """
        SELECT count(*) FILTER (WHERE lease_expires_at > $now),
               count(*) FILTER (WHERE lease_expires_at <= $now),
               count(*) FILTER (WHERE lease_expires_at <= $now AND attempts >= max_attempts
                                  AND (expires_at IS NULL OR expires_at > $now)),
               count(*) FILTER (WHERE lease_expires_at <= $now AND expires_at <= $now),
               $now - min(lease_expires_at) FILTER (WHERE lease_expires_at <= $now
                                                     AND attempts < max_attempts
                                                     AND (expires_at IS NULL
                                                          OR expires_at > $now))
          FROM $q WHERE status = 'processing' AND lease_expires_at <= $now + %(horizon)s""",
    # Messages past their time to live that no lease holds, which the next claim takes
    # out (see "ttl_delete"): how many, and how many of those are delayed and waiting.
    # Served by the expiry index: one step per such message.
    "past_ttl": """
        SELECT count(*), count(*) FILTER (WHERE status = 'pending' AND visible_at > $now),
               count(*) FILTER (WHERE status = 'waiting' AND group_key IS NOT NULL)
          FROM $q WHERE expires_at <= $now AND status <> 'processing'""",
    # When the next delayed message falls due or lease runs out.
    "next_due": """
        SELECT least((SELECT min(visible_at) FROM $q WHERE status = 'pending'),
                     (SELECT min(lease_expires_at) FROM $q WHERE status = 'processing'),
                     (SELECT min(expires_at) FROM $q WHERE expires_at IS NOT NULL)) - $now""",
    # Every dead letter, in the order they died (0.1.0's get_dead_letters).
    "dead_letters": f"SELECT {DEAD_COLUMNS} FROM $dlq ORDER BY dead_at, id",
    # A page of ready messages, by id.
    "list_ready": f"""SELECT {COLUMNS} FROM $q WHERE status = 'pending'
                      AND visible_at <= $now AND id > %(after)s ORDER BY id LIMIT %(limit)s""",
    # Pending is ready and delayed together; each row says which.
    "list_pending": f"""SELECT {LIST_ALL_COLUMNS} FROM $q WHERE status = 'pending'
                        AND id > %(after)s ORDER BY id LIMIT %(limit)s""",
    # A page of delayed messages, by id.
    "list_delayed": f"""SELECT {COLUMNS} FROM $q WHERE status = 'pending'
                        AND visible_at > $now AND id > %(after)s ORDER BY id LIMIT %(limit)s""",
    # Only grouped messages wait: read through the group index, not the whole table.
    "list_waiting": f"""SELECT {COLUMNS} FROM $q WHERE group_key IS NOT NULL AND status = 'waiting'
                        AND id > %(after)s ORDER BY id LIMIT %(limit)s""",
    # A page of leased messages, by id.
    "list_processing": f"""SELECT {COLUMNS} FROM $q WHERE status = 'processing'
                           AND id > %(after)s ORDER BY id LIMIT %(limit)s""",
    # One message by id, wherever it is: in the queue, among the dead letters, in history.
    "find": f"SELECT {LIST_ALL_COLUMNS} FROM $q WHERE id = %(id)s",
    # One dead letter by id.
    "find_dead": f"SELECT {DEAD_COLUMNS} FROM $dlq WHERE id = %(id)s",
    # One kept completed message by id.
    "find_done": f"SELECT {DONE_COLUMNS} FROM $done WHERE id = %(id)s",
    # A page of messages in any live state, by id.
    "list_all": f"""SELECT {LIST_ALL_COLUMNS} FROM $q WHERE id > %(after)s
                    ORDER BY id LIMIT %(limit)s""",
    # A page of dead letters, by id.
    "list_dead": f"""SELECT {DEAD_COLUMNS} FROM $dlq WHERE id > %(after)s
                     ORDER BY id LIMIT %(limit)s""",
    # A page of kept completed messages, by id.
    "list_done": f"""SELECT {DONE_COLUMNS} FROM $done WHERE id > %(after)s
                     ORDER BY id LIMIT %(limit)s""",
    # Delete ready messages (enqueued before :age, if given).
    "purge_ready": """DELETE FROM $q WHERE status = 'pending' AND visible_at <= $now
                        AND (%(age)s::float8 IS NULL OR created_at < $now - %(age)s::float8)""",
    # Delete delayed messages (enqueued before :age, if given).
    "purge_delayed": """DELETE FROM $q WHERE status = 'pending' AND visible_at > $now
                        AND (%(age)s::float8 IS NULL OR created_at < $now - %(age)s::float8)""",
    # Delete messages waiting for their group (enqueued before :age, if given).
    "purge_waiting": """DELETE FROM $q WHERE status = 'waiting'
                        AND (%(age)s::float8 IS NULL OR created_at < $now - %(age)s::float8)""",
    # Delete leased messages (enqueued before :age, if given).
    "purge_processing": """DELETE FROM $q WHERE status = 'processing'
                           AND (%(age)s::float8 IS NULL OR created_at < $now - %(age)s::float8)""",
    # Delete dead letters (older than :age, if given).
    "purge_dead": """DELETE FROM $dlq
                     WHERE %(age)s::float8 IS NULL OR dead_at < $now - %(age)s::float8""",
    # Delete kept completed messages (older than :age, if given).
    "purge_done": """DELETE FROM $done
                     WHERE %(age)s::float8 IS NULL OR completed_at < $now - %(age)s::float8""",
    # Never hand out an id that arrived with a copied row (one value may be skipped).
    "raise_sequence": """
        SELECT setval(pg_get_serial_sequence($q_regclass, 'id'),
                      greatest(%(high)s, nextval(pg_get_serial_sequence($q_regclass, 'id'))))""",
    # Delete kept completed messages older than retention, a batch at a time.
    "prune_done_age": """
        DELETE FROM $done WHERE id IN (SELECT id FROM $done WHERE completed_at < $now - %(age)s
                                        ORDER BY completed_at LIMIT %(batch)s)""",
    # Delete the oldest kept completed messages past retention_max, a batch at a time.
    "prune_done_count": """
        DELETE FROM $done WHERE id IN (SELECT id FROM $done ORDER BY completed_at
                                        LIMIT least(%(batch)s, greatest((SELECT count(*) FROM $done)
                                                                        - %(keep)s, 0)))""",
    # Forget dedup keys past their window, or whose message is gone.
    "prune_dedup": """
        DELETE FROM $dedup WHERE key IN (
            SELECT key FROM $dedup
             WHERE (expires_at IS NOT NULL AND expires_at <= $now)
                OR (expires_at IS NULL AND NOT EXISTS (SELECT 1 FROM $q WHERE id = message_id)
                    AND NOT EXISTS (SELECT 1 FROM $dlq WHERE id = message_id))
             LIMIT %(batch)s)""",
}

#: Whether the role may use schema %s: one row (no row: there is no such schema).
SCHEMA_USAGE = "SELECT has_schema_privilege(oid, 'USAGE') FROM pg_namespace WHERE nspname = %s"

# From schema version 1: completed messages kept as history can carry a result.
# Idempotent, as DDL applied by hand registers version 1 with the column already there.
UPGRADE_FROM_1 = ("ALTER TABLE $old_done ADD COLUMN IF NOT EXISTS result TEXT",)
# From schema version 4: messages carry a signature (sqqueue.signing), in every table a
# message row lives in; rows of before stay unsigned (NULL).
UPGRADE_FROM_4 = tuple(
    f"ALTER TABLE ${table} ADD COLUMN IF NOT EXISTS signature TEXT"
    for table in ("q", "dlq", "done")
)

# Redrive into another queue of the same schema: a new id there, the history kept.
_REDRIVE_INTO = f"""
    INSERT INTO $q ({_COPY}, status, visible_at, attempts, max_attempts, last_error,
                    created_at, updated_at, group_key, prior_attempts, signature)
    SELECT {_COPY}, 'pending', $now, 0, max_attempts, last_error, created_at, $now,
           NULL, prior_attempts + attempts, signature
      FROM $src WHERE id = %(id)s"""


def _fit(name: str, suffix: str, separator: str = "#") -> str:
    """``name + suffix``, within PostgreSQL's 63-byte identifiers: a long queue name is
    shortened and made unique again with a hash of the whole name (after ``separator``,
    which queue names cannot contain, from schema version 3 on)."""
    if len(name) + len(suffix) <= 63:
        return name + suffix
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]  # noqa: S324  (a name, not a secret)
    return f"{name[: 63 - len(suffix) - 9]}{separator}{digest}{suffix}"


# The roles of a queue's objects and their names' suffixes ("<queue>#<suffix>").
_NAMES = {
    "done": "done",
    "dedup": "dedup",
    "ix_ready": "ready",
    "ix_leases": "leases",
    "ix_expiry": "expiry",
    "ix_group": "group",
    "ix_done": "done_at",
    "tr_count": "count",
    "tr_dlq_count": "dlq_count",
    "tr_group": "group_next",
    "fn_count": "count",
    "fn_dlq_count": "dlq_count",
    "fn_group": "group_next",
    "pk_q": "pkey",
    "pk_dlq": "dlq_pkey",
    "pk_done": "done_pkey",
    "pk_dedup": "dedup_pkey",
    "seq": "id_seq",
}


def object_names(name: str, version: int = SCHEMA_VERSION) -> dict[str, str]:
    """The names of queue ``name``'s objects in schema ``version`` (before SEPARATED_NAMES,
    the primary keys and sequence as PostgreSQL names them for a name that is not long)."""
    if version >= SEPARATED_NAMES:
        names = {"q": name, "dlq": _fit(name, "_dlq")}
        names.update({key: _fit(name, f"#{suffix}") for key, suffix in _NAMES.items()})
        return names
    names = {"q": name, "dlq": _fit(name, "_dlq", "_")}
    names.update({key: _fit(name, f"_{suffix}", "_") for key, suffix in _NAMES.items()})
    names.update(
        pk_q=f"{name}_pkey",
        pk_dlq=f"{names['dlq']}_pkey",
        pk_done=f"{names['done']}_pkey",
        pk_dedup=f"{names['dedup']}_pkey",
        seq=f"{name}_id_seq",
    )
    return names


class Rendered:
    """The statements of one queue, ready to execute; ``pinned``: the time is the "now"
    parameter (tests) instead of the server's clock."""

    def __init__(self, name: str, pinned: bool = False) -> None:
        names = object_names(name)
        # Names are validated identifiers (plus '#'), so quoting them as they are is safe.
        # PostgreSQL folds unquoted names to lower case; quoting keeps "Jobs" and "jobs"
        # apart.
        self.subst = {key: quote(value) for key, value in names.items()}
        self.subst.update(
            {f"old_{key}": quote(value) for key, value in object_names(name, OLD_NAMES).items()}
        )
        self.subst["lit"] = f"'{name}'"
        self.subst["q_regclass"] = f"""'"{name}"'"""
        self.subst["dlq_regclass"] = f"'{quote(names['dlq'])}'"
        self.subst["now"] = PINNED_NOW if pinned else SERVER_NOW
        self.tables = names
        self.sql = {key: self.fill(sql) for key, sql in STATEMENTS.items()}
        self.ddl = [self.fill(sql) for sql in QUEUE_DDL]
        self.upgrade_from_1 = [self.fill(sql) for sql in UPGRADE_FROM_1]
        self.upgrade_from_4 = [self.fill(sql) for sql in UPGRADE_FROM_4]

    def fill(self, sql: str) -> str:
        return Template(sql).substitute(self.subst)


def quote(identifier: str) -> str:
    """An identifier as SQL text, quoted."""
    return '"' + identifier.replace('"', '""') + '"'


# From schema version 2: every object of the queue but its table and dead letters gets a
# "q#..." name, primary keys and the id sequence included (PostgreSQL had named them
# "q_pkey", "q_id_seq"). Renames only: no row is touched, no index is built.
_UPGRADE_RENAMES = (
    ("TABLE", ("dlq", "done", "dedup")),
    ("INDEX", ("ix_ready", "ix_leases", "ix_expiry", "ix_group", "ix_done")),
)
_UPGRADE_TRIGGERS = (("tr_count", "q"), ("tr_dlq_count", "dlq"), ("tr_group", "q"))
_UPGRADE_FUNCTIONS = ("fn_count", "fn_dlq_count", "fn_group")
PRIMARY_KEYS = (("pk_q", "q"), ("pk_dlq", "dlq"), ("pk_done", "done"), ("pk_dedup", "dedup"))
#: The primary key constraint of a table ($1: the table, as text), as found.
PRIMARY_KEY = "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'"


def upgrade_from_2(new: Rendered, found_keys: dict[str, str], sequence: str) -> list[str]:
    """The statements from schema version 2 to 3, given the primary key constraints the
    tables have (by role: pk_q, ...) and the id sequence's name (qualified, as SQL)."""
    old = object_names(str(new.tables["q"]), OLD_NAMES)
    renames = []
    for kind, roles in _UPGRADE_RENAMES:
        for role in roles:
            if old[role] != new.tables[role]:
                renames.append(f"ALTER {kind} {quote(old[role])} RENAME TO {new.subst[role]}")
    for role, table in PRIMARY_KEYS:
        if found_keys[role] != new.tables[role]:
            renames.append(
                f"ALTER TABLE {new.subst[table]} RENAME CONSTRAINT {quote(found_keys[role])} "
                f"TO {new.subst[role]}"
            )
    renames.append(f"ALTER SEQUENCE {sequence} RENAME TO {new.subst['seq']}")
    for role, table in _UPGRADE_TRIGGERS:
        renames.append(
            f"ALTER TRIGGER {quote(old[role])} ON {new.subst[table]} RENAME TO {new.subst[role]}"
        )
    for role in _UPGRADE_FUNCTIONS:
        renames.append(f"ALTER FUNCTION {quote(old[role])}() RENAME TO {new.subst[role]}")
    return renames


# -- copying a queue's rows (copy between databases) -------------------------------------
#: The tables a copy moves, in order: (the template key of the table, the column it is
#: read in order of). Their columns are read from the database itself.
COPY_TABLES = {
    "messages": ("q", "id"),
    "dead": ("dlq", "id"),
    "done": ("done", "id"),
    "dedup": ("dedup", "key"),
}
#: The stored payload's columns, which a copy moves as one "payload".
PAYLOAD_COLUMNS = ("body_text", "body_bytes")


def columns_sql(rendered: Rendered, table: str) -> str:
    """No rows, only the column names of one of COPY_TABLES (in the cursor's description)."""
    return f"SELECT * FROM {rendered.subst[COPY_TABLES[table][0]]} LIMIT 0"


def export_sql(rendered: Rendered, table: str, columns: Sequence[str], exact: bool = False) -> str:
    """A page of one of COPY_TABLES, every column, in the order of its key, after
    %(after)s (``exact``: the row whose key is %(after)s)."""
    key_table, key = COPY_TABLES[table]
    listed = ", ".join(quote(c) for c in columns)
    found = (
        f"{quote(key)} = %(after)s" if exact else f"{quote(key)} > %(after)s ORDER BY {quote(key)}"
    )
    return f"SELECT {listed} FROM {rendered.subst[key_table]} WHERE {found} LIMIT %(limit)s"


def import_sql(rendered: Rendered, table: str, columns: Sequence[str]) -> str:
    """Insert one copied row (named parameters, one per column) into one of COPY_TABLES."""
    names = ", ".join(quote(c) for c in columns)
    values = ", ".join(f"%({c})s" for c in columns)
    return f"INSERT INTO {rendered.subst[COPY_TABLES[table][0]]} ({names}) VALUES ({values})"


def schema_script(rendered: Rendered) -> list[str]:
    """Every statement that creates and registers a queue, in order."""
    return [s.strip() for s in (*REGISTRY_DDL, *rendered.ddl, rendered.sql["register"])]


def render(name: str, pinned: bool = False) -> Rendered:
    """Statements for the queue ``name`` (which must already be validated)."""
    return Rendered(name, pinned)


def redrive_into(target: Rendered, source: Rendered) -> str:
    """The statement moving one dead letter of ``source`` into queue ``target``."""
    return Template(_REDRIVE_INTO).substitute({**target.subst, "src": source.subst["dlq"]})


# -- least privilege: what each role may do (sqqueue grants) ------------------------------
# Templates: $schema the schema, $role the role (both quoted), $registry, $counters and
# $count_fn the schema's shared objects, $q, $dlq, $done, $dedup and $seq one queue's
# (qualified, current layout). Creating and upgrading queues stays with the owner of the
# schema: no role below may run DDL.

#: The roles ``grants`` knows, in the order their statements are printed.
ROLES = ("producer", "consumer", "admin")

# Every role opens queues, and every write of a queue row adds to the shared counters
# (the tables' triggers call sqqueue_count as the writing role).
_SHARED_GRANTS = (
    # Find the queue's objects in the schema.
    "GRANT USAGE ON SCHEMA $schema TO $role",
    # Read the queue's layout version when the queue object is constructed (no DDL then).
    "GRANT SELECT ON $registry TO $role",
    # Keep the counts and totals the triggers and stats() maintain.
    "GRANT SELECT, INSERT, UPDATE ON $counters TO $role",
    # The counting function the triggers call.
    "GRANT EXECUTE ON FUNCTION $count_fn TO $role",
)

_QUEUE_GRANTS = {
    "producer": (
        # Add messages; RETURNING gives back their ids; a group's new message checks
        # whether its group already has one (no payload column is readable).
        "GRANT INSERT, SELECT (id, group_key) ON $q TO $role",
        # Ids reserved ahead for deduplicated messages.
        "GRANT USAGE ON SEQUENCE $seq TO $role",
        # Is a deduplicated message still alive (ids only)?
        "GRANT SELECT (id) ON $dlq TO $role",
        # Claim, look up, renew and prune deduplication keys.
        "GRANT SELECT, INSERT, UPDATE, DELETE ON $dedup TO $role",
    ),
    "consumer": (
        # Claim, renew, release, complete and fold back expired leases.
        "GRANT SELECT, UPDATE, DELETE ON $q TO $role",
        # Dead-letter a message that failed for good (ids only are readable: is it dead?).
        "GRANT INSERT, SELECT (id) ON $dlq TO $role",
        # Keep completed messages as history, and prune it to the retention settings.
        "GRANT INSERT, DELETE, SELECT (id, completed_at) ON $done TO $role",
        # Prune expired deduplication keys.
        "GRANT SELECT, DELETE ON $dedup TO $role",
    ),
    "admin": (
        # Everything on the queue's rows: purge, redrive, copy, inspect.
        "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON $q, $dlq, $done, $dedup TO $role",
        # Redrive and copy keep ids, and move the sequence past them.
        "GRANT USAGE, SELECT, UPDATE ON SEQUENCE $seq TO $role",
    ),
}

_ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}")
# Words GRANT reads as something else than a role, even quoted (and the server's own roles).
_NOT_ROLES = ("public", "current_user", "current_role", "session_user", "none")


def validate_role(role: object) -> str:
    """``role`` if it is a role name ``grants`` will print, else ``ValueError``."""
    if not isinstance(role, str) or not _ROLE_NAME.fullmatch(role):
        raise ValueError(
            f"invalid role name {role!r}: use 1-63 ASCII letters, digits, '_', '$' or '-', "
            "starting with a letter or underscore"
        )
    if role.lower() in _NOT_ROLES or role.lower().startswith("pg_"):
        raise ValueError(f"invalid role name {role!r}: that name is reserved by PostgreSQL")
    return role


def grant_statements(schema: str, queues: Sequence[str], roles: dict[str, str]) -> list[str]:
    """The GRANT statements giving each role of ``roles`` (``{"producer": "app_in", ...}``,
    any of ROLES) what it needs on ``queues`` (validated names, current layout) in
    ``schema``; role names are validated here."""
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown role kind {unknown[0]!r}: use {', '.join(ROLES)}")
    where = quote(schema)
    shared = {
        "schema": where,
        "registry": f"{where}.sqqueue_queues",
        "counters": f"{where}.sqqueue_counters",
        "count_fn": f"{where}.sqqueue_count({COUNT_FN_ARGS})",
    }
    statements: list[str] = []
    for kind in ROLES:
        if kind not in roles:
            continue
        values = {**shared, "role": quote(validate_role(roles[kind]))}
        statements += [Template(s).substitute(values) for s in _SHARED_GRANTS]
        for name in queues:
            names = object_names(name)
            objects = {
                key: f"{where}.{quote(names[key])}" for key in ("q", "dlq", "done", "dedup", "seq")
            }
            statements += [
                Template(s).substitute({**values, **objects}) for s in _QUEUE_GRANTS[kind]
            ]
    return statements


# -- Statements on the database and its connections, not on one queue --------------------
# Each with what it does; ``{name}`` fields are filled with str.format by the caller.

#: look for the queues' tables in this schema
SET_SEARCH_PATH = 'SET search_path TO "{schema}"'
#: the caller's search path, to give back after enqueue_in (see LOCAL_SEARCH_PATH)
SHOW_SEARCH_PATH = "SELECT current_setting('search_path')"
#: the schema the queue's own connections create and find its tables in (no schema=)
CURRENT_SCHEMA = "SELECT current_schema()"
#: the search path for the rest of the caller's transaction (enqueue_in): the queue's
#: schema while its statements run, then the caller's own path back
LOCAL_SEARCH_PATH = "SELECT set_config('search_path', %s, true)"
#: how long a statement waits for a lock before it fails, in milliseconds
SET_LOCK_TIMEOUT = "SET lock_timeout = {ms}"
#: every transaction of the connection is read-only (read_only=True queues)
READ_ONLY_TRANSACTIONS = "SET default_transaction_read_only = on"
#: open a transaction
BEGIN = "BEGIN"
#: end a transaction, keeping its writes
COMMIT = "COMMIT"
#: end a transaction, undoing its writes
ROLLBACK = "ROLLBACK"
#: the registry of queues, or NULL when the schema has none
HAS_REGISTRY = "SELECT to_regclass('sqqueue_queues')"
#: the names of the registered queues, sorted
QUEUE_NAMES = "SELECT name FROM sqqueue_queues ORDER BY name"
#: the schema version of one registered queue
SCHEMA_VERSION_OF = "SELECT schema_version FROM sqqueue_queues WHERE name = %s"
#: one process at a time creates or upgrades queues (held until the transaction ends)
SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('sqqueue schema', 0))"
#: create the schema the queues live in
CREATE_SCHEMA = 'CREATE SCHEMA IF NOT EXISTS "{schema}"'
#: register a queue with its schema version and creation time (the server's, if not given)
REGISTER_QUEUE = (
    "INSERT INTO sqqueue_queues (name, schema_version, created_at) VALUES "
    "(%s, %s, coalesce(%s, extract(epoch FROM clock_timestamp())::float8))"
)
#: record that a queue was upgraded to a schema version
SET_SCHEMA_VERSION = "UPDATE sqqueue_queues SET schema_version = %s WHERE name = %s"
#: whether a table exists
TABLE_EXISTS = "SELECT to_regclass(%s) IS NOT NULL"
#: every registered queue with its schema version
REGISTERED_VERSIONS = "SELECT name, schema_version FROM sqqueue_queues"
#: a lock on a name, held until the transaction ends
ADVISORY_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
#: hear the notifications of enqueues (see the notify statement)
LISTEN = "LISTEN sqqueue"
#: the schema the connection's names resolve in
CURRENT_SCHEMA = "SELECT current_schema()"
#: reclaim a table's dead rows now
VACUUM_TABLE = "VACUUM {table}"
