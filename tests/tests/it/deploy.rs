//! Everything under `deploy/` is checked: each systemd unit's `ExecStart` must be a command
//! line the `baton` binary accepts.

use std::path::Path;

#[test]
fn systemd_units_start_commands_the_binary_accepts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{} has no ExecStart", path.display()));
        let mut words = exec.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/baton"), "{}", path.display());
        // Parsing stops at --help only after every earlier flag was accepted.
        let args: Vec<&str> = words.chain(["--help"]).collect();
        let out = std::process::Command::new(baton_tests::baton_bin()).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}: `baton {}` was rejected: {}",
            path.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert_eq!(checked, 2, "both units were checked");
}
