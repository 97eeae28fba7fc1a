//! The manifest and the deploy journal as read back from the state
//! directory (`gitreload::deploy::Records`): whatever bytes those files
//! hold (a torn write, a bug, another process), what the reader returns
//! is safe to act on.
//!
//! Properties:
//! - Reading never panics; a record is either used or set aside.
//! - Every path in a manifest or journal that is used passes the same
//!   rules as a staged path (`checked_path`, not hidden): a damaged record
//!   can never make a deploy write or delete outside the destination.
//! - A manifest that is used names a well-formed commit, and saving it and
//!   reading it again gives the same manifest.
#![no_main]

use std::sync::OnceLock;

use gitreload::deploy::Records;
use gitreload::materialize::{checked_path, is_hidden};
use libfuzzer_sys::fuzz_target;

fn state_dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    // In memory where there is /dev/shm: saving a record fsyncs it, which
    // on a disk would be most of the time spent per input.
    DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() {
            tempfile::TempDir::new_in(shm)
        } else {
            tempfile::TempDir::new()
        }
        .expect("temp dir")
    })
}

fn assert_deployable(path: &str, record: &str) {
    assert!(
        checked_path(path.as_bytes()).is_ok() && !is_hidden(path),
        "{record} names {path:?}, which the path rules refuse, and was used"
    );
}

fuzz_target!(|data: &[u8]| {
    let dir = state_dir().path();
    let records = Records::in_dir(dir);

    std::fs::write(&records.manifest, data).expect("write manifest");
    if let Some(manifest) = records.load_manifest() {
        for path in manifest.files.keys() {
            assert_deployable(path, "the manifest");
        }
        assert!(
            gitreload::git::CommitId::parse(manifest.commit.as_str()).is_some(),
            "the manifest's commit {:?} is not a commit id",
            manifest.commit.as_str()
        );
        gitreload::state::write(&records.manifest, &manifest).expect("save manifest");
        assert_eq!(
            records.load_manifest().as_ref(),
            Some(&manifest),
            "a saved manifest reads back differently"
        );
    }

    std::fs::write(&records.journal, data).expect("write journal");
    if let Some(journal) = records.load_journal() {
        for path in &journal.paths {
            assert_deployable(path, "the journal");
        }
    }
});
