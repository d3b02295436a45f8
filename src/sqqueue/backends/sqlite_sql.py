"""All the SQL of the SQLite backend, in one place.

Statements are templates: ``$q`` is the queue's table, ``$dlq`` its dead letters,
``$done`` its completed history, ``$dedup`` its deduplication keys, ``$lit`` the queue name
as a string literal, and ``$ix_*``/``$tr_*`` the names of its indexes and triggers.
:func:`render` fills them in for one (validated) queue name.

Layout of one queue ``q``::

    q          pending (incl. delayed), waiting (behind another message of their group)
               and processing (leased) messages
    q_dlq      dead letters, keeping the id they had in q
    q#done     completed messages, when the queue keeps a history (retention)
    q#dedup    deduplication keys of recent enqueues
    q#body     payloads of large messages
    sqqueue_queues   one row per queue: schema version, creation time
    sqqueue_counters exact counts and event totals, one row per queue and counter

Every other object of the queue (indexes, triggers) is named ``q#...`` too. Queue names
cannot contain ``#`` nor end in ``_dlq``, so no queue's name is ever another queue's
internal object (schema version 5; earlier versions used ``q_done``, ``q_ready``, ...).
SQLite compares table names without regard to case, so ``Jobs`` and ``jobs`` cannot
both be queues of one file (see the backend).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from string import Template

__all__ = [
    "COLUMNS",
    "COPY_TABLES",
    "COUNTERS",
    "DEAD_COLUMNS",
    "DONE_COLUMNS",
    "REGISTRY_DDL",
    "SCHEMA_VERSION",
    "UPGRADES",
    "Rendered",
    "redrive_into",
    "render",
]

#: The layout version this module creates, recorded per queue in sqqueue_queues:
#: 2: no insert trigger (UPGRADE_FROM_1); 3: results kept (UPGRADE_FROM_2);
#: 4: updated_at in the ready index (UPGRADE_FROM_3); 5: internal names "q#..."
#: (UPGRADE_FROM_4); 6: the depth counter named for what it counts (UPGRADE_FROM_5);
#: 7: message signatures (UPGRADE_FROM_6).
SCHEMA_VERSION = 7
#: The first version whose message tables have a signature column.
SIGNED = 7
#: The first version whose internal objects are named "q#..." (see _NAMES).
SEPARATED_NAMES = 5
#: A version with the names before SEPARATED_NAMES ("$old_done", ... in the upgrades).
OLD_NAMES = SEPARATED_NAMES - 1

# One row per queue: its schema version and creation time; and the queues' counters, one
# row each, named '<queue>#<counter>'.
REGISTRY_DDL = (
    """
CREATE TABLE IF NOT EXISTS sqqueue_queues (
    name                 TEXT PRIMARY KEY,
    schema_version       INTEGER NOT NULL,
    created_at           REAL NOT NULL
)""",
    """
CREATE TABLE IF NOT EXISTS sqqueue_counters (
    name                 TEXT PRIMARY KEY,
    n                    INTEGER NOT NULL
)""",
)

# Counter updates name one row each (name = ...): with "name IN (...)" SQLite takes a
# slower path, measured at several times the cost of the whole update.
# Counts are kept exact by triggers on updates and deletes (rows changed or deleted by
# hand are counted too) and by the ids inserts take; totals are bumped by the operations. Every page a commit touches costs a WAL frame, so the hot
# paths write as few counters as they can:
#
# - a claim writes none: the messages being processed are counted from the lease index
#   (which holds exactly them), so #depth counts unleased and processing together;
# - an enqueue writes none either. Ids are handed out one after another, so the enqueues
#   not yet counted are derived from them:
#
#   next id  = max(largest id in the queue, #high) + 1       (ids are never reused)
#   #high    = the largest id that ever left the queue, or was reserved (imports)
#   fresh    = max(largest id in the queue, #high) - #base   (enqueues not yet counted)
#   depth    = #depth + fresh;    enqueued = #enqueued + fresh
#
# An insert whose id is not the next one (a revived dead letter, an import, a salvaged
# row) is counted by the code that makes it. The rows are created with the queue.
COUNTERS = (
    "depth",  # in the queue table: ready, delayed, waiting or processing
    "dead",
    "enqueued",
    "completed",
    "failed",
    "dead_lettered",
    "expired",  # leases that ran out
    "ttl_expired",  # messages whose time to live ran out
    "high",  # see above
    "base",
)

# A message leaving the queue table leaves its depth.
DELETE_TRIGGER = """
CREATE TRIGGER $tr_delete AFTER DELETE ON $q BEGIN
    UPDATE sqqueue_counters SET n = n - 1 WHERE name = $c_depth;
END"""

# The claim's index: ready rows in delivery order (see INDEX_DDL).
READY_INDEX = (
    "CREATE INDEX $ix_ready ON $q (priority DESC, visible_at, id, updated_at) "
    "WHERE status = 'pending'"
)

# A queue's tables: its messages, dead letters, completed messages, large payloads and
# dedup keys.
TABLES_DDL = (
    """
CREATE TABLE $q (
    id                INTEGER PRIMARY KEY,  -- never reused: see COUNTERS
    payload,                             -- TEXT for str and JSON, BLOB for bytes;
                                         -- NULL when large: the body is kept apart
    encoding          TEXT NOT NULL,     -- 'text', 'bytes', 'json' or a serializer name
    checksum          INTEGER,           -- CRC-32 of the stored bytes; NULL for 0.1.0 rows
    -- OR, not IN (...): SQLite checks an IN list of three through a temporary table,
    -- built again for every row written (about 1.8 us per insert or claim).
    status            TEXT NOT NULL DEFAULT 'pending'
                      CHECK (status = 'pending' OR status = 'waiting' OR status = 'processing'),
    priority          INTEGER NOT NULL DEFAULT 0,
    visible_at        REAL NOT NULL,     -- not delivered before; FIFO key within a priority
    lease_token       INTEGER,           -- fences acks: only the current holder's count
    lease_expires_at  REAL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL,
    last_error        TEXT,
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL,
    group_key         TEXT,              -- messages of a group are delivered one at a time
    expires_at        REAL,              -- never delivered after this (time to live)
    -- attempts before a redrive
    prior_attempts    INTEGER NOT NULL DEFAULT 0,
    -- HMAC of the message (sqqueue.signing); NULL: unsigned
    signature         TEXT
)""",
    """
CREATE TABLE $dlq (
    id                INTEGER PRIMARY KEY,  -- the id the message had in $q
    payload,                                -- NULL: the body is kept apart
    encoding          TEXT NOT NULL,
    checksum          INTEGER,
    status            TEXT NOT NULL DEFAULT 'dead',
    priority          INTEGER NOT NULL DEFAULT 0,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL,
    last_error        TEXT,
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL,
    dead_at           REAL NOT NULL,
    group_key         TEXT,
    prior_attempts    INTEGER NOT NULL DEFAULT 0,
    signature         TEXT
)""",
    """
CREATE TABLE $done (
    id                INTEGER PRIMARY KEY,  -- the id the message had in $q
    payload,                                -- NULL: the body is kept apart
    encoding          TEXT NOT NULL,
    checksum          INTEGER,
    priority          INTEGER NOT NULL,
    attempts          INTEGER NOT NULL,
    created_at        REAL NOT NULL,
    completed_at      REAL NOT NULL,
    group_key         TEXT,
    -- JSON: what complete(..., result=) kept
    result            TEXT,
    signature         TEXT
)""",
    # Large payloads live apart from their message row, so that leasing, failing or
    # moving a message never rewrites (or loads) megabytes. A body goes when its message
    # has left the queue, the dead letters and the history.
    """
CREATE TABLE $body (
    id                INTEGER PRIMARY KEY,  -- the message's id
    payload           NOT NULL
)""",
    """
