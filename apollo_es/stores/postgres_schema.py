"""The PostgreSQL schema: the same tables, triggers and audit view names as SQLite's.

Text ids use the "C" collation so `streams()` orders as SQLite does (bytewise). Payloads are
`text`, the exact bytes that were hashed. The audit views have SQLite's names and columns, so
a `psql` query gives what `sqlite-utils` gives over the SQLite file: `timeline` reads payloads
as `json` (`jsonb` would reorder keys and change its `summary`), `tool_calls`,
`interventions` and `verdicts` as `jsonb`.

`log_head` is one row: the last position and hash. Appends update it inside their
transaction, which makes positions gapless and in commit order (see `postgres.py`).

A writer role for hosts that should not be able to get around the triggers:
    CREATE ROLE apollo_writer LOGIN;
    GRANT SELECT, INSERT ON events, streams TO apollo_writer;
    GRANT SELECT, INSERT, UPDATE, DELETE ON leases, projection_checkpoints TO apollo_writer;
    GRANT SELECT, UPDATE ON log_head TO apollo_writer;  -- no DELETE, no TRUNCATE anywhere
    GRANT SELECT ON meta, lineage, timeline, tool_calls, interventions, verdicts TO apollo_writer;
and the tables owned by another role (only an owner or superuser can disable triggers); in a
schema other than `public`, also `GRANT USAGE ON SCHEMA name TO apollo_writer`. The owner
opens the store once first (it creates the schema; the role has no CREATE privilege). No
UPDATE on `events` or `streams` is needed: appends serialize per stream with an advisory
lock, not `SELECT ... FOR UPDATE` (which PostgreSQL allows only to roles that may update).
"""

import hashlib

from apollo_es.schema import STORE_FORMAT
from apollo_es.stores.base import COLUMNS

__all__ = ["CHANNEL", "PG_SCHEMA_SQL", "SCHEMA_DIGEST", "STORE_FORMAT"]

# Appends NOTIFY here with "SCHEMA POSITION" (the schema the store lives in, the last position
# appended); channels are per database, so the schema tells stores in one database apart.
CHANNEL = "apollo_es_log"

_TEXT = 'text COLLATE "C"'

_TABLES = [
    "CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)",
    f"""
    CREATE TABLE IF NOT EXISTS streams (
        stream_id {_TEXT} PRIMARY KEY,
        parent_id {_TEXT} REFERENCES streams (stream_id),
        fork_version bigint,
        created_at {_TEXT} NOT NULL,
        CHECK ((parent_id IS NULL) = (fork_version IS NULL))
    )
    """,
    "CREATE INDEX IF NOT EXISTS streams_parent ON streams (parent_id)",
    f"""
    CREATE TABLE IF NOT EXISTS events (
        position bigint PRIMARY KEY,
        stream_id {_TEXT} NOT NULL REFERENCES streams (stream_id),
        version bigint NOT NULL,
        event_id {_TEXT} NOT NULL UNIQUE,
        kind {_TEXT} NOT NULL,
        schema integer NOT NULL,
        recorded_at {_TEXT} NOT NULL,
        actor {_TEXT} NOT NULL,
        causation_id {_TEXT},
        payload text NOT NULL,
        prev_hash text NOT NULL,
        hash text NOT NULL,
        UNIQUE (stream_id, version)
    )
    """,
    "CREATE INDEX IF NOT EXISTS events_causation ON events (causation_id) WHERE causation_id IS NOT NULL",
    """
    CREATE TABLE IF NOT EXISTS log_head (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        position bigint NOT NULL,
        hash text NOT NULL
    )
    """,
    f"INSERT INTO log_head (one, position, hash) VALUES (true, 0, '{'0' * 64}') ON CONFLICT DO NOTHING",
    f"CREATE TABLE IF NOT EXISTS leases (stream_id {_TEXT} PRIMARY KEY, holder text NOT NULL,"
    " expires_at double precision NOT NULL)",
    "CREATE TABLE IF NOT EXISTS projection_checkpoints (name text PRIMARY KEY, position bigint NOT NULL,"
    " fingerprint text NOT NULL, updated_at text NOT NULL)",
]

_TRIGGERS = [
    """
    CREATE OR REPLACE FUNCTION apollo_es_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% are append-only: % is not allowed', TG_TABLE_NAME, TG_OP;
    END $$
    """,
    *(
        f"CREATE OR REPLACE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table}"
        " FOR EACH STATEMENT EXECUTE FUNCTION apollo_es_refuse()"
        for table in ("events", "streams")
    ),
]

