//! What triggers a policy reload: file changes (debounced) and SIGHUP. The admin API's
//! `POST /api/admin/reload` calls [`AppState::reload`] directly.
//!
//! The watcher observes directories, not files, because editors and Kubernetes replace
//! files instead of writing them in place: an atomic rename, or a ConfigMap's `..data`
//! symlink swap, never touches the old inode. Only events that can change a file count
//! (create, modify, rename, remove; not the open/read/close events our own reads cause,
//! which once made the watcher reload itself in a loop), and only on input files. Such an
//! event starts a quiet period; when it ends, one reload runs, which first compares the
//! files' metadata with what it saw last and then their content digest with the serving
//! one ([`crate::sources`]): nothing is parsed or compiled unless the content changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};

use crate::state::{AppState, ReloadTrigger};

/// Starts the watcher thread. The returned watcher must be kept alive.
pub fn watch_policy_files(state: Arc<AppState>) -> notify::Result<notify::RecommendedWatcher> {
    let (sender, receiver) = channel::<()>();
    let policy_directory = state.config.policy_directory();
    let model_path = state.config.policy_model_path();
    let model_directory = match model_path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let relevant = RelevantPaths {
        policy_directory: policy_directory.clone(),
        model_path: model_path.clone(),
        model_directory: model_directory.clone(),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && can_change_a_file(&event)
            && (event.need_rescan() || event.paths.iter().any(|path| relevant.matches(path)))
        {
            let _ = sender.send(());
        }
    })?;
    // Recursive for the policy directory, so ConfigMap-style `..data/` targets are seen;
    // the model's directory only at its top level (it may be a whole repository).
    watcher.watch(&policy_directory, RecursiveMode::Recursive)?;
    if !model_directory.starts_with(&policy_directory) {
        watcher.watch(&model_directory, RecursiveMode::NonRecursive)?;
    }
    let debounce = state.config.policy.debounce;
    std::thread::Builder::new()
        .name("datagate-policy-watch".to_string())
        .spawn(move || debounce_loop(state, receiver, debounce))
        .map_err(|error| notify::Error::generic(&error.to_string()))?;
    Ok(watcher)
}

/// Whether an event can mean changed contents: not the open, read and close-after-read
/// events that every read of the files (ours included) causes, nor access-time updates.
fn can_change_a_file(event: &notify::Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => true,
    }
}

/// Which file events can change the policy.
struct RelevantPaths {
    policy_directory: PathBuf,
    model_path: PathBuf,
    model_directory: PathBuf,
}

impl RelevantPaths {
    fn matches(&self, path: &Path) -> bool {
        if path == self.model_path || path == self.policy_directory {
            return true;
        }
        if path.starts_with(&self.policy_directory) {
            // Input files, and a ConfigMap's `..data` / `..<timestamp>` swap; not editor
            // swap files or notes beside the policies.
            return path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("..") || crate::sources::is_input_name(name));
        }
        // A ConfigMap mount swaps `..data` (and writes `..2024_…` directories) beside the
        // model file; editors may write a temporary file and rename it over the model.
        path.parent() == Some(self.model_directory.as_path())
            && path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| {
                    name.starts_with("..")
                        || self
                            .model_path
                            .file_name()
                            .and_then(|model| model.to_str())
                            .is_some_and(|model| name.contains(model))
                })
    }
}

fn debounce_loop(
    state: Arc<AppState>,
    receiver: std::sync::mpsc::Receiver<()>,
    debounce: Duration,
) {
    while receiver.recv().is_ok() {
        loop {
            match receiver.recv_timeout(debounce) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        // Errors are logged, counted and kept for the status endpoint by `reload`.
        let _ = state.reload_if_changed(ReloadTrigger::FileChange);
    }
}

/// The safety net under the watcher: file systems where inotify sees nothing (NFS, some
/// container mounts) or a policy directory replaced wholesale (which drops the watch).
/// Every `interval` the files' metadata is compared with what the last read saw (no
/// file is read); when it differs, their content digest decides whether to rebuild.
pub fn poll_policy_files(state: Arc<AppState>, interval: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("datagate-policy-poll".to_string())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                let _ = state.reload_if_changed(ReloadTrigger::FileChange);
            }
        })?;
    Ok(())
}

/// Reloads on every SIGHUP, on a thread of its own.
pub fn reload_on_sighup(state: Arc<AppState>) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new()
        .name("datagate-sighup".to_string())
        .spawn(move || {
            for _ in signals.forever() {
                tracing::info!("SIGHUP: reloading policy");
                let _ = state.reload(ReloadTrigger::Signal);
            }
        })?;
    Ok(())
}
