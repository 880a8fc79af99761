use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = keel_keeld::daemon::Args::parse();
    keel_keeld::telemetry::init(args.log_json);
    keel_keeld::main_with(args)
}
