-- The segment catalog, as in Greenplum 7 (gp_segment_configuration and
-- gp_configuration_history). Created first: every function and view of the
-- extension reads these tables.

CREATE TABLE gp_segment_configuration (
    dbid           smallint PRIMARY KEY CHECK (dbid > 0),
    content        smallint NOT NULL CHECK (content >= -1),
    role           "char"   NOT NULL CHECK (role IN ('p', 'm')),
    preferred_role "char"   NOT NULL CHECK (preferred_role IN ('p', 'm')),
    mode           "char"   NOT NULL CHECK (mode IN ('s', 'n')),
    status         "char"   NOT NULL CHECK (status IN ('u', 'd')),
    port           integer  NOT NULL CHECK (port BETWEEN 1 AND 65535),
    hostname       text     NOT NULL CHECK (hostname <> ''),
    address        text     NOT NULL CHECK (address <> ''),
    -- Absolute and canonical: one spelling for one directory (no . or ..
    -- component, no doubled or trailing slash), no name of gp_recovery's
    -- own siblings.
    datadir        text     NOT NULL CHECK (datadir LIKE '/_%' AND datadir !~ '(//|/\.\.?(/|$)|/$)'
                                            AND strpos(datadir, '.gp_recovery') = 0),
    -- Content -1 is the coordinator (dbid 1 when it was registered) and,
    -- once gp_init_standby built one, its standby in the mirror role.
    CONSTRAINT gp_segment_configuration_coordinator_check
        CHECK (dbid <> 1 OR content = -1),
    -- One primary and one mirror per content. Deferrable, so that a failover
    -- can swap the two roles inside one transaction.
    CONSTRAINT gp_segment_configuration_content_role_key
        UNIQUE (content, role) DEFERRABLE INITIALLY IMMEDIATE,
    CONSTRAINT gp_segment_configuration_content_preferred_role_key
        UNIQUE (content, preferred_role) DEFERRABLE INITIALLY IMMEDIATE,
    CONSTRAINT gp_segment_configuration_hostname_port_key
        UNIQUE (hostname, port) DEFERRABLE INITIALLY IMMEDIATE,
    CONSTRAINT gp_segment_configuration_address_port_key
        UNIQUE (address, port) DEFERRABLE INITIALLY IMMEDIATE,
    CONSTRAINT gp_segment_configuration_hostname_datadir_key
        UNIQUE (hostname, datadir) DEFERRABLE INITIALLY IMMEDIATE
);

COMMENT ON TABLE gp_segment_configuration IS
    'Segments of the cluster: role/preferred_role p|m, mode s (synchronized) | n (not in sync), status u|d';

-- What each segment is, beyond its name: the database system identifier
-- of its pair (every stop and fence proves a server has it first), and
-- the machine its host was last found to be (machine-id and boot id, read
-- on the host), for the location checks of relocations.
CREATE TABLE gp_segment_identity (
    dbid              smallint    PRIMARY KEY REFERENCES gp_segment_configuration (dbid) ON DELETE CASCADE,
    system_identifier text        NOT NULL CHECK (system_identifier ~ '^[0-9]+$'),
    host_id           text,
    host_checked_at   timestamptz
);

COMMENT ON TABLE gp_segment_identity IS
    'Each segment''s pair (database system identifier) and host (machine), as gp_recovery last proved them';

-- Segments self-healing leaves alone: held by a DBA (gp_recovery_hold), or
-- by a person's cancel of a self-healing job.
CREATE TABLE gp_segment_hold (
    dbid    smallint    PRIMARY KEY REFERENCES gp_segment_configuration (dbid) ON DELETE CASCADE,
    reason  text        NOT NULL,
    held_by name        NOT NULL,
    held_at timestamptz NOT NULL DEFAULT now()
);

-- Self-healing's backoff per segment: its jobs that failed since its last
-- success. Kept here, not derived from gp_recovery_job, whose ended rows
-- gp_recovery.job_retention removes.
CREATE TABLE gp_segment_selfheal (
    dbid            smallint    PRIMARY KEY REFERENCES gp_segment_configuration (dbid) ON DELETE CASCADE,
    failures        integer     NOT NULL DEFAULT 0 CHECK (failures >= 0),
    last_failure_at timestamptz
);