CREATE TABLE $dedup (
    key               TEXT PRIMARY KEY,
    message_id        INTEGER NOT NULL,
    expires_at        REAL               -- NULL: for as long as the message exists
)""",
)

# A queue's indexes, each for the statements it serves.
INDEX_DDL = (
    # Serves the claim exactly: ready rows in delivery order, pending rows only. updated_at
    # is there to tell a message without a delay (see _READY) without reading its row.
    READY_INDEX,
    # Serves the fold of expired leases, and waiting consumers' next wake-up.
    "CREATE INDEX $ix_leases ON $q (lease_expires_at) WHERE status = 'processing'",
    "CREATE INDEX $ix_expiry ON $q (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX $ix_group ON $q (group_key, id) WHERE group_key IS NOT NULL",
    "CREATE INDEX $ix_done ON $done (completed_at)",
)

# A queue's triggers: large payloads leave with the last row naming them, and counters.
TRIGGER_DDL = (
    """
CREATE TRIGGER $tr_body_q AFTER DELETE ON $q WHEN OLD.payload IS NULL BEGIN
    DELETE FROM $body WHERE id = OLD.id
       AND NOT EXISTS (SELECT 1 FROM $dlq WHERE id = OLD.id)
       AND NOT EXISTS (SELECT 1 FROM $done WHERE id = OLD.id);
END""",
    """
CREATE TRIGGER $tr_body_dlq AFTER DELETE ON $dlq WHEN OLD.payload IS NULL BEGIN
    DELETE FROM $body WHERE id = OLD.id
       AND NOT EXISTS (SELECT 1 FROM $q WHERE id = OLD.id)
       AND NOT EXISTS (SELECT 1 FROM $done WHERE id = OLD.id);
END""",
    """
CREATE TRIGGER $tr_body_done AFTER DELETE ON $done WHEN OLD.payload IS NULL BEGIN
    DELETE FROM $body WHERE id = OLD.id
       AND NOT EXISTS (SELECT 1 FROM $q WHERE id = OLD.id)
       AND NOT EXISTS (SELECT 1 FROM $dlq WHERE id = OLD.id);
END""",
    # No insert trigger: inserts with the next id are counted as "fresh" (see COUNTERS),
    # and the few paths that insert rows with ids of their own count them in the same
    # transaction (revive, import, salvage). A trigger, even one that does nothing,
    # cost 1.35 us per row inserted.
    DELETE_TRIGGER,
    # The largest id leaving the queue raises #high, so it is never handed out again.
    """
CREATE TRIGGER $tr_high AFTER DELETE ON $q
WHEN NOT EXISTS (SELECT 1 FROM $q WHERE id > OLD.id) BEGIN
    UPDATE sqqueue_counters SET n = max(n, OLD.id) WHERE name = $c_high;
END""",
    # When a message of a group leaves the queue (completed, dead-lettered, expired or
    # purged), the next message of that group, if any, becomes deliverable.
    """
CREATE TRIGGER $tr_group AFTER DELETE ON $q
WHEN OLD.group_key IS NOT NULL AND OLD.status <> 'waiting' BEGIN
    UPDATE $q SET status = 'pending'
     WHERE id = (SELECT min(id) FROM $q WHERE group_key = OLD.group_key AND status = 'waiting')
       AND NOT EXISTS (SELECT 1 FROM $q WHERE group_key = OLD.group_key
                                           AND status IN ('pending', 'processing'));
END""",
    """
CREATE TRIGGER $tr_dlq_insert AFTER INSERT ON $dlq BEGIN
    UPDATE sqqueue_counters SET n = n + 1 WHERE name = $c_dead;
END""",
    """
CREATE TRIGGER $tr_dlq_delete AFTER DELETE ON $dlq BEGIN
    UPDATE sqqueue_counters SET n = n - 1 WHERE name = $c_dead;
