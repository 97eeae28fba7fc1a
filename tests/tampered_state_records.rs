//! Attacks on the records in the state directory: a manifest or deploy
//! journal that names a path gitreload never deploys (`../`, absolute,
//! hidden) is not acted on, so a damaged or planted record cannot make a
//! deploy delete files outside the destination.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use gitreload::deploy::{self, Destination, Known, Options, Records, Verify};
use gitreload::git::CommitId;
use gitreload::materialize::{FileKind, Staged};
use gitreload::secrets::Redactions;
use sha2::{Digest, Sha256};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

struct World {
    _tmp: tempfile::TempDir,
    state: std::path::PathBuf,
    dest: std::path::PathBuf,
    staging: std::path::PathBuf,
    /// A file beside the destination that no deploy may touch.
    victim: std::path::PathBuf,
}

fn world() -> World {
    let tmp = tempfile::TempDir::new().unwrap();
    let root = tmp.path().to_path_buf();
    for dir in ["state", "dest", "staging", "outside"] {
        std::fs::create_dir(root.join(dir)).unwrap();
    }
    let victim = root.join("outside/victim");
    std::fs::write(&victim, "not gitreload's\n").unwrap();
    std::fs::write(root.join("staging/app.yml"), "a: 1\n").unwrap();
    World {
        state: root.join("state"),
        dest: root.join("dest"),
        staging: root.join("staging"),
        victim,
        _tmp: tmp,
    }
}

fn staged(staging: &Path) -> Staged {
    let mut files = BTreeMap::new();
    files.insert(
        "app.yml".to_string(),
        FileKind::File {
            sha256: hex::encode(Sha256::digest(b"a: 1\n")),
            executable: false,
            secret: false,
        },
    );
    Staged {
        commit: CommitId::parse(COMMIT).unwrap(),
        subdir: String::new(),
        dir: staging.to_path_buf(),
        files,
        redactions: Redactions::default(),
    }
}

/// Loads the records as the sidecar does at start, then deploys.
fn deploy_with_loaded_records(w: &World) {
    let records = Records::in_dir(&w.state);
    let manifest = records.load_manifest();
    let extra: BTreeSet<String> = records.load_journal().map(|j| j.paths).unwrap_or_default();
    let options = Options {
        file_mode: 0o644,
        secret_file_mode: 0o600,
        owner: None,
        content_key: gitreload::state::ContentKey::from_bytes([7; 32]),
    };
    deploy::deploy(
        &staged(&w.staging),
        "refs/heads/main",
        Destination {
            dir: &w.dest,
            records: &records,
            options,
        },
        Known {
            manifest: manifest.as_ref(),
            extra_managed: &extra,
            verify: Verify::Hash,
        },
    )
    .unwrap();
    assert_eq!(std::fs::read(w.dest.join("app.yml")).unwrap(), b"a: 1\n");
}

fn manifest_naming(path: &str) -> String {
    serde_json::json!({
        "commit": COMMIT,
        "resolved_ref": "refs/heads/main",
        "files": {
            path: {"file": {"sha256": "00", "executable": false}, "stamp": null}
        }
    })
    .to_string()
}

#[test]
fn a_manifest_naming_a_file_outside_the_destination_cannot_delete_it() {
    let w = world();
    std::fs::write(
        w.state.join("manifest.json"),
        manifest_naming("../outside/victim"),
    )
    .unwrap();
    assert!(Records::in_dir(&w.state).load_manifest().is_none());
    deploy_with_loaded_records(&w);
    assert!(
        w.victim.exists(),
        "the deploy deleted a file outside the destination"
    );
}

#[test]
fn a_journal_naming_a_file_outside_the_destination_cannot_delete_it() {
    let w = world();
    let journal = serde_json::json!({"commit": COMMIT, "paths": ["app.yml", "../outside/victim"]});
    std::fs::write(w.state.join("deploy.journal"), journal.to_string()).unwrap();
    let loaded = Records::in_dir(&w.state).load_journal().unwrap();
    assert!(loaded.paths.is_empty(), "{:?}", loaded.paths);
    deploy_with_loaded_records(&w);
    assert!(
        w.victim.exists(),
        "the deploy deleted a file outside the destination"
    );
}

#[test]
fn a_manifest_with_an_absolute_or_hidden_path_or_a_bad_commit_is_set_aside() {
    let w = world();
    let records = Records::in_dir(&w.state);
    let victim = w.victim.to_str().unwrap().to_string();
    for path in [victim.as_str(), ".git/config", "a/../b", "a//b"] {
        std::fs::write(&records.manifest, manifest_naming(path)).unwrap();
        assert!(records.load_manifest().is_none(), "{path} was trusted");
    }
    let bad_commit = manifest_naming("app.yml").replace(COMMIT, "HEAD");
    std::fs::write(&records.manifest, bad_commit).unwrap();
    assert!(records.load_manifest().is_none(), "commit HEAD was trusted");
    // The same record with a path gitreload deploys is used.
    std::fs::write(&records.manifest, manifest_naming("rules/app.yml")).unwrap();
    let manifest = records.load_manifest().expect("a sound manifest is used");
    assert!(manifest.files.contains_key("rules/app.yml"));
}
