//! `kwaainet service install/uninstall` writes and removes real unit files (nothing is enabled).

mod support;

use support::TestHome;

#[test]
fn systemd_unit_is_written_and_removed() {
    let home = TestHome::new();
    let unit = home.path().join(".config/systemd/user/kwaainet.service");
    let run = home.run(&["service", "install", "--kind", "systemd"]).ok();
    assert_eq!(run.line("wrote ").as_deref(), Some(unit.to_str().unwrap()));
    let text = std::fs::read_to_string(&unit).unwrap();
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_kwaainet")).unwrap();
    assert!(text.contains(&format!("ExecStart=\"{}\" start\n", exe.display())), "{text}");
    let kwaainet_home = home.kwaainet_dir();
    assert!(text.contains(&format!("Environment=\"KWAAINET_HOME={}\"", kwaainet_home.display())), "{text}");
    assert!(text.contains("[Install]\nWantedBy=default.target"), "{text}");
    home.run(&["service", "uninstall", "--kind", "systemd"]).ok();
    assert!(!unit.exists());
    let again = home.run(&["service", "uninstall", "--kind", "systemd"]).ok();
    assert!(again.stdout.starts_with("no service file at "), "{}", again.stdout);
}

#[test]
fn launchd_plist_is_written_and_removed() {
    let home = TestHome::new();
    let plist = home.path().join("Library/LaunchAgents/ai.kwaai.kwaainet.plist");
    home.run(&["service", "install", "--kind", "launchd"]).ok();
    let text = std::fs::read_to_string(&plist).unwrap();
    assert!(text.contains("<string>ai.kwaai.kwaainet</string>"), "{text}");
    assert!(text.contains("<string>start</string>"), "{text}");
    assert!(text.contains("<key>RunAtLoad</key>\n  <true/>"), "{text}");
    home.run(&["service", "uninstall", "--kind", "launchd"]).ok();
    assert!(!plist.exists());
}
