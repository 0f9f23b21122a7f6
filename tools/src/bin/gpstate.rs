//! gpstate over the gp_recovery extension; see gp_recovery_tools::gpstate.

fn main() -> std::process::ExitCode {
    gp_recovery_tools::gpstate::main()
}
