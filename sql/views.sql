-- The SQL form of gpstate. The views are live: each read probes every
-- segment (with gp_recovery.segment_connect_timeout) instead of trusting the
-- catalog alone.

CREATE VIEW gp_segment_status AS
SELECT dbid, content, role, preferred_role, mode, status, port, hostname, address, datadir,
       answering, in_recovery, probe_error,
       replication_state, sync_state,
       sent_lsn::pg_lsn AS sent_lsn,
       flush_lsn::pg_lsn AS flush_lsn,
       replay_lsn::pg_lsn AS replay_lsn,
       wal_sync_remaining_bytes, bytes_behind
  FROM gp_segment_status_probe();

COMMENT ON VIEW gp_segment_status IS
    'Every segment: catalog columns, whether it answers now, and for mirrors the stream as their acting primary reports it';

CREATE VIEW gp_mirror_status AS
SELECT dbid, content, hostname AS mirror, datadir, port, status, data_status
  FROM gp_mirror_status_probe();

COMMENT ON VIEW gp_mirror_status IS
    'gpstate -m: segments configured as mirrors, Passive | Acting as Primary | Failed, Synchronized | Not In Sync';

-- Changing the catalog is for superusers only.
REVOKE ALL ON FUNCTION gp_add_segment(integer, "char", text, integer, text, text) FROM PUBLIC;

-- Reading the catalog is for everyone, as in Greenplum. Probing the
-- segments (each read of the live views opens a connection to every
-- segment) is for monitoring roles and recovery admins only.
GRANT SELECT ON gp_segment_configuration, gp_configuration_history, gp_segment_identity, gp_segment_hold,
                gp_segment_selfheal, gp_recovery_failover, gp_fts_double_fault TO PUBLIC;
REVOKE ALL ON FUNCTION gp_segment_status_probe(), gp_mirror_status_probe(), gp_state_report(),
                       gp_request_fts_probe_scan() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION gp_segment_status_probe(), gp_mirror_status_probe(), gp_state_report(),
                          gp_request_fts_probe_scan() TO pg_monitor, gp_recovery_admin;
GRANT SELECT ON gp_segment_status, gp_mirror_status TO pg_monitor, gp_recovery_admin;

-- Queued and running recovery jobs with their progress (updated by the
-- worker every second); finished jobs leave the view and stay in gp_recovery_job
-- for gp_recovery.job_retention.
CREATE VIEW gp_recovery_progress AS
SELECT job_id, dbid, content, target_hostname AS hostname, target_port AS port,
       recovery_type, phase, bytes_done, bytes_total,
       CASE WHEN bytes_total > 0
            THEN round(100.0 * least(bytes_done, bytes_total) / bytes_total, 1) END AS percent,
       started_at,
       now() - started_at AS elapsed,
       wal_remaining_bytes,
       state, submitted_by, updated_at,
       -- What runs now: an auto job's current attempt.
       CASE WHEN recovery_type = 'auto'
            THEN (ARRAY['incremental', 'differential', 'full'])[least(pg_catalog.jsonb_array_length(attempts) + 1, 3)]
            ELSE recovery_type END AS running_mode,
       attempts
  FROM gp_recovery_job
 WHERE state IN ('queued', 'running')
 ORDER BY job_id;

COMMENT ON VIEW gp_recovery_progress IS
    'gp_recovery jobs in progress: phase, bytes copied, percent, and the WAL still to replay while catching up';

GRANT SELECT ON gp_recovery_job, gp_recovery_progress TO PUBLIC;

-- Everything a monitoring system scrapes, one row per sample, for
-- Prometheus through postgres_exporter (monitoring/queries.yaml). Labels
-- not used by a metric are NULL. Nothing here connects to a segment.
CREATE VIEW gp_recovery_metrics AS
SELECT 'segments'::text AS metric, r.role::text AS role, st.status::text AS status,
       NULL::text AS state, NULL::text AS recovery_type, NULL::smallint AS content, NULL::smallint AS dbid,
       (SELECT count(*) FROM gp_segment_configuration c
         WHERE c.content >= 0 AND c.role = r.role AND c.status = st.status)::float8 AS value
  FROM (VALUES ('p'::"char"), ('m'::"char")) r(role), (VALUES ('u'::"char"), ('d'::"char")) st(status)
UNION ALL
SELECT 'pairs_not_synchronized', NULL, NULL, NULL, NULL, NULL, NULL,
       count(*)::float8 FROM gp_segment_configuration WHERE content >= 0 AND role = 'p' AND mode <> 's'
