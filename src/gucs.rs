//! Settings of gp_recovery.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// How long a view or registration waits for one segment to answer.
pub static SEGMENT_CONNECT_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(5);

pub fn define() {
    GucRegistry::define_int_guc(
        c"gp_recovery.segment_connect_timeout",
        c"Seconds to wait for a segment to answer a status probe.",
        c"Bounds each connection made by gp_segment_status, gp_mirror_status, gp_state_report() and gp_add_segment(); segments are probed at the same time, so one hung segment never delays the others.",
        &SEGMENT_CONNECT_TIMEOUT,
        1,
        3600,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    // Typos such as gp_recovery.segment_conect_timeout are rejected instead
    // of silently creating a placeholder.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"gp_recovery".as_ptr()) };
}
