-- Kinbar's Postgres datastore, version 1.
--
-- Relationships are versioned by the transaction ids (xid8) that created and
-- deleted them; a revision is a pg_snapshot, and a row is visible at a
-- revision when its creator is visible in the snapshot and its deleter is not.
-- Text is compared bytewise (COLLATE "C") so the order matches Kinbar's.

CREATE TABLE kinbar_metadata (
    key   text PRIMARY KEY,
    value text NOT NULL
);

INSERT INTO kinbar_metadata (key, value) VALUES
    ('datastore_id', 'pg-' || replace(gen_random_uuid()::text, '-', '')),
    -- A snapshot every readable revision must see ('' before the first
    -- collection): garbage collection removes versions dead in it.
    ('gc_horizon', ''),
    -- When it was published (ms since the epoch): versions are collected
    -- only below a horizon older than the readers' cache of it.
    ('gc_horizon_published_ms', '0');

CREATE TABLE relationships (
    resource_type    text COLLATE "C" NOT NULL,
    resource_id      text COLLATE "C" NOT NULL,
    relation         text COLLATE "C" NOT NULL,
    subject_type     text COLLATE "C" NOT NULL,
    subject_id       text COLLATE "C" NOT NULL,
    -- '' for a plain subject (no relation, `...`).
    subject_relation text COLLATE "C" NOT NULL,
    created_xid      xid8 NOT NULL DEFAULT pg_current_xact_id(),
    deleted_xid      xid8,
    PRIMARY KEY (resource_type, resource_id, relation, subject_type, subject_id,
                 subject_relation, created_xid)
);

-- At most one live version of a relationship.
CREATE UNIQUE INDEX relationships_live ON relationships
    (resource_type, resource_id, relation, subject_type, subject_id, subject_relation)
    WHERE deleted_xid IS NULL;
-- Reverse lookups: what a subject is related to. It ends with resource_id
-- so that a lookup of one exact relationship is an exact seek whichever
-- index the planner picks (many relationships share one subject, such as
-- `team:sales#member` or `user:*`).
CREATE INDEX relationships_by_subject ON relationships
    (subject_type, subject_id, subject_relation, resource_type, relation, resource_id);
-- Garbage collection scans dead versions.
CREATE INDEX relationships_deleted ON relationships (deleted_xid)
    WHERE deleted_xid IS NOT NULL;

CREATE TABLE schema_versions (
    text        text NOT NULL,
    -- The revision of the write that installed it (its version).
    written_rev text NOT NULL,
    created_xid xid8 NOT NULL DEFAULT pg_current_xact_id() PRIMARY KEY,
    deleted_xid xid8
);
CREATE UNIQUE INDEX schema_versions_live ON schema_versions ((true))
    WHERE deleted_xid IS NULL;

-- One row per committed write transaction: Watch reads it in commit order,
-- and it is the audit record (never garbage-collected). `audit_seq`,
-- `previous_hash` and `hash` are filled in by the sealer, in the order in
-- which transactions become visible, forming a SHA-256 chain.
CREATE TABLE transactions (
    xid            xid8 PRIMARY KEY DEFAULT pg_current_xact_id(),
    revision       text NOT NULL,
    committed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor          text NOT NULL,
    request_id     text NOT NULL,
    metadata       jsonb NOT NULL,
    schema_changed boolean NOT NULL,
    old_schema     text,
    new_schema     text,
    audit_seq      bigint UNIQUE,
    previous_hash  bytea,
    hash           bytea
);
CREATE INDEX transactions_unsealed ON transactions (xid) WHERE audit_seq IS NULL;
CREATE INDEX transactions_committed_at ON transactions (committed_at);

-- One row per changed relationship of a transaction (inserted with it).
-- No foreign key: its check would be a serializable read of the
-- transactions index page every concurrent writer inserts into, turning
-- each pair of concurrent writes into a serialization failure.
CREATE TABLE audit_changes (
    xid          xid8 NOT NULL,
    ord          integer NOT NULL,
    operation    text NOT NULL,
    relationship text NOT NULL,
    PRIMARY KEY (xid, ord)
);