-- Every failover the fault tolerance service made: the content and the
-- promoted dbid, for self-healing's damping and the metrics' last failover.
CREATE TABLE gp_recovery_failover (
    content  smallint    NOT NULL,
    promoted smallint    NOT NULL,
    "time"   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX gp_recovery_failover_time_idx ON gp_recovery_failover ("time");

-- Contents in a double fault (the primary gone, no mirror to promote), as
-- the fault tolerance service recorded it with its history row; read back
-- when the service starts.
CREATE TABLE gp_fts_double_fault (
    content smallint    PRIMARY KEY,
    since   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gp_configuration_history (
    "time" timestamptz NOT NULL DEFAULT now(),
    dbid   smallint    NOT NULL,
    "desc" text        NOT NULL
);

CREATE INDEX gp_configuration_history_time_idx ON gp_configuration_history ("time");

COMMENT ON TABLE gp_configuration_history IS
    'One row for every change gp_recovery makes to gp_segment_configuration, written in the same transaction';

-- pg_dump keeps the rows of extension tables only when they are marked.
SELECT pg_catalog.pg_extension_config_dump('gp_segment_configuration', '');
SELECT pg_catalog.pg_extension_config_dump('gp_configuration_history', '');
SELECT pg_catalog.pg_extension_config_dump('gp_segment_identity', '');
SELECT pg_catalog.pg_extension_config_dump('gp_segment_hold', '');
SELECT pg_catalog.pg_extension_config_dump('gp_segment_selfheal', '');
SELECT pg_catalog.pg_extension_config_dump('gp_recovery_failover', '');
SELECT pg_catalog.pg_extension_config_dump('gp_fts_double_fault', '');

-- Members of gp_recovery_admin (and superusers) may start and cancel
-- recoveries. Roles belong to the cluster, so it may exist already.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'gp_recovery_admin') THEN
        CREATE ROLE gp_recovery_admin NOLOGIN;
    END IF;
END
$$;

-- Recovery jobs: written by the SQL functions, run by the "gp_recovery jobs"
-- background worker. Ended jobs stay here as the record of what was done,
-- for gp_recovery.job_retention.
CREATE TABLE gp_recovery_job (
    job_id              bigserial PRIMARY KEY,
    recovery_type       text        NOT NULL
                        CHECK (recovery_type IN ('incremental', 'differential', 'full', 'auto', 'rebalance')),
    dbid                smallint    NOT NULL,
    content             smallint    NOT NULL,
    relocate            boolean     NOT NULL DEFAULT false,
    source_dbid         smallint    NOT NULL,
    source_hostname     text        NOT NULL,
    source_address      text        NOT NULL,
    source_port         integer     NOT NULL,
    source_datadir      text        NOT NULL,
    target_hostname     text        NOT NULL,
    target_address      text        NOT NULL,
    target_port         integer     NOT NULL,
    target_datadir      text        NOT NULL,
    -- The catalog row before the job, to put back if a full recovery fails.
    original            jsonb       NOT NULL,
    -- The pair's database system identifier when the job was queued: no
    -- step stops or fences a server without it.
    system_identifier   text,
    state               text        NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    phase               text        NOT NULL DEFAULT 'queued',
    -- The side effect the job's phase is about to perform (or performs),
    -- committed before it starts; see gp_recovery_phases().
    intent              text,
    cancel_requested    boolean     NOT NULL DEFAULT false,
    -- While set, the fault tolerance service leaves the content alone: a
    -- switchover stops its primary on purpose.
    fts_hold            boolean     NOT NULL DEFAULT false,
    bytes_done          bigint,
    bytes_total         bigint,
    wal_remaining_bytes bigint,
    logfile             text,
    error               text,
    -- A failed job's failure kind (host_unreachable, no_space, double_fault,
    -- source_unreachable, programs_missing, copy_stalled, refused,
    -- interrupted, other): for code; error is for people.
    failure             text,
    -- An auto job's abandoned attempts, oldest first: mode, phase, reason,
    -- bytes its copy had moved. The attempt running is the next in
    -- incremental, differential, full.
    attempts            jsonb       NOT NULL DEFAULT '[]',
    -- The role that called the submitting function (which runs as the
    -- extension's owner); written by the function.
    submitted_by        name        NOT NULL DEFAULT session_user,
    submitted_at        timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    updated_at          timestamptz,
    finished_at         timestamptz
);

-- One job at a time per content.
CREATE UNIQUE INDEX gp_recovery_job_active_content ON gp_recovery_job (content)
    WHERE state IN ('queued', 'running');

COMMENT ON TABLE gp_recovery_job IS
    'Recovery jobs (gp_recover_segment, gp_recover_all, gp_recover_from_config): queued, running, succeeded, failed or canceled';

SELECT pg_catalog.pg_extension_config_dump('gp_recovery_job', '');
SELECT pg_catalog.pg_extension_config_dump('gp_recovery_job_job_id_seq', '');

-- Events for LISTEN gp_recovery (see README, Events): a job event for
-- every new job and every change of its state, phase or cancel request (not
-- its progress), sent in the transaction of the change. The history writer
-- in src/catalog.rs sends the fault tolerance and catalog events the same
-- way. A listener that stops reading fills the server's notification
-- queue, and a full queue fails the commit of every NOTIFY: past 90% both
-- drop their events instead, so no job or failover waits for a listener.
CREATE FUNCTION gp_recovery_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_catalog.pg_notification_queue_usage() < 0.9 THEN
        PERFORM pg_catalog.pg_notify('gp_recovery', pg_catalog.json_build_object(
            'event', 'job',
            'time', pg_catalog.now(),
            'job_id', NEW.job_id,
            'dbid', NEW.dbid,
            'content', NEW.content,
            'recovery_type', NEW.recovery_type,
            'relocate', NEW.relocate,
            'state', NEW.state,
            'phase', NEW.phase,
            'cancel_requested', NEW.cancel_requested,
            -- A payload must stay under 8000 bytes: 1000 characters are at
            -- most 6000 in JSON. The row keeps the whole error.
            'error', pg_catalog."left"(NEW.error, 1000),
            'failure', NEW.failure)::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER gp_recovery_job_queued AFTER INSERT ON gp_recovery_job
    FOR EACH ROW EXECUTE FUNCTION gp_recovery_job_event();
CREATE TRIGGER gp_recovery_job_changed AFTER UPDATE ON gp_recovery_job
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.phase IS DISTINCT FROM NEW.phase
          OR OLD.cancel_requested IS DISTINCT FROM NEW.cancel_requested)
    EXECUTE FUNCTION gp_recovery_job_event();
