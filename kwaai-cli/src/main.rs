//! kwaainet: start and manage kwaai nodes from the command line.

mod args;
mod calibrate;
mod config;
mod daemon;
mod demo;
mod demo_model;
mod failure;
mod health;
mod logs;
mod paths;
mod run;
mod serve;
mod service;
mod setup;
mod status;
mod visibility;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::config::Config;
use crate::failure::Failure;
use crate::paths::Home;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let cli = Cli::parse();
    match dispatch(cli, &argv) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("kwaainet: {failure}");
            ExitCode::from(failure.code)
        }
    }
}

/// Logs go to stderr (the log file, for the background node); `RUST_LOG` overrides `level`.
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn dispatch(cli: Cli, argv: &[String]) -> Result<u8, Failure> {
    let home = Home::from_env()?;
    match cli.command {
        Command::Start(args) => {
            let level = Config::load(&home.config_file())?.log_level;
            init_logging(&level);
            if args.daemon && !args.daemon_child {
                run::start_daemon(&home, &args, argv)?;
            } else {
                run::run_foreground(&home, &args, argv)?;
            }
        }
        Command::Health(args) => {
            init_logging("info");
            return health::run(&home, &args);
        }
        command => {
            init_logging("warn");
            return other(&home, command);
        }
    }
    Ok(0)
}

fn other(home: &Home, command: Command) -> Result<u8, Failure> {
    match command {
        Command::Setup(args) => setup::setup(home, &args)?,
        Command::Stop(args) => stop(home, &args)?,
        Command::Restart(args) => {
            let previous = status::StatusFile::read(home).ok().filter(|_| daemon::is_running(home));
            stop(home, &args)?;
            let rerun = previous.map_or_else(|| vec!["start".to_owned()], |s| s.args);
            let status = daemon::spawn(home, &rerun)?;
            println!("restarted (pid {}); peer id: {}", status.pid, status.peer_id);
        }
        Command::Status(args) => return status::run(home, &args),
        Command::Logs(args) => logs::run(home, &args)?,
        Command::Config { action } => setup::config_command(home, &action)?,
        Command::Service { action } => service::run(home, &action)?,
        Command::Calibrate(args) => calibrate::run(&args)?,
        Command::Demo(args) => demo::run(home, &args)?,
        Command::Start(_) | Command::Health(_) => unreachable!("dispatched before"),
    }
    Ok(0)
}

fn stop(home: &Home, args: &args::StopArgs) -> Result<(), Failure> {
    if !(args.timeout.is_finite() && args.timeout >= 0.0) {
        return Err(Failure::usage(format!("--timeout {} must be a number of seconds", args.timeout)));
    }
    match daemon::stop(home, Duration::from_secs_f64(args.timeout))? {
        daemon::Stopped::NotRunning => println!("no node is running"),
        daemon::Stopped::Gracefully(pid) => println!("stopped (pid {pid})"),
        daemon::Stopped::Killed(pid) => println!("killed (pid {pid}) after {}s without stopping", args.timeout),
    }
    Ok(())
}