END""",
)

# Everything a new queue is made of.
QUEUE_DDL = (*TABLES_DDL, *INDEX_DDL, *TRIGGER_DDL)

COLUMNS = (
    "id, payload, encoding, checksum, priority, attempts, max_attempts, created_at, "
    "visible_at, lease_token, lease_expires_at, last_error, group_key, expires_at, "
    "prior_attempts, status, signature"
)
DEAD_COLUMNS = (
    "id, payload, encoding, checksum, priority, attempts, max_attempts, last_error, "
    "created_at, updated_at, dead_at, group_key, prior_attempts, signature"
)
DONE_COLUMNS = (
    "id, payload, encoding, checksum, priority, attempts, created_at, completed_at, group_key, "
    "result, signature"
)
# Payloads are read as bytes plus "was it text", so a stored text that is not valid UTF-8
# reaches the codec (which dead-letters it) instead of failing inside sqlite3.
_PAYLOAD = "CAST(payload AS BLOB), typeof(payload) = 'text'"
# Reads name the signature $signature: NULL for a queue read in an older layout (a
# read-only object does not upgrade it), which has no such column.
READ_COLUMNS = COLUMNS.replace("payload", _PAYLOAD, 1).replace("signature", "$signature")
# A pending row as it reads once claimed (see "claim_pick").
_CLAIMED_COLUMNS = (
    f"id, {_PAYLOAD}, encoding, checksum, priority, attempts + 1, max_attempts, created_at, "
    "visible_at, :token, :now + :lease, last_error, group_key, expires_at, prior_attempts, "
    "'processing', signature"
)
READ_DEAD_COLUMNS = DEAD_COLUMNS.replace("payload", _PAYLOAD, 1).replace("signature", "$signature")
READ_DONE_COLUMNS = DONE_COLUMNS.replace("payload", _PAYLOAD, 1).replace("signature", "$signature")
# The payload of a message stored apart from its row (a large one).
BODY = f"SELECT {_PAYLOAD} FROM $body WHERE id = :id"

# The largest id handed out so far, the next one, and the enqueues not yet counted.
_HIGHEST = """max(coalesce((SELECT max(id) FROM $q), 0),
                 (SELECT n FROM sqqueue_counters WHERE name = $c_high))"""
_NEXT_ID = f"({_HIGHEST} + 1)"
_FRESH = f"({_HIGHEST} - (SELECT n FROM sqqueue_counters WHERE name = $c_base))"


def _counter(name: str) -> str:
    return f"(SELECT n FROM sqqueue_counters WHERE name = $c_{name})"


_DEPTH = f"({_counter('depth')} + {_FRESH})"
# Served by the lease index, so it costs one step per message being processed.
_PROCESSING = "(SELECT count(*) FROM $q WHERE status = 'processing')"


# A lease is live when the row is processing, not expired, and (if the caller has a
# token) held under that token.
_LIVE = (
    "status = 'processing' AND lease_expires_at > :now AND (:token IS NULL OR lease_token = :token)"
)
# A pending message is ready when the clock says it is visible, or when it was visible
# already when it was last written: a message without a delay (enqueued, failed without a
# retry delay, released, back from an expired lease) is stored with visible_at no later
# than updated_at. Only a message with a delay depends on the clock, so a clock stepped
# back never hides a message that was ready.
_READY = "(visible_at <= :now OR visible_at <= updated_at)"
_DELAYED = "(visible_at > :now AND visible_at > updated_at)"
# For a listing of all states: the stored 'pending' reads as the state it is in now, ready
# or delayed (the words of the glossary).
LIST_ALL_COLUMNS = READ_COLUMNS.replace(
    "status",
    f"CASE WHEN status <> 'pending' THEN status WHEN {_DELAYED} THEN 'delayed' ELSE 'ready' END",
)
# A lease expiry no sqqueue call could have set: more than 30 days ahead (leases are at
# most 7 days), infinite, or a text or blob written by hand. SQLite orders every text and
# blob after every number, so one index range finds them all.
_IMPOSSIBLE_LEASE = "lease_expires_at > :now + 2592000"
# A visibility time no sqqueue call could have set: later than the latest clock it takes
# (2100) plus the longest delay (ten years), infinite, or a text or blob written by hand
# (SQLite orders every text and blob after every number). Not measured from now, so a
# clock set back by years leaves delayed messages as they are.
_IMPOSSIBLE_VISIBILITY = "visible_at > 4418668800"
# A waiting row nothing will promote: no message of its group is pending or processing
# (its group key is NULL, or the messages ahead of it were edited away by hand).
_STRANDED = """w.status = 'waiting' AND NOT EXISTS (
                   SELECT 1 FROM $q WHERE group_key = w.group_key AND status <> 'waiting')"""
# A message of a group waits while any other message of its group is still in the queue.
_FIRST_STATUS = """CASE WHEN :group_key IS NOT NULL AND EXISTS (
                           SELECT 1 FROM $q WHERE group_key = :group_key)
                      THEN 'waiting' ELSE 'pending' END"""

STATEMENTS = {
    # Insert one message with every option.
    "insert": f"""
        INSERT INTO $q (id, payload, encoding, checksum, priority, visible_at, max_attempts,
                        created_at, updated_at, expires_at, signature)
        VALUES ({_NEXT_ID}, :data, :encoding, :checksum, :priority, :now + :delay,
                :max_attempts, :now, :now, :now + :ttl, :signature)""",
    # An unsigned plain message. Positional: data, encoding, checksum, priority, delay,
    # max_attempts, now, ttl. (No signature column: naming it, even NULL, costs about
    # 3.5% of an enqueue; signed messages take "insert".)
    "insert_plain": f"""
        INSERT INTO $q (id, payload, encoding, checksum, priority, visible_at, max_attempts,
                        created_at, updated_at, expires_at)
        VALUES ({_NEXT_ID}, ?1, ?2, ?3, ?4, ?7 + ?5, ?6, ?7, ?7, ?7 + ?8)""",
    # A batch of unsigned plain messages: the caller reads next_id once and numbers the
    # rows itself (?9).
    "insert_plain_at": """
        INSERT INTO $q (id, payload, encoding, checksum, priority, visible_at, max_attempts,
                        created_at, updated_at, expires_at)
        VALUES (?9, ?1, ?2, ?3, ?4, ?7 + ?5, ?6, ?7, ?7, ?7 + ?8)""",
    # Insert one message of a group: waiting if its group has a message ahead.
    "insert_grouped": f"""
        INSERT INTO $q (id, payload, encoding, checksum, status, priority, visible_at,
                        max_attempts, created_at, updated_at, expires_at, group_key, signature)
        VALUES ({_NEXT_ID}, :data, :encoding, :checksum, {_FIRST_STATUS}, :priority,
                :now + :delay, :max_attempts, :now, :now, :now + :ttl, :group_key,
                :signature)""",
    # The id the next message gets.
    "next_id": f"SELECT {_NEXT_ID}",
    # Make the ids up to :high taken without counting them as enqueues: #base moves up
    # with the highest id, so fresh stays as it is. Run in this order.
    "reserve_base": f"""
        UPDATE sqqueue_counters SET n = n + max(:high - {_HIGHEST}, 0) WHERE name = $c_base""",
    # Make the ids up to :high taken (the high-water mark).
    "reserve_high": "UPDATE sqqueue_counters SET n = max(n, :high) WHERE name = $c_high",
    # The message a dedup key points to, and until when.
    "dedup_get": "SELECT message_id, expires_at FROM $dedup WHERE key = :key",
    # The dedup key a message holds, if any: for showing one message (it reads the keys,
    # which upkeep keeps to those of the dedup window).
    "dedup_of": "SELECT key FROM $dedup WHERE message_id = :id LIMIT 1",
    # A payload kept in the side table (large payloads).
    "body_get": BODY,
    # Keep a large payload in the side table.
    "body_put": "INSERT INTO $body (id, payload) VALUES (:id, :data)",
    # Point a dedup key at a new message, or add it.
    "dedup_put": """
        INSERT INTO $dedup (key, message_id, expires_at) VALUES (:key, :id, :expires_at)
        ON CONFLICT (key) DO UPDATE SET message_id = excluded.message_id,
                                        expires_at = excluded.expires_at""",
    # Whether an id is taken, by a message or a dead letter.
    "exists": """
        SELECT EXISTS (SELECT 1 FROM $q WHERE id = :id)
            OR EXISTS (SELECT 1 FROM $dlq WHERE id = :id)""",
    # Messages counted against max_depth: ready, delayed, waiting and processing.
    "depth": f"SELECT {_DEPTH}",
    # A claim is a SELECT of the rows as they will be once claimed, then an UPDATE of the
    # same rows, in one write transaction. UPDATE ... RETURNING would do it in one
    # statement, but SQLite runs it through temporary tables (for the RETURNING rows, the
    # rowids to update, the IN list), each set up and torn down on every claim: about
    # 15% of a claim, and, when the allocator gives their memory back to the system
    # every time, more than the claim itself.
    "claim_pick": f"""
        SELECT {_CLAIMED_COLUMNS} FROM $q
         WHERE status = 'pending' AND {_READY}
         ORDER BY priority DESC, visible_at, id
         LIMIT :limit""",
    # Lease the message claim_pick chose.
    "claim_one": """
        UPDATE $q
           SET status = 'processing', attempts = attempts + 1, lease_token = :token,
               lease_expires_at = :now + :lease, updated_at = :now
         WHERE id = :id""",
    # Lease a batch: the rows claim_pick would choose, in one statement. They are read
    # after the commit ("claimed"), so the write lock is not held while they are read.
    "claim_many": f"""
        UPDATE $q
           SET status = 'processing', attempts = attempts + 1, lease_token = :token,
               lease_expires_at = :now + :lease, updated_at = :now
         WHERE id IN (SELECT id FROM $q
                       WHERE status = 'pending' AND {_READY}
                       ORDER BY priority DESC, visible_at, id
                       LIMIT :limit)""",
    # The rows a batch claim leased (after its commit): still processing under its token,
    # with the expiry it set (the same :now + :lease, so the same value; a seek into the
    # lease index). A row whose lease ran out and was claimed again since is not among
    # them: it is the other claim's.
    "claimed": f"""
        SELECT {READ_COLUMNS} FROM $q
         WHERE status = 'processing' AND lease_expires_at = :now + :lease
           AND lease_token = :token
         ORDER BY priority DESC, visible_at, id""",
    # The same rows by their token alone, when "claimed" found fewer than were leased: a
    # claim elsewhere may have re-anchored their expiry since (a clock stepped back; see
    # "reanchor_leases"). It reads every processing row, so it is the fallback only.
    "claimed_by_token": f"""
        SELECT {READ_COLUMNS} FROM $q
         WHERE status = 'processing' AND lease_token = :token
         ORDER BY priority DESC, visible_at, id""",
    # One probe per claim: is there an expired lease, or a message past its time to live?
    # A lease whose expiry is NULL or impossible counts as expired (see "lease_repair").
    # One EXISTS per range: each is a seek into an index (with OR, SQLite scans the table).
    "any_expired": f"""
        SELECT EXISTS (SELECT 1 FROM $q WHERE status = 'processing' AND lease_expires_at <= :now)
            OR EXISTS (SELECT 1 FROM $q WHERE status = 'processing' AND lease_expires_at IS NULL)
            OR EXISTS (SELECT 1 FROM $q WHERE status = 'processing' AND {_IMPOSSIBLE_LEASE})
            OR EXISTS (SELECT 1 FROM $q WHERE expires_at <= :now)""",
    # A processing row whose lease expiry is NULL or impossible (edited by hand) would never
    # expire: its lease ends now, and the fold that follows returns it to the queue (or to
    # the dead-letter queue on its last attempt).
    "lease_repair": f"""
        UPDATE $q SET lease_expires_at = :now
         WHERE id IN (SELECT id FROM $q WHERE status = 'processing' AND lease_expires_at IS NULL
                      UNION ALL
                      SELECT id FROM $q WHERE status = 'processing' AND {_IMPOSSIBLE_LEASE})""",
    # Is there a row edited by hand that no claim would ever take: a pending one whose
    # visibility time is impossible, or a stranded waiting one? A pass over the table, so
    # a queue object looks only when a claim found nothing, at most once a minute.
    "any_stranded": f"""
        SELECT EXISTS (SELECT 1 FROM $q WHERE status = 'pending' AND {_IMPOSSIBLE_VISIBILITY})
            OR EXISTS (SELECT 1 FROM $q AS w WHERE {_STRANDED})""",
    # A stranded waiting row becomes pending: the first of its group, or each one
    # without a group.
    "stranded_repair": f"""
        UPDATE $q SET status = 'pending'
         WHERE id IN (SELECT id FROM $q WHERE status = 'waiting' AND group_key IS NULL
                      UNION ALL
                      SELECT min(id) FROM $q AS w WHERE w.group_key IS NOT NULL AND {_STRANDED}
                       GROUP BY w.group_key)""",
    # An impossible visibility time (edited by hand) becomes now: the message is ready.
    "visibility_repair": f"""
        UPDATE $q SET visible_at = :now, updated_at = :now
         WHERE status = 'pending' AND {_IMPOSSIBLE_VISIBILITY}""",
    # Past its time to live: gone, unless a consumer holds a live lease on it (the
    # consumer may finish; if its lease runs out, it goes then).
    "ttl_bury": f"""
        INSERT INTO $dlq ({DEAD_COLUMNS})
        SELECT id, payload, encoding, checksum, priority, attempts, max_attempts,
               'expired: its time to live ran out before it was completed',
               created_at, :now, :now, group_key, prior_attempts, signature
          FROM $q
         WHERE expires_at <= :now AND (status <> 'processing' OR lease_expires_at <= :now)""",
    # Delete the messages past their time to live (once buried, or when dropped).
    "ttl_delete": """
        DELETE FROM $q
         WHERE expires_at <= :now AND (status <> 'processing' OR lease_expires_at <= :now)""",
    # Dead-letter the messages whose lease ran out on their last attempt.
    "lease_bury": f"""
        INSERT INTO $dlq ({DEAD_COLUMNS})
        SELECT id, payload, encoding, checksum, priority, attempts, max_attempts,
               'lease expired on the last attempt (' || attempts || ' of ' || max_attempts
                   || ') without being completed',
               created_at, :now, :now, group_key, prior_attempts, signature
          FROM $q
         WHERE status = 'processing' AND lease_expires_at <= :now
           AND attempts >= max_attempts""",
    # Delete those messages from the queue table, once buried.
    "lease_delete_dead": """
        DELETE FROM $q
         WHERE status = 'processing' AND lease_expires_at <= :now
           AND attempts >= max_attempts""",
    # A lease that started in the future was taken before the clock was stepped back: it
    # starts again now, for the time it had (bounded by the longest lease), so a crashed
    # consumer's message comes back within one lease instead of the size of the step.
    "reanchor_leases": """
        UPDATE $q
           SET lease_expires_at = :now + min(max(lease_expires_at - updated_at, 0), :longest),
               updated_at = :now
         WHERE status = 'processing' AND updated_at > :now""",
    # The message becomes visible again from the moment its lease ran out.
    "lease_return": """
        UPDATE $q
           SET status = 'pending', visible_at = lease_expires_at, lease_token = NULL,
               lease_expires_at = NULL, updated_at = :now,
               last_error = 'lease expired on attempt ' || attempts || ' of ' || max_attempts
         WHERE status = 'processing' AND lease_expires_at <= :now""",
    # Delete a message under a live lease (the caller's, when a token is given).
    "complete": f"DELETE FROM $q WHERE id = :id AND {_LIVE}",
    # A completed message kept as history, with the result its consumer gave (or NULL).
    "keep_done": f"""
        INSERT INTO $done ({DONE_COLUMNS})
        SELECT id, payload, encoding, checksum, priority, attempts, created_at, :now, group_key,
               :result, signature
          FROM $q WHERE id = :id AND {_LIVE}""",
    # Give a leased message back: visible after :delay, its attempt refunded if asked.
    "release": f"""
        UPDATE $q
           SET status = 'pending', visible_at = :now + :delay, lease_token = NULL,
               lease_expires_at = NULL, attempts = max(attempts - :refund, 0),
               last_error = coalesce(:error, last_error), updated_at = :now
         WHERE id = :id AND {_LIVE}""",
    # Move a live lease's expiry to lease seconds from now.
    "extend": f"""
        UPDATE $q SET lease_expires_at = :now + :lease, updated_at = :now
         WHERE id = :id AND {_LIVE}
        RETURNING lease_expires_at""",
    # Move every live lease of the (id, token) rows {pairs} to lease seconds from now.
    "extend_many": """
        WITH wanted (id, token) AS (VALUES {pairs})
        UPDATE $q SET lease_expires_at = :now + :lease, updated_at = :now
          FROM wanted
         WHERE $q.id = wanted.id AND status = 'processing' AND lease_expires_at > :now
           AND (wanted.token IS NULL OR lease_token = wanted.token)
        RETURNING id, lease_token, lease_expires_at""",
    # The attempt count of a message under a live lease (the caller's, when a token is given).
    "attempts_if_live": f"SELECT attempts, max_attempts FROM $q WHERE id = :id AND {_LIVE}",
    # The status and lease token of one message.
    "state": "SELECT status, lease_token FROM $q WHERE id = :id",
    # Whether a message is in the dead-letter table.
    "in_dlq": "SELECT 1 FROM $dlq WHERE id = :id",
    # Copy one message into the dead-letter table, with its error and the time it died.
    "bury": f"""
        INSERT INTO $dlq ({DEAD_COLUMNS})
        SELECT id, payload, encoding, checksum, priority, attempts, max_attempts,
               coalesce(:error, last_error), created_at, :now, :now, group_key, prior_attempts,
               signature
          FROM $q WHERE id = :id""",
    # Delete one message by id, whatever its state.
    "delete": "DELETE FROM $q WHERE id = :id",
    # Back from the dead letters with the same id and a fresh set of attempts; the
    # attempts it used are kept in prior_attempts, its last error stays.
    "revive": f"""
        INSERT INTO $q (id, payload, encoding, checksum, status, priority, visible_at,
                        attempts, max_attempts, last_error, created_at, updated_at,
                        group_key, prior_attempts, signature)
        SELECT id, payload, encoding, checksum,
               {_FIRST_STATUS.replace(":group_key", "d.group_key")},
               priority, :now, 0, max_attempts, last_error, created_at, :now, group_key,
               prior_attempts + attempts, signature
          FROM $dlq AS d WHERE id = :id""",
    # Delete one dead letter by id.
    "delete_dead": "DELETE FROM $dlq WHERE id = :id",
    # The group of a dead letter, to put it back behind its group's messages.
    "dead_group": "SELECT group_key FROM $dlq WHERE id = :id",
    # Whether a queue is registered.
    "queue_exists": "SELECT 1 FROM sqqueue_queues WHERE name = :name",
    # A page of dead letter ids, in id order.
    "dead_ids": "SELECT id FROM $dlq WHERE id > :after ORDER BY id LIMIT :limit",
    # The message a claim would take next, without leasing it.
    "peek": f"""
        SELECT {READ_COLUMNS} FROM $q
         WHERE status = 'pending' AND {_READY}
           AND (expires_at IS NULL OR expires_at > :now)
         ORDER BY priority DESC, visible_at, id
         LIMIT 1""",
    # An expired lease the next claim would fold back (not one on its last attempt).
    "peek_expired": f"""
        SELECT {READ_COLUMNS} FROM $q
         WHERE status = 'processing' AND lease_expires_at <= :now
           AND attempts < max_attempts AND (expires_at IS NULL OR expires_at > :now)
         ORDER BY priority DESC, lease_expires_at, id
         LIMIT 1""",
    # Whether the queue holds no message at all (dead letters and history aside).
    "is_drained": "SELECT NOT EXISTS (SELECT 1 FROM $q)",
    # Ready, delayed and waiting messages (the depth less those processing): the size gauge.
    "count_unleased": f"SELECT {_DEPTH} - {_PROCESSING}",
    # Add :n to one counter.
    "bump": "UPDATE sqqueue_counters SET n = n + :n WHERE name = :counter",
    # For DDL applied by hand: what opening a new queue does after creating its tables.
    "register": f"""
        INSERT INTO sqqueue_queues (name, schema_version, created_at)
        VALUES ($lit, {SCHEMA_VERSION}, (julianday('now') - 2440587.5) * 86400.0)""",
    # Create the queue's counters, once.
    "make_counters": f"""
        INSERT OR IGNORE INTO sqqueue_counters (name, n)
        VALUES {", ".join(f"('$name#{c}', 0)" for c in COUNTERS)}""",
    # Exact counts from the rows (when a queue is created or migrated); fresh becomes 0.
    "recount": f"""
        UPDATE sqqueue_counters
           SET n = CASE name
                WHEN $c_depth THEN (SELECT count(*) FROM $q)
                WHEN $c_dead THEN (SELECT count(*) FROM $dlq)
                ELSE {_HIGHEST} END
         WHERE name IN ($c_depth, $c_dead, $c_base)""",
    # Start the enqueued total from the messages already there.
    "seed_totals": f"""
        UPDATE sqqueue_counters
           SET n = {_counter("depth")} + {_counter("dead")}
         WHERE name = $c_enqueued""",
    # pending (incl. delayed and waiting), processing, dead, then the totals in the order
    # of COUNTERS, then the queue's creation time.
    "counters": f"""
        SELECT {_DEPTH} - {_PROCESSING}, {_PROCESSING}, {_counter("dead")},
               {_counter("enqueued")} + {_FRESH},
               {", ".join(_counter(c) for c in COUNTERS[3:8])},
               (SELECT created_at FROM sqqueue_queues WHERE name = $lit)""",
    # Per priority level, seek into the ready index: pending rows not yet visible, and
    # the oldest visible one. Costs a few seeks per level plus one step per delayed row.
    # (The age, not the time, of the oldest: a message ready since before a clock step
    # back counts as just ready.)
    "delayed_and_oldest": f"""
        WITH RECURSIVE levels(p) AS (
            SELECT max(priority) FROM $q WHERE status = 'pending'
            UNION ALL
            SELECT (SELECT max(priority) FROM $q WHERE status = 'pending' AND priority < levels.p)
              FROM levels WHERE levels.p IS NOT NULL
        )
        SELECT coalesce(sum((SELECT count(*) FROM $q WHERE status = 'pending'
                              AND priority = levels.p AND {_DELAYED})), 0),
               max(:now - min((SELECT min(visible_at) FROM $q WHERE status = 'pending'
                                AND priority = levels.p AND {_READY}
                                AND (expires_at IS NULL OR expires_at > :now))), 0)
          FROM levels WHERE levels.p IS NOT NULL""",
    # Only grouped messages wait: counted through the group index, not the whole table.
    "waiting": """
        SELECT count(*) FROM $q WHERE group_key IS NOT NULL AND status = 'waiting'""",
    # Live leases that run out within the horizon; leases already run out (which the next
    # claim folds back), and of those: how many were on their last attempt, within their
    # time to live (dead then), how many are past their time to live (taken out then, as
    # "past_ttl" says), and how long ago the first of the rest ran out (ready since).
    "leases": """
        SELECT coalesce(sum(lease_expires_at > :now), 0),
               coalesce(sum(lease_expires_at <= :now), 0),
               coalesce(sum(lease_expires_at <= :now AND attempts >= max_attempts
                            AND (expires_at IS NULL OR expires_at > :now)), 0),
               coalesce(sum(lease_expires_at <= :now AND expires_at <= :now), 0),
               :now - min(CASE WHEN lease_expires_at <= :now AND attempts < max_attempts
                                AND (expires_at IS NULL OR expires_at > :now)
                               THEN lease_expires_at END)
          FROM $q WHERE status = 'processing' AND lease_expires_at <= :now + :horizon""",
    # Messages past their time to live that no lease holds, which the next claim takes
    # out (see "ttl_delete"): how many, and how many of those are delayed and waiting.
    # Served by the expiry index: one step per such message.
    "past_ttl": f"""
        SELECT count(*), coalesce(sum(status = 'pending' AND {_DELAYED}), 0),
               coalesce(sum(status = 'waiting' AND group_key IS NOT NULL), 0)
          FROM $q WHERE expires_at <= :now AND status <> 'processing'""",
    # Seconds until the earliest visible_at among pending rows, read from the ready index
    # one priority level at a time (a skip-scan: a few index seeks per level, whatever the
    # depth), or the first lease or time to live to run out.
    "next_due": """
        WITH RECURSIVE levels(p) AS (
            SELECT max(priority) FROM $q WHERE status = 'pending'
            UNION ALL
            SELECT (SELECT max(priority) FROM $q WHERE status = 'pending' AND priority < levels.p)
              FROM levels WHERE levels.p IS NOT NULL
        )
        SELECT min(t) - :now FROM (  -- aggregate min() skips NULLs
            SELECT (SELECT min(visible_at) FROM $q
                     WHERE status = 'pending' AND priority = levels.p) AS t
              FROM levels WHERE levels.p IS NOT NULL
            UNION ALL
            SELECT min(lease_expires_at) FROM $q WHERE status = 'processing'
            UNION ALL
            SELECT min(expires_at) FROM $q WHERE expires_at IS NOT NULL)""",
    # Every dead letter, in the order they died (0.1.0's get_dead_letters).
    "dead_letters": f"SELECT {READ_DEAD_COLUMNS} FROM $dlq ORDER BY dead_at, id",
    # A page of ready messages, by id.
    "list_ready": f"""SELECT {READ_COLUMNS} FROM $q WHERE status = 'pending' AND {_READY}
                      AND id > :after ORDER BY id LIMIT :limit""",
    # Pending is ready and delayed together; each row says which.
    "list_pending": f"""SELECT {LIST_ALL_COLUMNS} FROM $q WHERE status = 'pending'
                        AND id > :after ORDER BY id LIMIT :limit""",
    # Delayed rows are the tail of each priority level of the ready index: seek there
    # level by level (as "delayed_and_oldest" does), then sort by id.
    "list_delayed": f"""
        WITH RECURSIVE levels(p) AS (
            SELECT max(priority) FROM $q WHERE status = 'pending'
            UNION ALL
            SELECT (SELECT max(priority) FROM $q WHERE status = 'pending' AND priority < levels.p)
              FROM levels WHERE levels.p IS NOT NULL
        )
        SELECT {READ_COLUMNS} FROM levels JOIN $q INDEXED BY $ix_ready
            ON status = 'pending' AND priority = levels.p AND visible_at > :now
               AND visible_at > updated_at
         WHERE id > :after ORDER BY id LIMIT :limit""",
    # Waiting and leased messages are read through their partial indexes (then sorted by
    # id): walking the table by id would pass every ready message of a deep queue.
    "list_waiting": f"""SELECT {READ_COLUMNS} FROM $q INDEXED BY $ix_group
                         WHERE group_key IS NOT NULL AND status = 'waiting'
                           AND id > :after ORDER BY id LIMIT :limit""",
    # A page of leased messages, by id.
    "list_processing": f"""SELECT {READ_COLUMNS} FROM $q INDEXED BY $ix_leases
                            WHERE status = 'processing' AND id > :after
                            ORDER BY id LIMIT :limit""",
    # One message by id, wherever it is: in the queue, among the dead letters, in history.
    "find": f"SELECT {LIST_ALL_COLUMNS} FROM $q WHERE id = :id",
    # One dead letter by id.
    "find_dead": f"SELECT {READ_DEAD_COLUMNS} FROM $dlq WHERE id = :id",
    # One kept completed message by id.
    "find_done": f"SELECT {READ_DONE_COLUMNS} FROM $done WHERE id = :id",
    # A page of messages in any live state, by id.
    "list_all": f"""SELECT {LIST_ALL_COLUMNS} FROM $q WHERE id > :after
                    ORDER BY id LIMIT :limit""",
    # A page of dead letters, by id.
    "list_dead": f"SELECT {READ_DEAD_COLUMNS} FROM $dlq WHERE id > :after ORDER BY id LIMIT :limit",
    # A page of kept completed messages, by id.
    "list_done": f"SELECT {READ_DONE_COLUMNS} FROM $done WHERE id > :after ORDER BY id LIMIT :limit",
    # :age: delete only messages created more than that many seconds ago (NULL: all).
    "purge_ready": f"""DELETE FROM $q WHERE status = 'pending' AND {_READY}
                         AND (:age IS NULL OR created_at < :now - :age)""",
    # Delete delayed messages (enqueued before :age, if given).
    "purge_delayed": f"""DELETE FROM $q WHERE status = 'pending' AND {_DELAYED}
                         AND (:age IS NULL OR created_at < :now - :age)""",
    # Delete messages waiting for their group (enqueued before :age, if given).
    "purge_waiting": """DELETE FROM $q WHERE status = 'waiting'
                        AND (:age IS NULL OR created_at < :now - :age)""",
    # Delete leased messages (enqueued before :age, if given).
    "purge_processing": """DELETE FROM $q WHERE status = 'processing'
                           AND (:age IS NULL OR created_at < :now - :age)""",
    # Delete dead letters (older than :age, if given).
    "purge_dead": "DELETE FROM $dlq WHERE :age IS NULL OR dead_at < :now - :age",
    # Delete kept completed messages (older than :age, if given).
    "purge_done": "DELETE FROM $done WHERE :age IS NULL OR completed_at < :now - :age",
    # Retention and dedup upkeep, a bounded number of rows per round.
    "prune_done_age": """
        DELETE FROM $done WHERE id IN (SELECT id FROM $done WHERE completed_at < :now - :age
                                        ORDER BY completed_at LIMIT :batch)""",
    # Delete the oldest kept completed messages past retention_max, a batch at a time.
    "prune_done_count": """
        DELETE FROM $done WHERE id IN (SELECT id FROM $done ORDER BY completed_at
                                        LIMIT min(:batch, max((SELECT count(*) FROM $done)
                                                              - :keep, 0)))""",
    # Forget dedup keys past their window, or whose message is gone.
    "prune_dedup": """
        DELETE FROM $dedup WHERE key IN (
            SELECT key FROM $dedup
             WHERE (expires_at IS NOT NULL AND expires_at <= :now)
                OR (expires_at IS NULL AND NOT EXISTS (SELECT 1 FROM $q WHERE id = message_id)
                    AND NOT EXISTS (SELECT 1 FROM $dlq WHERE id = message_id))
             LIMIT :batch)""",
}

# sqqueue 0.1.0 stored times as 'YYYY-MM-DD HH:MM:SS[.ffffff]' in UTC, read by a function
# the migration registers (sqlite.legacy_time): to the microsecond, where julianday()
# rounds to milliseconds and strftime('%s') carries a rounded fraction into the seconds.
LEGACY_TIME = "sqqueue_legacy_time"
LEGACY_EPOCH = LEGACY_TIME + "({col})"
_E = LEGACY_EPOCH.format
# 0.1.0 kept bytes payloads as BLOBs (and gave them back as bytes), any other as text.
_LEGACY_PAYLOAD = (
    "CASE WHEN typeof(payload) = 'blob' THEN payload ELSE CAST(payload AS TEXT) END, "
    "CASE WHEN typeof(payload) = 'blob' THEN 'bytes' ELSE 'text' END"
)
# From schema version 1: inserts are no longer counted by a trigger (the code that
# inserts rows with ids of their own counts them instead, as version 1's trigger did).
UPGRADE_FROM_1 = ('DROP TRIGGER IF EXISTS "${name}_count_insert"',)
# From schema version 2: completed messages kept as history can carry a result. Run only
# when the column is missing (DDL applied by hand registered version 1 with it already).
UPGRADE_FROM_2 = ("ALTER TABLE $old_done ADD COLUMN result TEXT",)
# From schema version 3: the ready index also holds updated_at, which tells a message
# without a delay from a delayed one without reading its row (see _READY). (The index
# still has its name of before version 5 then.)
UPGRADE_FROM_3 = (
    "DROP INDEX IF EXISTS $old_ix_ready",
    READY_INDEX.replace("$ix_ready", "$old_ix_ready"),
)
# From schema version 4: internal objects named "q#..." (see the module's docstring), so
# that no valid queue name is taken by another queue's table or index. SQLite cannot
# rename an index or a trigger: they are dropped and made again (an index build, once).
UPGRADE_FROM_4 = (
    *(f"DROP TRIGGER IF EXISTS $old_{key}" for key in ("tr_delete", "tr_high", "tr_group")),
    *(f"DROP TRIGGER IF EXISTS $old_{key}" for key in ("tr_dlq_insert", "tr_dlq_delete")),
    *(f"DROP TRIGGER IF EXISTS $old_{key}" for key in ("tr_body_q", "tr_body_dlq", "tr_body_done")),
    *(f"DROP INDEX IF EXISTS $old_{key}" for key in ("ix_ready", "ix_leases", "ix_expiry")),
    *(f"DROP INDEX IF EXISTS $old_{key}" for key in ("ix_group", "ix_done")),
    *(f"ALTER TABLE $old_{key} RENAME TO ${key}" for key in ("done", "dedup", "body")),
    *INDEX_DDL,
    *TRIGGER_DDL,
)
# From schema version 5: the counter of the messages in the queue table is named for
# what it counts, the queue's depth (it was "queued"); the trigger that names it is made
# again.
UPGRADE_FROM_5 = (
    "UPDATE sqqueue_counters SET name = $c_depth WHERE name = '$name#queued'",
    "DROP TRIGGER IF EXISTS $tr_delete",
    DELETE_TRIGGER,
)
# From schema version 6: messages carry a signature (sqqueue.signing), in every table a
# message row lives in; rows of before stay unsigned (NULL).
UPGRADE_FROM_6 = tuple(
    f"ALTER TABLE ${table} ADD COLUMN signature TEXT" for table in ("q", "dlq", "done")
)
#: The statements that bring a queue from each older schema version to the next.
UPGRADES = {
    1: UPGRADE_FROM_1,
    2: UPGRADE_FROM_2,
    3: UPGRADE_FROM_3,
    4: UPGRADE_FROM_4,
    5: UPGRADE_FROM_5,
    6: UPGRADE_FROM_6,
}

# The columns that tell a table in sqqueue 0.1.0's layout (a queue not migrated yet).
LEGACY_COLUMNS = frozenset({"processing_at", "dlq", "visible_at", "status"})

# A 0.1.0 message that may still be tried (0.1.0 dead-lettered the others at dequeue).
_LEGACY_ATTEMPTS_LEFT = "coalesce(attempts, 0) < coalesce(max_attempts, :max_attempts)"
# A 0.1.0 table to this schema, in one transaction: its rows keep their ids.
LEGACY_MIGRATION = (
    "ALTER TABLE $q RENAME TO $legacy",
    *QUEUE_DDL,
    # pending and processing keep their state; processing_at was 0.1.0's lease expiry. A
    # pending message with no attempt left was dead to 0.1.0 (its next dequeue moved it).
    f"""
    INSERT INTO $q (id, payload, encoding, checksum, status, priority, visible_at,
                    lease_token, lease_expires_at, attempts, max_attempts, last_error,
                    created_at, updated_at)
    SELECT id, {_LEGACY_PAYLOAD}, NULL, status, coalesce(priority, 0),
           coalesce({_E(col="visible_at")}, {_E(col="created_at")}, :now),
           NULL,
           CASE WHEN status = 'processing'
                THEN coalesce({_E(col="processing_at")}, :now) END,
           coalesce(attempts, 0), coalesce(max_attempts, :max_attempts), NULL,
           coalesce({_E(col="created_at")}, :now),
           coalesce({_E(col="updated_at")}, :now)
      FROM $legacy
     WHERE status = 'processing' OR (status = 'pending' AND {_LEGACY_ATTEMPTS_LEFT})""",
    # Any other status 0.1.0 might have left is kept, as a dead letter that says why.
    f"""
    INSERT INTO $dlq ({DEAD_COLUMNS})
    SELECT id, {_LEGACY_PAYLOAD}, NULL, coalesce(priority, 0),
           coalesce(attempts, 0), coalesce(max_attempts, :max_attempts),
           CASE WHEN status = 'pending'
                THEN 'migrated from sqqueue 0.1.0 with no attempt left ('
                     || coalesce(attempts, 0) || ' of '
                     || coalesce(max_attempts, :max_attempts) || ' used)'
                ELSE 'migrated from sqqueue 0.1.0 with status ' || quote(status) END,
           coalesce({_E(col="created_at")}, :now),
           coalesce({_E(col="updated_at")}, :now), coalesce({_E(col="updated_at")}, :now),
           NULL, 0, NULL
      FROM $legacy
     WHERE status NOT IN ('pending', 'processing')
        OR (status = 'pending' AND NOT {_LEGACY_ATTEMPTS_LEFT})""",
    "DROP TABLE $legacy",
)
# A 0.1.0 dead letter (from its own table) into the dead letters, with why it is there;
# it died when 0.1.0 last updated it (moving it there).
LEGACY_DEAD_INSERT = f"""
    INSERT INTO $dlq ({DEAD_COLUMNS})
    VALUES (:id, :payload, :encoding, NULL, :priority, 0, :max_attempts, :note,
            coalesce({_E(col=":created")}, :now), coalesce({_E(col=":updated")}, :now),
            coalesce({_E(col=":updated")}, :now), NULL, 0, NULL)"""


# The roles of a queue's objects and their names' suffixes. Names are "<queue>#<suffix>"
# from schema version 5 on (SEPARATED_NAMES); before, "<queue>_<suffix>". Dead letters
# keep "<queue>_dlq" (0.1.0's name; no queue name may end in "_dlq").
_NAMES = {
    "done": "done",
    "dedup": "dedup",
    "body": "body",
    "legacy": "v0",  # a 0.1.0 table while it is migrated
    "legacy_dlq": "dlq_v0",
    "ix_ready": "ready",
    "ix_leases": "leases",
    "ix_expiry": "expiry",
    "ix_group": "group",
    "ix_done": "done_at",
    "tr_delete": "count_delete",
    "tr_high": "highest_id",
    "tr_group": "group_next",
    "tr_dlq_insert": "dlq_count_insert",
    "tr_dlq_delete": "dlq_count_delete",
    "tr_body_q": "body_gc",
    "tr_body_dlq": "dlq_body_gc",
    "tr_body_done": "done_body_gc",
}


def object_names(name: str, version: int = SCHEMA_VERSION) -> dict[str, str]:
    """The names of queue ``name``'s tables, indexes and triggers in schema ``version``."""
    separator = "#" if version >= SEPARATED_NAMES else "_"
    names = {"q": name, "dlq": f"{name}_dlq"}
    names.update({key: f"{name}{separator}{suffix}" for key, suffix in _NAMES.items()})
    return names


