//! gpinitstandby over the gp_recovery extension; see gp_recovery_tools::initstandby.

fn main() -> std::process::ExitCode {
    gp_recovery_tools::initstandby::main()
}
