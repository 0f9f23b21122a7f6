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

-- Reading the catalog and the status is for everyone, monitoring roles included.
GRANT SELECT ON gp_segment_configuration, gp_configuration_history,
                gp_segment_status, gp_mirror_status TO PUBLIC;