# An index of INDEX_DDL: its name, its table and its condition, if partial.
_INDEX = re.compile(
    r"CREATE INDEX \$(?P<index>\w+) ON \$(?P<table>\w+) \([^)]*\)(?: WHERE (?P<where>.+))?"
)


def indexed_max_ids(name: str, version: int = SCHEMA_VERSION) -> list[str]:
    """For salvage: a statement for each index of queue ``name``'s tables (by the names
    of schema ``version``) that reads the largest id the index lists, from the index
    alone (its condition in the query lets SQLite use it without the table): where a
    table's own b-tree is damaged, its indexes may still tell how far its ids went."""
    names = object_names(name, version)
    found = []
    for ddl in INDEX_DDL:
        match = _INDEX.fullmatch(ddl)
        if match is not None:
            found.append(
                f'SELECT max(id) FROM "{names[match["table"]]}" '
                f'INDEXED BY "{names[match["index"]]}" WHERE {match["where"] or 1}'
            )
    return found


class Rendered:
    """The statements of one queue, ready to execute.

    ``version``: the schema version whose names to use (an older queue can be read as it
    is, without upgrading it, by a read-only queue object).
    """

    def __init__(self, name: str, version: int = SCHEMA_VERSION) -> None:
        names = object_names(name, version)
        # Names are validated identifiers (letters, digits, underscores) plus '#': quoting
        # them as they are is safe, and the literal needs no escaping either.
        self.subst = {key: f'"{value}"' for key, value in names.items()}
        self.subst.update(
            {f"old_{key}": f'"{value}"' for key, value in object_names(name, OLD_NAMES).items()}
        )
        self.subst["lit"] = f"'{name}'"
        self.subst["name"] = name
        self.subst["signature"] = "signature" if version >= SIGNED else "NULL"
        for counter in COUNTERS:
            self.subst[f"c_{counter}"] = f"'{name}#{counter}'"
        self.tables = names
        self.sql = {key: self.fill(sql) for key, sql in STATEMENTS.items()}
        self.ddl = [self.fill(sql) for sql in QUEUE_DDL]
        self.migration = [self.fill(sql) for sql in LEGACY_MIGRATION]
        self.upgrades = {v: [self.fill(sql) for sql in steps] for v, steps in UPGRADES.items()}
        self.legacy_dead_insert = self.fill(LEGACY_DEAD_INSERT)
        self._complete_sets: dict[int, str] = {}
        self._extend_sets: dict[int, str] = {}

    def fill(self, sql: str) -> str:
        return Template(sql).substitute(self.subst)

    def complete_set(self, count: int) -> str:
        """Delete ``count`` messages (ids, then now and the one lease token, as ``?``) if
        they are all held with that token; one statement for a batch claimed together."""
        statement = self._complete_sets.get(count)
        if statement is None:
            marks = ", ".join("?" * count)
            statement = self._complete_sets[count] = self.fill(
                f"DELETE FROM $q WHERE id IN ({marks}) AND status = 'processing'"
                f" AND lease_expires_at > ?{count + 1} AND lease_token = ?{count + 2}"
            )
        return statement

    def extend_set(self, count: int) -> str:
        """extend_many for ``count`` messages, with the parameters ``:id0, :token0, ...``
        (and ``:now``, ``:lease``)."""
        statement = self._extend_sets.get(count)
        if statement is None:
            pairs = ", ".join(f"(:id{i}, :token{i})" for i in range(count))
            statement = self._extend_sets[count] = self.sql["extend_many"].format(pairs=pairs)
        return statement


