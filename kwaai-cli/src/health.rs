//! `kwaainet health`: is the node visible in the swarm? With `--watch`, keep checking, and after
//! a failure try again with exponential backoff, logging each attempt.

use std::time::Duration;

use crate::args::HealthArgs;
use crate::daemon;
use crate::failure::Failure;
use crate::paths::Home;
use crate::status::StatusFile;
use crate::visibility::{check_visibility, Visibility};

/// The first wait after a failed check.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The wait before attempt `failures + 1`, after `failures` failed checks in a row: 1 s, 2 s, 4 s, ... up to `max`.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(20)).min(max)
}

fn check_once(home: &Home, timeout: Duration) -> Visibility {
    if !daemon::is_running(home) {
        return Visibility::Unreachable(format!("no node is running from {}", home.root().display()));
    }
    match StatusFile::read(home) {
        Ok(status) => check_visibility(&status, timeout),
        Err(e) => Visibility::Unreachable(e.message),
    }
}

/// Checks once (exit 0 when visible), or watches until `--max-attempts` failures in a row.
pub fn run(home: &Home, args: &HealthArgs) -> Result<u8, Failure> {
    let timeout = Duration::from_secs_f64(args.timeout.max(0.1));
    let max_backoff = Duration::from_secs_f64(args.max_backoff.max(0.0));
    let mut failures = 0u32;
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let result = check_once(home, timeout);
        match &result {
            Visibility::Online(detail) => {
                tracing::info!(attempt, "healthy: ONLINE ({detail})");
                failures = 0;
            }
            other => {
                failures += 1;
                tracing::warn!(attempt, failures, "unhealthy: {} ({})", other.label(), other.detail());
            }
        }
        if !args.watch {
            println!("{}: {}", result.label(), result.detail());
            return Ok(if matches!(result, Visibility::Online(_)) { 0 } else { 1 });
        }
        if args.max_attempts > 0 && failures >= args.max_attempts {
            return Err(Failure::new(format!("not visible after {failures} attempts in a row")));
        }
        let wait = if failures == 0 {
            Duration::from_secs_f64(args.interval.max(0.0))
        } else {
            backoff(failures, max_backoff)
        };
        if failures > 0 {
            tracing::info!("reconnecting in {:.1}s", wait.as_secs_f64());
        }
        std::thread::sleep(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let max = Duration::from_secs(10);
        let waits: Vec<u64> = (1..=6).map(|f| backoff(f, max).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(1000, max), max);
    }
}
