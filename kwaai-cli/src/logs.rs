//! `kwaainet logs`: the end of the node's log, optionally followed.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::time::Duration;

use crate::args::LogsArgs;
use crate::failure::Failure;
use crate::paths::Home;

/// How often `--follow` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Prints the last lines of the log; with `--follow`, then every line appended until interrupted.
pub fn run(home: &Home, args: &LogsArgs) -> Result<(), Failure> {
    let path = home.log_file();
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !args.follow => {
            return Err(Failure::new(format!("no log yet at {} (start the node with --daemon)", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            while !path.exists() {
                std::thread::sleep(FOLLOW_POLL);
            }
            File::open(&path).map_err(|e| Failure::io(format!("opening {}", path.display()), e))?
        }
        Err(e) => return Err(Failure::io(format!("opening {}", path.display()), e)),
    };
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| Failure::io(format!("reading {}", path.display()), e))?;
    let mut out = std::io::stdout().lock();
    for line in last_lines(&text, args.lines) {
        writeln!(out, "{line}").map_err(|e| Failure::io("writing to stdout", e))?;
    }
    out.flush().map_err(|e| Failure::io("writing to stdout", e))?;
    if !args.follow {
        return Ok(());
    }
    let mut offset = text.len() as u64;
    loop {
        std::thread::sleep(FOLLOW_POLL);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < offset {
            // Truncated or replaced: start over from its beginning.
            offset = 0;
        }
        if len == offset {
            continue;
        }
        let mut file = File::open(&path).map_err(|e| Failure::io(format!("opening {}", path.display()), e))?;
        file.seek(SeekFrom::Start(offset)).map_err(|e| Failure::io("seeking in the log", e))?;
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        // Print whole lines only; a half-written line waits for its end.
        while reader.read_line(&mut line).map_err(|e| Failure::io("reading the log", e))? > 0 && line.ends_with('\n') {
            offset += line.len() as u64;
            write!(out, "{line}").map_err(|e| Failure::io("writing to stdout", e))?;
            line.clear();
        }
        out.flush().map_err(|e| Failure::io("writing to stdout", e))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_takes_the_tail() {
        assert_eq!(last_lines("a\nb\nc\n", 2), vec!["b", "c"]);
        assert_eq!(last_lines("a\nb\n", 5), vec!["a", "b"]);
        assert!(last_lines("", 3).is_empty());
    }
}