# Redrive into another queue of the same file: a new id there, the history kept.
_REDRIVE_INTO = f"""
    INSERT INTO $q (id, payload, encoding, checksum, status, priority, visible_at, attempts,
                    max_attempts, last_error, created_at, updated_at, group_key,
                    prior_attempts, signature)
    SELECT {_NEXT_ID}, payload, encoding, checksum, 'pending', priority, :now, 0, max_attempts,
           last_error, created_at, :now, NULL, prior_attempts + attempts, signature
      FROM $src WHERE id = :id"""


def redrive_into(target: Rendered, source: Rendered) -> str:
    """The statement moving one dead letter of ``source`` into queue ``target``."""
    return Template(_REDRIVE_INTO).substitute({**target.subst, "src": source.subst["dlq"]})


def schema_script(rendered: Rendered) -> list[str]:
    """Every statement that creates and registers a queue, in order."""
    statements = [
        *REGISTRY_DDL,
        *rendered.ddl,
        rendered.sql["make_counters"],
        rendered.sql["register"],
    ]
    return [s.strip() for s in statements]


# -- copying a queue's rows (copy between databases, salvage) ---------------------------
#: The tables a copy moves, in order: (the template key of the table, the column it is
#: read in order of). Their columns are read from the database itself, so a column added
#: to the schema is copied without being listed again anywhere.
COPY_TABLES = {
    "messages": ("q", "id"),
    "dead": ("dlq", "id"),
    "done": ("done", "id"),
    "dedup": ("dedup", "key"),
}


