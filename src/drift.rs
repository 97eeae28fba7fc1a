//! Drift: notice when someone else changes the destination.
//!
//! A recursive file watch on the destination turns any change into one
//! stored "look again" signal for the pipeline. The watch only says *that*
//! something changed; the pipeline decides *what* drifted by comparing every
//! managed file with the manifest, so gitreload's own writes (which match
//! the manifest) are never mistaken for drift, and a missed event is caught
//! by the periodic full verification.
//!
//! Promise: the watcher never touches the destination and never blocks the
//! pipeline; a burst of events is one signal.

use std::path::Path;
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;

use crate::deploy::LEFTOVER_PREFIX;

/// Keeps the watch alive; dropping it stops watching.
pub struct DriftWatch {
    _watcher: notify::RecommendedWatcher,
}

/// Watches `dest` recursively and fires `signal` on every change that is
/// not one of gitreload's own temp files.
pub fn watch(dest: &Path, signal: Arc<Notify>) -> Result<DriftWatch, String> {
    std::fs::create_dir_all(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            // Overflow or a watch error: look again, to be safe.
            signal.notify_one();
            return;
        };
        if event.kind.is_access() {
            return;
        }
        let ours = !event.paths.is_empty()
            && event.paths.iter().all(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(LEFTOVER_PREFIX))
            });
        if !ours {
            signal.notify_one();
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dest.display()))?;
    watcher
        .watch(dest, RecursiveMode::Recursive)
        .map_err(|e| format!("cannot watch {}: {e}", dest.display()))?;
    Ok(DriftWatch { _watcher: watcher })
}
