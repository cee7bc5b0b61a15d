//! `kwaainet setup` and `kwaainet config get/set/show/path`.

use std::io::{BufRead, IsTerminal, Write};

use crate::args::{ConfigAction, SetupArgs};
use crate::config::Config;
use crate::failure::Failure;
use crate::paths::Home;

/// `kwaainet setup`: the existing file (or the defaults) overridden by the flags, then, on a
/// terminal and without --yes, one question per main setting; validated and written.
pub fn setup(home: &Home, args: &SetupArgs) -> Result<(), Failure> {
    let path = home.config_file();
    let mut config = Config::load(&path)?;
    if config.identity_path.is_none() {
        // A stable peer ID across restarts is what an operator expects of a node manager.
        config.identity_path = Some(home.identity_file());
    }
    args.node.apply_to(&mut config);
    args.serve.apply_to(&mut config);
    if let Some(level) = &args.log_level {
        config.log_level = level.clone();
    }
    let stdin = std::io::stdin();
    if !args.yes && stdin.is_terminal() {
        ask(&mut config, &mut stdin.lock())?;
    }
    config.validate().map_err(|(_, message)| Failure::usage(message))?;
    config.save(&path)?;
    home.create()?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Asks for each main setting, showing the current value; an empty answer keeps it, and a bad
/// answer is asked again.
fn ask(config: &mut Config, input: &mut impl BufRead) -> Result<(), Failure> {
    let questions = [
        ("initial_peers", "Initial peers (multiaddrs, comma-separated; none: start a new swarm)"),
        ("host_maddrs", "Listen addresses"),
        ("identity_path", "Identity key file"),
        ("model", "Model directory to serve (none: a plain DHT node)"),
        ("num_blocks", "Blocks to serve (none: automatic)"),
    ];
    for (key, question) in questions {
        loop {
            let current = config.get(key)?.replace('\n', ",");
            print!("{question} [{current}]: ");
            std::io::stdout().flush().map_err(|e| Failure::io("writing to stdout", e))?;
            let mut answer = String::new();
            if input.read_line(&mut answer).map_err(|e| Failure::io("reading stdin", e))? == 0 {
                return Ok(());
            }
            let answer = answer.trim();
            if answer.is_empty() {
                break;
            }
            match config.set(key, answer) {
                Ok(()) => break,
                Err(e) => println!("  {e}"),
            }
        }
    }
    Ok(())
}

/// `kwaainet config ...`.
pub fn config_command(home: &Home, action: &ConfigAction) -> Result<(), Failure> {
    let path = home.config_file();
    match action {
        ConfigAction::Get { key } => println!("{}", Config::load(&path)?.get(key)?),
        ConfigAction::Set { key, value } => {
            let mut config = Config::load(&path)?;
            config.set(key, value)?;
            config.save(&path)?;
        }
        ConfigAction::Show => {
            let config = Config::load(&path)?;
            print!("{}", serde_yaml::to_string(&config).map_err(|e| Failure::new(e.to_string()))?);
        }
        ConfigAction::Path => println!("{}", path.display()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_keep_defaults_on_empty_answers_and_ask_again_after_bad_ones() {
        let mut config = Config::default();
        let answers = "\nnonsense\n/ip4/127.0.0.1/tcp/7000\n\nnone\n3\n";
        ask(&mut config, &mut answers.as_bytes()).unwrap();
        assert!(config.initial_peers.is_empty());
        assert_eq!(config.host_maddrs, vec!["/ip4/127.0.0.1/tcp/7000".to_owned()]);
        assert_eq!(config.model, None);
        assert_eq!(config.num_blocks, Some(3));
    }
}