def columns_sql(rendered: Rendered, table: str) -> str:
    """No rows, only the column names of one of COPY_TABLES (in the cursor's description)."""
    return f"SELECT * FROM {rendered.subst[COPY_TABLES[table][0]]} LIMIT 0"


def export_sql(rendered: Rendered, table: str, columns: Sequence[str], exact: bool = False) -> str:
    """A page of one of COPY_TABLES, every column (the payload as bytes, then whether it
    was text), in the order of its key, after :after (``exact``: the row whose key is
    :after, found by a direct lookup)."""
    key_table, key = COPY_TABLES[table]
    listed = ", ".join(_PAYLOAD if c == "payload" else f'"{c}"' for c in columns)
    found = f'"{key}" = :after' if exact else f'"{key}" > :after ORDER BY "{key}"'
    return f"SELECT {listed} FROM {rendered.subst[key_table]} WHERE {found} LIMIT :limit"


def import_sql(rendered: Rendered, table: str, columns: tuple[str, ...]) -> str:
    """Insert one copied row (named parameters, one per column) into one of COPY_TABLES."""
    return _insert_into(rendered.subst[COPY_TABLES[table][0]], columns)


@functools.lru_cache(maxsize=64)  # asked once per row copied, mostly with the same columns
def _insert_into(target: str, columns: tuple[str, ...]) -> str:
    names = ", ".join(f'"{c}"' for c in columns)
    values = ", ".join(f":{c}" for c in columns)
    return f"INSERT INTO {target} ({names}) VALUES ({values})"


