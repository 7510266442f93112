"""The SQLite schema of the store: tables, immutability triggers and the audit views.

The views are for people: `sqlite-utils apollo.db "select * from timeline where run_id = ?"`
gives a readable timeline of a run, branches included, without any apollo-es code.
"""

STORE_FORMAT = 1

_TABLES = [
    """
    CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS streams (
        stream_id TEXT PRIMARY KEY,
        parent_id TEXT REFERENCES streams (stream_id),
        fork_version INTEGER,
        created_at TEXT NOT NULL,
        CHECK ((parent_id IS NULL) = (fork_version IS NULL))
    )
    """,
    "CREATE INDEX IF NOT EXISTS streams_parent ON streams (parent_id)",
    """
    CREATE TABLE IF NOT EXISTS events (
        position INTEGER PRIMARY KEY,
        stream_id TEXT NOT NULL REFERENCES streams (stream_id),
        version INTEGER NOT NULL,
        event_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        schema INTEGER NOT NULL,
        recorded_at TEXT NOT NULL,
        actor TEXT NOT NULL,
        causation_id TEXT,
        payload TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        UNIQUE (stream_id, version)
    )
    """,
    "CREATE INDEX IF NOT EXISTS events_causation ON events (causation_id) WHERE causation_id IS NOT NULL",
    # Where each projection output got to. Not part of the log: it is derived state, and a
    # rebuild may reset it, so it is an ordinary table outside the hash chain.
    # Which agent works on a run, until when: liveness, not history, so an ordinary table
    # outside the hash chain. The expiry is wall-clock seconds (shared by hosts that share the
    # store); an agent renews it while it works, so a crashed one lets go within one lease.
    """
    CREATE TABLE IF NOT EXISTS leases (
        stream_id TEXT PRIMARY KEY REFERENCES streams (stream_id),
        holder TEXT NOT NULL,
        expires_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS projection_checkpoints (
        name TEXT PRIMARY KEY,
        position INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )
    """,
]

_TRIGGERS = [
    f"""
    CREATE TRIGGER IF NOT EXISTS {table}_no_{verb.lower()}
    BEFORE {verb} ON {table}
    BEGIN
        SELECT RAISE(ABORT, '{table} are append-only: {verb} is not allowed');
    END
    """
    for table in ("events", "streams")
    for verb in ("UPDATE", "DELETE")
]

# One-line summary of an event, for timelines read straight from SQL.
_SUMMARY = """
    CASE e.kind
        WHEN 'RunStarted' THEN 'task ' || json_extract(e.payload, '$.task_id') || ': '
            || substr(replace(json_extract(e.payload, '$.task'), char(10), ' '), 1, 100)
        WHEN 'AgentActed' THEN coalesce(
            (SELECT group_concat(json_extract(c.value, '$.name') || '(' ||
                substr(replace(json_extract(c.value, '$.arguments'), char(10), ' '), 1, 80) || ')', ' ')
             FROM json_each(e.payload, '$.tool_calls') c),
            '') || CASE WHEN json_extract(e.payload, '$.text') <> ''
                THEN ' "' || substr(replace(json_extract(e.payload, '$.text'), char(10), ' '), 1, 80) || '"'
                ELSE '' END
        WHEN 'ToolObserved' THEN
            CASE WHEN json_extract(e.payload, '$.is_error') THEN 'ERROR ' ELSE '' END
            || coalesce('exit ' || json_extract(e.payload, '$.exit_code') || ': ', '')
            || substr(replace(json_extract(e.payload, '$.output'), char(10), ' '), 1, 100)
        WHEN 'HumanIntervened' THEN json_extract(e.payload, '$.kind') || ' from '
            || json_extract(e.payload, '$.annotator') || ': '
            || substr(replace(json_extract(e.payload, '$.message'), char(10), ' '), 1, 100)
        WHEN 'ContextSummarized' THEN 'summary of v' || json_extract(e.payload, '$.replaces_from')
            || '..v' || json_extract(e.payload, '$.replaces_to') || ' ('
            || json_extract(e.payload, '$.tokens_before') || ' -> '
            || json_extract(e.payload, '$.tokens_after') || ' tokens)'
        WHEN 'ActionJudged' THEN json_extract(e.payload, '$.verdict') || ' '
            || coalesce(json_extract(e.payload, '$.score'), '') || ' by '
            || json_extract(e.payload, '$.judge_id') || ': '
            || substr(json_extract(e.payload, '$.reason'), 1, 80)
        WHEN 'BranchCreated' THEN 'branch of ' || json_extract(e.payload, '$.parent_stream')
            || ' at v' || json_extract(e.payload, '$.fork_version')
            || CASE WHEN json_extract(e.payload, '$.reason') <> ''
                THEN ': ' || json_extract(e.payload, '$.reason') ELSE '' END
        WHEN 'RunReconfigured' THEN 'settings changed'
            || CASE WHEN json_extract(e.payload, '$.reason') <> ''
                THEN ': ' || json_extract(e.payload, '$.reason') ELSE '' END
        WHEN 'RunFinished' THEN json_extract(e.payload, '$.status')
            || CASE WHEN json_extract(e.payload, '$.final_answer') <> ''
                THEN ': ' || substr(replace(json_extract(e.payload, '$.final_answer'), char(10), ' '), 1, 100)
                ELSE '' END
        ELSE ''
    END
"""

