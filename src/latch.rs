//! Waking the background workers and waiting in a backend.

/// Sets a worker's latch: SIGUSR1 reaches Postgres's procsignal handler,
/// which sets the latch of a worker connected to a database.
pub fn wake(pid: i32) {
    if pid > 0 {
        // SAFETY: signals a process of this cluster.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
    }
}

/// Sets this process's own latch from any thread or signal handler: the
/// signal reaches the main thread (helper threads block every signal),
/// whose procsignal handler sets the latch. Only kill and getpid, both
/// async-signal-safe.
pub fn wake_self() {
    // SAFETY: signals this very process.
    unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
}

/// Wakes the loop of a worker whose step processes end: SIGCHLD sets its
/// latch, so a finished step is followed at once instead of at the next
/// poll. SA_RESTART, as Postgres installs its handlers.
pub fn wake_on_child_exit() {
    extern "C" fn on_child(_: libc::c_int) {
        // SAFETY: errno is saved and restored around the handler's call.
        unsafe {
            let errno = *libc::__errno_location();
            wake_self();
            *libc::__errno_location() = errno;
        }
    }
    // SAFETY: installs a handler that only makes async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_child as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut());
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