def render(name: str, version: int = SCHEMA_VERSION) -> Rendered:
    """Statements for the queue ``name`` (which must already be validated), with the
    object names of schema ``version``."""
    return Rendered(name, version)


# -- Statements on the file and its connections, not on one queue ------------------------
# Each with what it does; ``{name}`` fields are filled with str.format by the caller.

#: a number that changes when another connection commits (the watcher's poll)
DATA_VERSION = "PRAGMA data_version"
#: how long a statement waits for a lock before SQLITE_BUSY, in milliseconds
BUSY_TIMEOUT = "PRAGMA busy_timeout = {ms}"
#: the durability of commits: NORMAL or FULL
SYNCHRONOUS = "PRAGMA synchronous = {mode}"
#: the size, in bytes, the WAL is truncated to after a checkpoint
JOURNAL_SIZE_LIMIT = "PRAGMA journal_size_limit = {size}"
#: open a transaction that takes locks when it first reads or writes
BEGIN = "BEGIN"
#: open a transaction holding the write lock at once
BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"
#: open a transaction that keeps readers out too
BEGIN_EXCLUSIVE = "BEGIN EXCLUSIVE"
#: end a transaction, keeping its writes
COMMIT = "COMMIT"
#: end a transaction, undoing its writes
ROLLBACK = "ROLLBACK"
#: free pages are kept for incremental_vacuum to give back (set before the first table)
AUTO_VACUUM_INCREMENTAL = "PRAGMA auto_vacuum = INCREMENTAL"
#: write-ahead logging: readers do not block the writer; returns the mode in force
JOURNAL_MODE_WAL = "PRAGMA journal_mode = WAL"
#: the schema version of one registered queue
SCHEMA_VERSION_OF = "SELECT schema_version FROM sqqueue_queues WHERE name = ?"
#: register a queue with its schema version and creation time
REGISTER_QUEUE = "INSERT INTO sqqueue_queues (name, schema_version, created_at) VALUES (?, ?, ?)"
#: record that a queue was upgraded to a schema version
SET_SCHEMA_VERSION = "UPDATE sqqueue_queues SET schema_version = ? WHERE name = ?"
#: whether the file has the registry of queues
HAS_REGISTRY = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqqueue_queues'"
#: every registered queue with its schema version
REGISTERED_VERSIONS = "SELECT name, schema_version FROM sqqueue_queues"
#: every registered queue with its schema version, by name
REGISTERED_BY_NAME = "SELECT name, schema_version FROM sqqueue_queues ORDER BY name"
#: the names of the registered queues
REGISTERED_NAMES = "SELECT name FROM sqqueue_queues"
#: tables, indexes and triggers whose name differs from this one only in case
CLASHING_OBJECTS = "SELECT type, name FROM sqlite_master WHERE lower(name) = lower(?) AND name <> ?"
#: registered queues whose name differs from this one only in case
CLASHING_QUEUES = "SELECT name FROM sqqueue_queues WHERE lower(name) = lower(?) AND name <> ?"
#: the columns of a table (column 1 is the name)
TABLE_COLUMNS = "SELECT * FROM pragma_table_info(?)"
#: the names of the file's tables
TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"
#: rename a table (0.1.0's dead-letter table, set aside while it is migrated)
RENAME_TABLE = 'ALTER TABLE "{old}" RENAME TO "{new}"'
#: the last id sqqueue 0.1.0 handed out for a queue
LEGACY_SEQUENCE = "SELECT seq FROM sqlite_sequence WHERE name = ?"
#: the rows of 0.1.0's dead-letter table, to migrate them
LEGACY_ROWS = "SELECT id, payload, priority, created_at, updated_at FROM {table} ORDER BY id"
#: whether an id is taken by a message or a dead letter (while migrating)
ID_TAKEN = "SELECT 1 FROM {q} WHERE id = ? UNION ALL SELECT 1 FROM {dlq} WHERE id = ?"
#: drop a table (0.1.0's, once migrated)
DROP_TABLE = "DROP TABLE {table}"
#: the files attached to a connection (column 2 is the path)
DATABASE_LIST = "PRAGMA database_list"
#: pages on the free list, which incremental_vacuum can give back
FREELIST_COUNT = "PRAGMA freelist_count"
#: the file's size in pages
PAGE_COUNT = "PRAGMA page_count"
#: give up to this many free pages back to the filesystem
INCREMENTAL_VACUUM = "PRAGMA incremental_vacuum({pages});"
#: copy the WAL into the file as far as readers allow, without waiting
CHECKPOINT_PASSIVE = "PRAGMA wal_checkpoint(PASSIVE)"
#: copy the WAL into the file and truncate it, waiting for readers
CHECKPOINT_TRUNCATE = "PRAGMA wal_checkpoint(TRUNCATE)"
#: rebuild the file, giving all free space back
VACUUM = "VACUUM"
#: check the whole file; "ok" when sound
INTEGRITY_CHECK = "PRAGMA integrity_check"
#: check one table and its indexes; "ok" when sound
TABLE_INTEGRITY_CHECK = 'PRAGMA integrity_check("{table}")'
#: check the structure of the whole file (its b-trees, not that indexes match their
#: tables): faster than the integrity check; "ok" when sound
QUICK_CHECK = "PRAGMA quick_check"
#: the highest id of a table (salvage: ids stay unique)
MAX_ID_OF = 'SELECT max(id) FROM "{table}"'
#: one counter's value
COUNTER_VALUE = "SELECT n FROM sqqueue_counters WHERE name = ?"