_VIEWS = [
    # Every stream paired with each stream whose events it reads, up to which version.
    """
    CREATE VIEW IF NOT EXISTS lineage AS
    WITH RECURSIVE chain (run_id, source_id, up_to) AS (
        SELECT stream_id, stream_id, NULL FROM streams
        UNION ALL
        SELECT chain.run_id, s.parent_id, min(coalesce(chain.up_to, s.fork_version), s.fork_version)
        FROM chain JOIN streams s ON s.stream_id = chain.source_id
        WHERE s.parent_id IS NOT NULL
    )
    SELECT run_id, source_id, up_to FROM chain
    """,
    # A run's (or branch's) events in order, inherited ones included, one plain line each.
    f"""
    CREATE VIEW IF NOT EXISTS timeline AS
    SELECT l.run_id, e.version, e.kind, e.actor, e.recorded_at,
           {_SUMMARY} AS summary,
           e.stream_id, e.position, e.event_id, e.causation_id, e.payload
    FROM lineage l
    JOIN events e ON e.stream_id = l.source_id AND (l.up_to IS NULL OR e.version <= l.up_to)
    """,
    # Agent actions with their tool calls flattened, one row per call.
    """
    CREATE VIEW IF NOT EXISTS tool_calls AS
    SELECT e.stream_id, e.version, e.position, e.event_id, e.recorded_at,
           json_extract(c.value, '$.id') AS call_id,
           json_extract(c.value, '$.name') AS tool,
           json_extract(c.value, '$.arguments') AS arguments,
           json_extract(e.payload, '$.model') AS model,
           json_extract(e.payload, '$.usage.input_tokens') AS input_tokens,
           json_extract(e.payload, '$.usage.output_tokens') AS output_tokens
    FROM events e, json_each(e.payload, '$.tool_calls') c
    WHERE e.kind = 'AgentActed'
    """,
    # Everything a human said, for auditing who steered which run.
    """
    CREATE VIEW IF NOT EXISTS interventions AS
    SELECT e.stream_id, e.version, e.position, e.recorded_at, e.actor,
           json_extract(e.payload, '$.annotator') AS annotator,
           json_extract(e.payload, '$.kind') AS kind,
           json_extract(e.payload, '$.message') AS message,
           json_extract(e.payload, '$.seen_version') AS seen_version,
           json_extract(e.payload, '$.target_event_id') AS target_event_id
    FROM events e WHERE e.kind = 'HumanIntervened'
    """,
    # Judge verdicts next to the action they judge.
    """
    CREATE VIEW IF NOT EXISTS verdicts AS
    SELECT j.stream_id, a.version AS action_version, j.position, j.recorded_at,
           json_extract(j.payload, '$.judge_id') AS judge_id,
           json_extract(j.payload, '$.verdict') AS verdict,
           json_extract(j.payload, '$.score') AS score,
           json_extract(j.payload, '$.reason') AS reason,
           json_extract(j.payload, '$.target_event_id') AS target_event_id
    FROM events j LEFT JOIN events a ON a.event_id = json_extract(j.payload, '$.target_event_id')
    WHERE j.kind = 'ActionJudged'
    """,
]

SCHEMA_SQL: list[str] = _TABLES + _TRIGGERS + _VIEWS