# The SQLite view's summary, in PostgreSQL's dialect (p is the payload as json).
_SUMMARY = """
    CASE e.kind
        WHEN 'RunStarted' THEN 'task ' || (p->>'task_id') || ': ' || substr(replace(p->>'task', chr(10), ' '), 1, 100)
        WHEN 'AgentActed' THEN coalesce(
            (SELECT string_agg((c->>'name') || '(' || substr(replace(c->>'arguments', chr(10), ' '), 1, 80) || ')', ' ' ORDER BY n)
             FROM json_array_elements(p->'tool_calls') WITH ORDINALITY AS t (c, n)),
            '') || CASE WHEN p->>'text' <> '' THEN ' "' || substr(replace(p->>'text', chr(10), ' '), 1, 80) || '"' ELSE '' END
        WHEN 'ToolObserved' THEN
            CASE WHEN (p->>'is_error')::boolean THEN 'ERROR ' ELSE '' END
            || coalesce('exit ' || (p->>'exit_code') || ': ', '')
            || substr(replace(p->>'output', chr(10), ' '), 1, 100)
        WHEN 'HumanIntervened' THEN (p->>'kind') || ' from ' || (p->>'annotator') || ': '
            || substr(replace(p->>'message', chr(10), ' '), 1, 100)
        WHEN 'ContextSummarized' THEN 'summary of v' || (p->>'replaces_from') || '..v' || (p->>'replaces_to')
            || ' (' || (p->>'tokens_before') || ' -> ' || (p->>'tokens_after') || ' tokens)'
        WHEN 'ActionJudged' THEN (p->>'verdict') || ' ' || coalesce(p->>'score', '') || ' by '
            || (p->>'judge_id') || ': ' || substr(p->>'reason', 1, 80)
        WHEN 'BranchCreated' THEN 'branch of ' || (p->>'parent_stream') || ' at v' || (p->>'fork_version')
            || CASE WHEN p->>'reason' <> '' THEN ': ' || (p->>'reason') ELSE '' END
        WHEN 'RunReconfigured' THEN 'settings changed'
            || CASE WHEN p->>'reason' <> '' THEN ': ' || (p->>'reason') ELSE '' END
        WHEN 'RunFinished' THEN (p->>'status')
            || CASE WHEN p->>'final_answer' <> ''
                THEN ': ' || substr(replace(p->>'final_answer', chr(10), ' '), 1, 100) ELSE '' END
        ELSE ''
    END
"""

_VIEWS = [
    """
    CREATE OR REPLACE VIEW lineage AS
    WITH RECURSIVE chain (run_id, source_id, up_to) AS (
        SELECT stream_id, stream_id, NULL::bigint FROM streams
        UNION ALL
        SELECT chain.run_id, s.parent_id, least(coalesce(chain.up_to, s.fork_version), s.fork_version)
        FROM chain JOIN streams s ON s.stream_id = chain.source_id
        WHERE s.parent_id IS NOT NULL
    )
    SELECT run_id, source_id, up_to FROM chain
    """,
    f"""
    CREATE OR REPLACE VIEW timeline AS
    SELECT l.run_id, e.version, e.kind, e.actor, e.recorded_at,
           {_SUMMARY} AS summary,
           e.stream_id, e.position, e.event_id, e.causation_id, e.payload
    FROM lineage l
    JOIN events e ON e.stream_id = l.source_id AND (l.up_to IS NULL OR e.version <= l.up_to)
    CROSS JOIN LATERAL (SELECT e.payload::json AS p) AS j
    """,
    # The auditors' views of SQLite's schema, same names and columns, over jsonb (p); values
    # typed as SQLite's json_extract gives them (numbers as numbers, objects as JSON).
    """
    CREATE OR REPLACE VIEW tool_calls AS
    SELECT e.stream_id, e.version, e.position, e.event_id, e.recorded_at,
           c->>'id' AS call_id, c->>'name' AS tool, c->'arguments' AS arguments, p->>'model' AS model,
           (p->'usage'->>'input_tokens')::bigint AS input_tokens, (p->'usage'->>'output_tokens')::bigint AS output_tokens
    FROM events e CROSS JOIN LATERAL (SELECT e.payload::jsonb AS p) AS j
    CROSS JOIN LATERAL jsonb_array_elements(p->'tool_calls') AS c
    WHERE e.kind = 'AgentActed'
    """,
    """
    CREATE OR REPLACE VIEW interventions AS
    SELECT e.stream_id, e.version, e.position, e.recorded_at, e.actor,
           p->>'annotator' AS annotator, p->>'kind' AS kind, p->>'message' AS message,
           (p->>'seen_version')::bigint AS seen_version, p->>'target_event_id' AS target_event_id
    FROM events e CROSS JOIN LATERAL (SELECT e.payload::jsonb AS p) AS j
    WHERE e.kind = 'HumanIntervened'
    """,
    """
    CREATE OR REPLACE VIEW verdicts AS
    SELECT e.stream_id, a.version AS action_version, e.position, e.recorded_at,
           p->>'judge_id' AS judge_id, p->>'verdict' AS verdict, (p->>'score')::float8 AS score,
           p->>'reason' AS reason, p->>'target_event_id' AS target_event_id
    FROM events e CROSS JOIN LATERAL (SELECT e.payload::jsonb AS p) AS j
    LEFT JOIN events a ON a.event_id = p->>'target_event_id'
    WHERE e.kind = 'ActionJudged'
    """,
]