# -- SQLCipher: keying connections, and copying between plain and encrypted files ---------
# (sqqueue.encryption; ``{name}`` fields are filled with str.format by the caller.)

#: key a connection: the first statement on it ({key}: a quoted passphrase or x'...' blob)
CIPHER_KEY = "PRAGMA key = {key}"
#: SQLCipher prints nothing on stderr: sqqueue reports a wrong key itself
CIPHER_QUIET = "PRAGMA cipher_log_level = NONE"
#: read the schema: how many objects it holds (0: a new file); on an encrypted file the
#: first read, which fails with "not a database" on a wrong key
READ_SCHEMA = "SELECT count(*) FROM sqlite_master"
#: the database's own tables, by name
USER_TABLES = (
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
)
#: the rows of one table
ROW_COUNT = 'SELECT count(*) FROM "{table}"'
#: attach the copy's file under the name "target", with its own key ('' for a plain file)
ATTACH_TARGET = "ATTACH DATABASE ? AS target KEY {key}"
#: copy every table, index and trigger of the main database into "target"
EXPORT_TO_TARGET = "SELECT sqlcipher_export('target')"
#: the main database's user_version (sqqueue's file layout marker)
MAIN_USER_VERSION = "PRAGMA main.user_version"
#: give "target" the same user_version
SET_TARGET_USER_VERSION = "PRAGMA target.user_version = {version}"
#: let go of "target"
DETACH_TARGET = "DETACH DATABASE target"
#: a quick structural check of the whole file
QUICK_CHECK = "PRAGMA quick_check"
#: keep every lock the connection takes until it closes (rekey's hold on the file)
LOCKING_MODE_EXCLUSIVE = "PRAGMA main.locking_mode = EXCLUSIVE"
#: leave WAL mode: copies the WAL in and removes -wal and -shm (needs the file alone)
JOURNAL_MODE_DELETE = "PRAGMA main.journal_mode = DELETE"
