//! Settings errors, read from the parser itself (no process, no network):
//! every bad configuration is refused with one line that names the variable
//! at fault, says what it wants, and never shows a secret or the content of
//! a file. The binary's side (exit 2, the same line on stderr, nothing
//! written) is shown once per kind in tests/core.rs, tests/credentials.rs
//! and tests/secrets.rs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gitreload::settings::Settings;

/// Variables of one bad configuration and the words its error must contain.
type Case = (Vec<(&'static str, String)>, Vec<&'static str>);

/// The parser's error for `vars`, checked to be one line.
#[track_caller]
fn refused(vars: &[(&str, String)]) -> String {
    let result = Settings::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let error = match result {
        Ok(_) => panic!("{vars:?} was accepted"),
        Err(e) => e.to_string(),
    };
    assert_eq!(error.lines().count(), 1, "one line expected: {error}");
    error
}

/// Where the variables point: a destination and a state dir that do not
/// exist, as a first start would see them.
struct Dirs {
    root: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Dirs {
        Dirs {
            root: tempfile::TempDir::new().unwrap(),
        }
    }

    fn dest(&self) -> String {
        self.root.path().join("dest").display().to_string()
    }

    fn state(&self) -> String {
        self.root.path().join("state").display().to_string()
    }

    fn scratch(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }
}

/// Writes `content` to `dir/name` with `mode`; returns the path.
fn file(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn missing_or_malformed_core_variables_are_refused_naming_the_variable() {
    let dirs = Dirs::new();
    let url = "file:///srv/upstream.git".to_string();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![
                ("GITRELOAD_DEST", dirs.dest()),
                ("GITRELOAD_STATE_DIR", dirs.state()),
            ],
            "GITRELOAD_REPO is not set",
        ),
        (
            vec![
                ("GITRELOAD_REPO", url.clone()),
                ("GITRELOAD_STATE_DIR", dirs.state()),
            ],
            "GITRELOAD_DEST is not set",
        ),
        (
            vec![
                ("GITRELOAD_REPO", url.clone()),
                ("GITRELOAD_DEST", dirs.dest()),
                ("GITRELOAD_STATE_DIR", dirs.state()),
                ("GITRELOAD_INTERVAL", "30".into()),
            ],
            "GITRELOAD_INTERVAL=\"30\": expected a duration such as 500ms, 30s or 5m",
        ),
        (
            vec![
                ("GITRELOAD_REPO", url.clone()),
                ("GITRELOAD_DEST", dirs.dest()),
                ("GITRELOAD_STATE_DIR", dirs.state()),
                ("GITRELOAD_REF", String::new()),
            ],
            "GITRELOAD_REF=\"\": empty",
        ),
    ];
    for (vars, expected) in cases {
        let error = refused(&vars);
        assert!(error.contains(expected), "{vars:?}: {error}");
    }
}

#[test]
fn credential_settings_are_refused_naming_the_variables_and_never_the_content() {
    let dirs = Dirs::new();
    let dir = dirs.scratch();
    let secret = "content-of-a-secret-file-xyz";
    let public = file(
        &dir,
        "id.pub",
        format!("ssh-ed25519 {secret}\n").as_bytes(),
        0o644,
    );
    let ssh_url = "ssh://git@127.0.0.1:1/x.git";
    let https_url = "https://127.0.0.1:1/x.git";
    // (variables, words the error must contain)
    let cases: Vec<Case> = vec![
        (
            vec![
                ("GITRELOAD_REPO", https_url.into()),
                ("GITRELOAD_USERNAME", "deploy".into()),
                ("GITRELOAD_PASSWORD_FILE", "/nonexistent/git_token".into()),
            ],
            vec!["GITRELOAD_PASSWORD_FILE", "cannot read"],
        ),
        (
            vec![
                ("GITRELOAD_REPO", https_url.into()),
                ("GITRELOAD_USERNAME", "deploy".into()),
            ],
            vec!["GITRELOAD_USERNAME", "GITRELOAD_PASSWORD_FILE"],
        ),
        (
            vec![
                ("GITRELOAD_REPO", https_url.into()),
                ("GITRELOAD_PASSWORD_FILE", public.display().to_string()),
            ],
            vec!["GITRELOAD_USERNAME", "GITRELOAD_PASSWORD_FILE"],
        ),
        (
            vec![
                ("GITRELOAD_REPO", ssh_url.into()),
                ("GITRELOAD_SSH_KEY_FILE", public.display().to_string()),
            ],
            vec!["GITRELOAD_SSH_KEY_FILE", ".pub"],
        ),
        (
            vec![
                ("GITRELOAD_REPO", ssh_url.into()),
                ("GITRELOAD_SSH_KNOWN_HOSTS_FILE", "/nonexistent/kh".into()),
            ],
            vec!["GITRELOAD_SSH_KNOWN_HOSTS_FILE", "cannot read"],
        ),
        (
            vec![
                ("GITRELOAD_REPO", https_url.into()),
                ("GITRELOAD_SSH_ACCEPT_NEW_HOST_KEYS", "true".into()),
            ],
            vec!["GITRELOAD_SSH_ACCEPT_NEW_HOST_KEYS", "ssh repositories"],
        ),
        (
            vec![
                ("GITRELOAD_REPO", https_url.into()),
                ("GITRELOAD_CA_FILE", public.display().to_string()),
            ],
            vec!["GITRELOAD_CA_FILE", "no PEM certificate"],
        ),
        (
            vec![(
                "GITRELOAD_REPO",
                format!("http://deploy:{secret}@127.0.0.1:1/x.git"),
            )],
            vec!["GITRELOAD_REPO", "only sent over https://"],
        ),
        (
            vec![
                ("GITRELOAD_REPO", "http://127.0.0.1:1/x.git".into()),
                ("GITRELOAD_USERNAME", "deploy".into()),
                ("GITRELOAD_PASSWORD_FILE", public.display().to_string()),
            ],
            vec!["GITRELOAD_PASSWORD_FILE", "only sent over https://"],
        ),
    ];
    for (mut vars, expected) in cases {
        vars.push(("GITRELOAD_DEST", dirs.dest()));
        vars.push(("GITRELOAD_STATE_DIR", dirs.state()));
        let error = refused(&vars);
        for word in expected {
            assert!(error.contains(word), "{vars:?}: {word:?} not in {error}");
        }
        assert!(!error.contains(secret), "{error}");
    }
}

#[test]
fn unreadable_or_invalid_identity_file_is_refused_without_its_content() {
    let dirs = Dirs::new();
    let bad = file(
        &dirs.scratch(),
        "identity.txt",
        b"# comment\nAGE-SECRET-KEY-NOT-REALLY-secret-line-77\n",
        0o600,
    );
    for path in [bad, dirs.scratch().join("absent")] {
        let error = refused(&[
            ("GITRELOAD_REPO", "file:///srv/upstream.git".into()),
            ("GITRELOAD_DEST", dirs.dest()),
            ("GITRELOAD_STATE_DIR", dirs.state()),
            ("GITRELOAD_AGE_IDENTITY_FILE", path.display().to_string()),
        ]);
        assert!(error.contains("GITRELOAD_AGE_IDENTITY_FILE"), "{error}");
        assert!(!error.contains("secret-line-77"), "{error}");
    }
}