# The append itself, as one statement run in its own transaction (see `postgres.py`). It
# takes the stream's lock, checks that the stream's head is still the one the client
# validated against (else SQLSTATE AP001 with the actual head as DETAIL), then the log head's
# row lock, and hashes the rows under it: SHA-256 of the previous hash, "[" position "," and
# the rest of the envelope as the client encoded it (`tails`), a newline and the payload, the
# very bytes `stores.base.chain_hash` hashes. Both locks last until the statement's commit,
# which the server runs at once: no client round trip happens while the log head is held.
_APPEND_FUNCTION = f"""
    CREATE OR REPLACE FUNCTION apollo_es_append(
        p_stream text, p_head bigint, p_created_at text, p_event_ids text[], p_kinds text[],
        p_schemas int[], p_recorded_at text[], p_actors text[], p_causation_ids text[],
        p_payloads text[], p_tails text[]
    ) RETURNS TABLE (first_position bigint, first_prev_hash text, hashes text[]) LANGUAGE plpgsql AS $$
    DECLARE
        n int := cardinality(p_payloads);
        actual bigint;
        pos bigint;
        prev text;
        prevs text[] := '{{}}';
        digests text[] := '{{}}';
    BEGIN
        INSERT INTO streams (stream_id, parent_id, fork_version, created_at)
            VALUES (p_stream, NULL, NULL, p_created_at) ON CONFLICT DO NOTHING;
        -- Writers of one stream take turns here. The head is read by the next statement, which
        -- sees what the writer before committed (one statement's snapshot predates its waits).
        PERFORM pg_advisory_xact_lock(hashtextextended(current_schema() || '.' || p_stream, 0));
        SELECT coalesce((SELECT max(version) FROM events WHERE stream_id = s.stream_id), s.fork_version, 0)
            INTO actual FROM streams s WHERE s.stream_id = p_stream;
        IF actual <> p_head THEN
            RAISE EXCEPTION 'stream % moved on' , p_stream USING ERRCODE = 'AP001', DETAIL = actual::text;
        END IF;
        UPDATE log_head SET position = position + n RETURNING position - n, hash INTO pos, prev;
        FOR i IN 1..n LOOP
            prevs[i] := prev;
            prev := encode(sha256(convert_to(
                prev || '[' || (pos + i)::text || ',' || p_tails[i] || chr(10) || p_payloads[i], 'UTF8')), 'hex');
            digests[i] := prev;
        END LOOP;
        INSERT INTO events ({COLUMNS})
            SELECT pos + t.i, p_stream, p_head + t.i, t.event_id, t.kind, t.schema, t.recorded_at, t.actor,
                   t.causation_id, t.payload, prevs[t.i], digests[t.i]
            FROM unnest(p_event_ids, p_kinds, p_schemas, p_recorded_at, p_actors, p_causation_ids, p_payloads)
                WITH ORDINALITY AS t (event_id, kind, schema, recorded_at, actor, causation_id, payload, i);
        UPDATE log_head SET hash = prev;
        PERFORM pg_notify('{CHANNEL}', current_schema() || ' ' || (pos + n)::text);
        RETURN QUERY SELECT pos + 1, prevs[1], digests;
    END $$
"""

PG_SCHEMA_SQL: list[str] = _TABLES + _TRIGGERS + _VIEWS + [_APPEND_FUNCTION]
# Recorded in `meta` as `ddl`: a store whose schema is already this one skips the DDL on
# open, so a role without CREATE privileges (the writer role above) can open it.
SCHEMA_DIGEST = hashlib.sha256("\n".join(PG_SCHEMA_SQL).encode()).hexdigest()[:16]