UNION ALL
SELECT 'segments_held', NULL, NULL, NULL, NULL, NULL, NULL, count(*)::float8 FROM gp_segment_hold
UNION ALL
-- As the fault tolerance service last saw each stream: never waits on a segment.
SELECT 'mirror_lag_bytes', NULL, NULL, NULL, NULL, content, dbid, bytes_behind::float8
  FROM gp_fts_replication() WHERE bytes_behind IS NOT NULL
UNION ALL
SELECT 'jobs', NULL, NULL, s.state, t.recovery_type, NULL, NULL,
       (SELECT count(*) FROM gp_recovery_job j WHERE j.state = s.state AND j.recovery_type = t.recovery_type)::float8
  FROM (VALUES ('queued'), ('running'), ('succeeded'), ('failed'), ('canceled')) s(state),
       (VALUES ('incremental'), ('differential'), ('full'), ('auto'), ('rebalance')) t(recovery_type)
UNION ALL
SELECT 'bytes_copied', NULL, NULL, NULL, NULL, NULL, NULL,
       coalesce(sum(bytes_done), 0)::float8 FROM gp_recovery_job
UNION ALL
SELECT 'last_failover_time', NULL, NULL, NULL, NULL, NULL, NULL,
       coalesce(extract(epoch FROM max("time")), 0)::float8
  FROM gp_recovery_failover
UNION ALL
SELECT 'fts_rounds', NULL, NULL, NULL, NULL, NULL, NULL, rounds_finished::float8 FROM gp_fts_stats()
UNION ALL
SELECT 'fts_last_round_seconds', NULL, NULL, NULL, NULL, NULL, NULL, last_round_seconds FROM gp_fts_stats()
UNION ALL
SELECT 'fts_probe_errors', NULL, NULL, NULL, NULL, NULL, NULL, probe_errors::float8 FROM gp_fts_stats();

COMMENT ON VIEW gp_recovery_metrics IS
    'gp_recovery for monitoring: segments per role and status, pairs not synchronized, mirror lag, jobs per state and type, bytes copied, last failover, fault tolerance rounds and probe errors';

REVOKE ALL ON FUNCTION gp_fts_stats(), gp_fts_replication() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION gp_fts_stats(), gp_fts_replication() TO pg_monitor, gp_recovery_admin;
GRANT SELECT ON gp_recovery_metrics TO pg_monitor, gp_recovery_admin;

-- Starting and canceling recoveries: superusers and gp_recovery_admin.
REVOKE ALL ON FUNCTION gp_recover_segment(integer, text, text, integer, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gp_recover_all(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gp_recover_from_config(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gp_recovery_cancel(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION gp_rebalance(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION gp_recovery_plan(text, integer, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gp_recovery_hold(integer, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gp_recovery_release(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION gp_init_standby(text, integer, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gp_remove_standby() FROM PUBLIC;
REVOKE ALL ON FUNCTION gp_activate_standby(boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION gp_recover_segment(integer, text, text, integer, text),
                          gp_recover_all(text),
                          gp_recover_from_config(text),
                          gp_recovery_cancel(bigint),
                          gp_rebalance(bigint),
                          gp_recovery_plan(text, integer, text),
                          gp_recovery_hold(integer, text),
                          gp_recovery_release(integer),
                          gp_init_standby(text, integer, text),
                          gp_remove_standby(),
                          gp_activate_standby(boolean) TO gp_recovery_admin;

-- The functions are the only way in: nobody but a superuser writes the job,
-- catalog or history tables. The functions that write run as the
-- extension's owner (SECURITY DEFINER); every function of the extension
-- runs with a search path nobody else can plant objects in, and names the
-- extension's tables as public.x.
ALTER FUNCTION gp_recover_segment(integer, text, text, integer, text) SECURITY DEFINER;
ALTER FUNCTION gp_recover_all(text) SECURITY DEFINER;
ALTER FUNCTION gp_recover_from_config(text) SECURITY DEFINER;
ALTER FUNCTION gp_recovery_cancel(bigint) SECURITY DEFINER;
ALTER FUNCTION gp_rebalance(bigint) SECURITY DEFINER;
ALTER FUNCTION gp_recovery_hold(integer, text) SECURITY DEFINER;
ALTER FUNCTION gp_recovery_release(integer) SECURITY DEFINER;
ALTER FUNCTION gp_init_standby(text, integer, text) SECURITY DEFINER;
ALTER FUNCTION gp_remove_standby() SECURITY DEFINER;
ALTER FUNCTION gp_activate_standby(boolean) SECURITY DEFINER;
DO $$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure
               FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
              WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
                AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'gp_recovery')
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f);
    END LOOP;
END $$;
