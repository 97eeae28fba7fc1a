//! Drift: notice when someone else changes the destination.
//!
//! A recursive file watch on the destination turns any change into one
//! stored "look again" signal for the pipeline. The watch only says *that*
//! something changed; the pipeline decides *what* drifted by comparing every
//! managed file with the manifest, so gitreload's own writes (which match
//! the manifest) are never mistaken for drift, and a missed event is caught
//! by the periodic full verification.
//!
//! Promise: the watcher never touches the destination (it does not even
//! create it: only deploy writes there) and never blocks the pipeline; a
//! burst of events is one signal.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;

use crate::deploy::LEFTOVER_PREFIX;

/// Keeps the watch alive; dropping it stops watching.
pub struct DriftWatch {
    _watcher: Arc<Mutex<notify::RecommendedWatcher>>,
}

/// Watches `dest` recursively and fires `signal` on every change that is
/// not one of gitreload's own temp files. A destination that does not
/// exist yet is not created here (only deploy writes there): its parent is
/// watched until the first deploy creates it, then the destination itself.
pub fn watch(dest: &Path, signal: Arc<Notify>) -> Result<DriftWatch, String> {
    let cannot = |e: notify::Error| format!("cannot watch {}: {e}", dest.display());
    let exists = dest.is_dir();
    let (created_tx, created_rx) = std::sync::mpsc::channel::<()>();
    let kick = created_tx.clone();
    // True while the parent is watched, waiting for the destination.
    let awaiting = Arc::new(AtomicBool::new(!exists));
    let waiting = awaiting.clone();
    let awaited = dest.to_path_buf();
    let on_change = signal.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if waiting.load(Ordering::SeqCst) {
            // Watching the parent: only the destination's arrival matters.
            if event.is_ok_and(|e| e.paths.contains(&awaited)) {
                let _ = created_tx.send(());
            }
            return;
        }
        let Ok(event) = event else {
            // Overflow or a watch error: look again, to be safe.
            on_change.notify_one();
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
            on_change.notify_one();
        }
    })
    .map_err(cannot)?;
    let watcher = Arc::new(Mutex::new(watcher));
    if exists {
        lock(&watcher)
            .watch(dest, RecursiveMode::Recursive)
            .map_err(cannot)?;
        return Ok(DriftWatch { _watcher: watcher });
    }
    let parent = dest
        .parent()
        .filter(|p| p.is_dir())
        .ok_or_else(|| {
            format!(
                "cannot watch {}: neither it nor its parent exists",
                dest.display()
            )
        })?
        .to_path_buf();
    lock(&watcher)
        .watch(&parent, RecursiveMode::NonRecursive)
        .map_err(cannot)?;
    if dest.is_dir() {
        // Created between the first look and the parent's watch.
        let _ = kick.send(());
    }
    drop(kick);
    // The handler runs on the watcher's own thread, which cannot add a
    // watch from inside it: a small thread does, once. It ends when the
    // destination is watched or the watch is dropped (the sender goes).
    let pending = Arc::downgrade(&watcher);
    let shown = dest.display().to_string();
    let dest: PathBuf = dest.to_path_buf();
    std::thread::Builder::new()
        .name("drift-watch".into())
        .spawn(move || {
            while created_rx.recv().is_ok() {
                let Some(watcher) = pending.upgrade() else {
                    return;
                };
                let mut watcher = lock(&watcher);
                // An event the parent's watch sent for the destination
                // arriving: watch it instead, and look once.
                if dest.is_dir() && watcher.watch(&dest, RecursiveMode::Recursive).is_ok() {
                    awaiting.store(false, Ordering::SeqCst);
                    let _ = watcher.unwatch(&parent);
                    signal.notify_one();
                    return;
                }
            }
        })
        .map_err(|e| format!("cannot watch {shown}: {e}"))?;
    Ok(DriftWatch { _watcher: watcher })
}

fn lock(
    watcher: &Mutex<notify::RecommendedWatcher>,
) -> std::sync::MutexGuard<'_, notify::RecommendedWatcher> {
    watcher.lock().unwrap_or_else(|e| e.into_inner())
}
