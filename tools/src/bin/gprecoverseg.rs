//! gprecoverseg over the gp_recovery extension; see gp_recovery_tools::recoverseg.

fn main() -> std::process::ExitCode {
    gp_recovery_tools::recoverseg::main()
}
