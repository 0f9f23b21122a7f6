//! gpactivatestandby over the gp_recovery extension; see gp_recovery_tools::activatestandby.

fn main() -> std::process::ExitCode {
    gp_recovery_tools::activatestandby::main()
}
