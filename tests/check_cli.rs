//! `tether check --config FILE`, run as the real binary.

use std::path::Path;
use std::process::{Command, Output};

const VALID: &str = "[[route]]\ncluster = \"app\"\n\n[[cluster.app.member]]\nname = \"c1\"\n\
                     clone_id = \"c1\"\naddress = \"127.0.0.1:9081\"\n";

fn check(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .expect("run tether")
}

fn check_text(text: &str) -> Output {
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), text).unwrap();
    check(file.path())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_valid_file_passes() {
    let out = check_text(VALID);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok (1 routes, 1 clusters, 1 members)"),
        "{stdout}"
    );
}

#[test]
fn an_unknown_key_fails_naming_the_key_and_line() {
    let text = VALID.replace("address =", "adress =");
    let out = check_text(&text);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(": line 7: cluster.app.member[0].adress: unknown key"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!err.contains("127.0.0.1"), "the file is not echoed: {err}");
}

#[test]
fn a_rule_violation_fails_naming_the_key() {
    let text = VALID.replace("127.0.0.1:9081", "127.0.0.1");
    let out = check_text(&text);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(": line 7: cluster.app.member[0].address: invalid address"),
        "{err}"
    );
}

#[test]
fn a_missing_file_fails_in_one_line_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("error: cannot read config file"), "{err}");
    assert!(err.contains("nope.toml"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn the_shipped_configs_pass() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    for name in ["minimal.toml", "full.toml"] {
        let out = check(&conf.join(name));
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
}
