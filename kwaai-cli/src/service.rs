//! `kwaainet service install/uninstall`: a systemd user unit or a launchd agent that runs
//! `kwaainet start` in the foreground (the service manager restarts it and keeps its log).

use std::path::{Path, PathBuf};

use crate::args::{ServiceAction, ServiceKind};
use crate::failure::Failure;
use crate::paths::{user_home, Home};

/// The launchd label and systemd unit name.
pub const SERVICE_NAME: &str = "kwaainet";
const LAUNCHD_LABEL: &str = "ai.kwaai.kwaainet";

/// The platform's service manager.
pub fn default_kind() -> ServiceKind {
    if cfg!(target_os = "macos") {
        ServiceKind::Launchd
    } else {
        ServiceKind::Systemd
    }
}

/// Where the service file of `kind` goes.
pub fn unit_path(kind: ServiceKind) -> Result<PathBuf, Failure> {
    Ok(match kind {
        ServiceKind::Systemd => {
            let config = std::env::var_os("XDG_CONFIG_HOME")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .map_or_else(|| user_home().map(|h| h.join(".config")), Ok)?;
            config.join("systemd/user").join(format!("{SERVICE_NAME}.service"))
        }
        ServiceKind::Launchd => user_home()?.join("Library/LaunchAgents").join(format!("{LAUNCHD_LABEL}.plist")),
    })
}

/// A systemd user unit running `exe start` with `home` as KWAAINET_HOME.
pub fn systemd_unit(exe: &Path, home: &Home) -> String {
    format!(
        "[Unit]\n\
         Description=kwaainet: kwaai node of the Petals swarm\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         Environment=\"{env}={home}\"\n\
         ExecStart=\"{exe}\" start\n\
         Restart=on-failure\n\
         RestartSec=10\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec=60\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        env = crate::paths::HOME_ENV,
        home = home.root().display(),
        exe = exe.display(),
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A launchd agent running `exe start` at login, restarted when it exits.
pub fn launchd_plist(exe: &Path, home: &Home) -> String {
    let exe = xml_escape(&exe.display().to_string());
    let root = xml_escape(&home.root().display().to_string());
    let log = xml_escape(&home.log_file().display().to_string());
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>{LAUNCHD_LABEL}</string>
  <key>ProgramArguments</key>
  <array>
    <string>{exe}</string>
    <string>start</string>
  </array>
  <key>EnvironmentVariables</key>
  <dict>
    <key>{env}</key>
    <string>{root}</string>
  </dict>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <true/>
  <key>StandardOutPath</key>
  <string>{log}</string>
  <key>StandardErrorPath</key>
  <string>{log}</string>
</dict>
</plist>
"#,
        env = crate::paths::HOME_ENV,
    )
}

/// `kwaainet service ...`.
pub fn run(home: &Home, action: &ServiceAction) -> Result<(), Failure> {
    match action {
        ServiceAction::Install { kind } => {
            let kind = kind.unwrap_or_else(default_kind);
            let path = unit_path(kind)?;
            let exe = std::env::current_exe().map_err(|e| Failure::io("finding the kwaainet executable", e))?;
            let text = match kind {
                ServiceKind::Systemd => systemd_unit(&exe, home),
                ServiceKind::Launchd => launchd_plist(&exe, home),
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Failure::io(format!("creating {}", dir.display()), e))?;
            }
            home.create()?;
            std::fs::write(&path, text).map_err(|e| Failure::io(format!("writing {}", path.display()), e))?;
            println!("wrote {}", path.display());
            match kind {
                ServiceKind::Systemd => println!(
                    "enable it with: systemctl --user daemon-reload && systemctl --user enable --now {SERVICE_NAME}"
                ),
                ServiceKind::Launchd => println!("load it with: launchctl load -w {}", path.display()),
            }
        }
        ServiceAction::Uninstall { kind } => {
            let kind = kind.unwrap_or_else(default_kind);
            let path = unit_path(kind)?;
            match std::fs::remove_file(&path) {
                Ok(()) => println!("removed {}", path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("no service file at {}", path.display()),
                Err(e) => return Err(Failure::io(format!("removing {}", path.display()), e)),
            }
            match kind {
                ServiceKind::Systemd => println!("if it was enabled: systemctl --user disable --now {SERVICE_NAME}"),
                ServiceKind::Launchd => println!("if it was loaded: launchctl unload {}", path.display()),
            }
        }
    }
    Ok(())
}
