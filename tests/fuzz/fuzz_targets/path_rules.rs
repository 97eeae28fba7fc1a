//! The path rules every tree entry passes before it is staged or deployed
//! (`gitreload::materialize::{checked_path, is_hidden, check_link}` and
//! `gitreload::secrets::deployed_name`).
//!
//! Properties:
//! - `checked_path` accepts exactly the UTF-8 paths of non-empty components
//!   other than `.` and `..`, without NUL, none longer than 255 bytes, and
//!   returns them unchanged: an accepted path never starts with `/`, never
//!   climbs, and joined to a root stays below it.
//! - `is_hidden` is true exactly when a component starts with `.`; the
//!   deployed name of an accepted, visible path (an `.age` file without
//!   its suffix) is itself accepted and visible.
//! - A symlink `check_link` accepts is relative, non-empty, and, resolved
//!   from its own directory, never goes above the deployed root (lexically;
//!   that each name on the way is a directory of the same commit, not a
//!   link, is judged against the whole tree by `check_links`). A link to a
//!   plain relative name is always accepted.
#![no_main]

use std::path::{Component, Path};

use gitreload::materialize::{check_link, checked_path, is_hidden};
use gitreload::secrets::deployed_name;
use libfuzzer_sys::fuzz_target;

/// The input: `PATH 0xFF TARGET` (a tree path and a symlink target; 0xFF
/// never occurs in UTF-8, so seeds and crashes read as text).
struct Input<'a> {
    path: &'a [u8],
    target: &'a [u8],
}

/// The rule for a tree path, written out independently.
fn path_allowed(path: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(path) else {
        return false;
    };
    text.split('/')
        .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0') && c.len() <= 255)
}

/// Depth reached at each step when `target` is resolved from the directory
/// of `link` (the root is depth 0), or `None` once it goes above the root.
fn lowest_depth(link: &str, target: &str) -> Option<i64> {
    let mut depth = link.split('/').count() as i64 - 1;
    let mut lowest = depth;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        lowest = lowest.min(depth);
    }
    (lowest >= 0).then_some(lowest)
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == 0xff);
    let input = Input {
        path: parts.next().unwrap_or_default(),
        target: parts.next().unwrap_or_default(),
    };
    let checked = checked_path(input.path);
    assert_eq!(
        checked.is_ok(),
        path_allowed(input.path),
        "checked_path({:?}) = {checked:?}",
        String::from_utf8_lossy(input.path)
    );
    let Ok(path) = checked else {
        return;
    };
    assert_eq!(path.as_bytes(), input.path, "the accepted path was changed");
    assert!(!path.starts_with('/'));
    let components: Vec<Component<'_>> = Path::new(&path).components().collect();
    assert!(
        components.iter().all(|c| matches!(c, Component::Normal(_))),
        "{path:?} has a component other than a name: {components:?}"
    );
    assert_eq!(components.len(), path.split('/').count());
    let root = Path::new("/dest");
    let joined = root.join(&path);
    assert!(joined.starts_with(root) && joined != root);

    let hidden = is_hidden(&path);
    assert_eq!(hidden, path.split('/').any(|c| c.starts_with('.')));
    if !hidden {
        let (deployed, encrypted) = deployed_name(&path);
        assert_eq!(encrypted, deployed != path);
        assert!(
            checked_path(deployed.as_bytes()).is_ok() && !is_hidden(deployed),
            "{path:?} deploys as {deployed:?}, which the rules refuse"
        );
    }

    let Ok(target) = std::str::from_utf8(input.target) else {
        return;
    };
    match check_link(&path, target) {
        Ok(()) => {
            assert!(!target.is_empty() && !target.starts_with('/') && !target.contains('\0'));
            assert!(
                lowest_depth(&path, target).is_some(),
                "link {path:?} -> {target:?} resolves above the root"
            );
            // A name followed by `..` is no longer refused here: whether
            // the name is a directory of the commit is judged against the
            // whole tree (`check_links`), not one link alone.
        }
        Err(reason) => {
            let plain_names = !target.is_empty()
                && target
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
            assert!(
                !plain_names,
                "link {path:?} -> {target:?} refused ({reason}) though it names a path below its own directory"
            );
        }
    }
});
