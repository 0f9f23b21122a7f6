//! Waking the background workers and waiting in a backend.

/// Sets a worker's latch: SIGUSR1 reaches Postgres's procsignal handler,
/// which sets the latch of a worker connected to a database.
pub fn wake(pid: i32) {
    if pid > 0 {
        // SAFETY: signals a process of this cluster.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
    }
}

/// Waits on this backend's latch for up to `ms` milliseconds, then handles
/// interrupts (statement_timeout, pg_cancel_backend) as any wait must.
pub fn nap(ms: i64) {
    use pgrx::pg_sys;
    // SAFETY: waits on and resets this backend's own latch.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}
