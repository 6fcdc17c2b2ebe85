//! What triggers a policy reload: file changes (debounced) and SIGHUP. The admin API's
//! `POST /api/admin/reload` calls [`AppState::reload`] directly.
//!
//! The watcher observes directories, not files, because editors and Kubernetes replace
//! files instead of writing them in place: an atomic rename, or a ConfigMap's `..data`
//! symlink swap, never touches the old inode. Any event under the watched directories
//! starts a quiet period; when it ends, one reload runs. A reload whose content hashes to
//! the serving digest changes nothing, so spurious events are harmless.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

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
            && event.paths.iter().any(|path| relevant.matches(path))
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

/// Which file events can change the policy.
struct RelevantPaths {
    policy_directory: PathBuf,
    model_path: PathBuf,
    model_directory: PathBuf,
}

impl RelevantPaths {
    fn matches(&self, path: &Path) -> bool {
        if path.starts_with(&self.policy_directory) || path == self.model_path {
            return true;
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
        let _ = state.reload(ReloadTrigger::FileChange);
    }
}

/// A cheap fingerprint of the policy files: names, sizes and modification times of the
/// model and of every entry of the policy directory (symlinks followed).
fn stat_fingerprint(
    model: &Path,
    directory: &Path,
) -> Vec<(String, u64, Option<std::time::SystemTime>)> {
    let describe = |path: &Path| {
        let metadata = std::fs::metadata(path).ok();
        (
            path.display().to_string(),
            metadata
                .as_ref()
                .map(|metadata| metadata.len())
                .unwrap_or(0),
            metadata.and_then(|metadata| metadata.modified().ok()),
        )
    };
    let mut fingerprint = vec![describe(model)];
    if let Ok(entries) = std::fs::read_dir(directory) {
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .collect();
        paths.sort();
        fingerprint.extend(paths.iter().map(|path| describe(path)));
    }
    fingerprint
}

/// The safety net under the watcher: file systems where inotify sees nothing (NFS, some
/// container mounts) or a policy directory replaced wholesale (which drops the watch).
/// Every `interval` the files' sizes and times are compared, and a change reloads.
pub fn poll_policy_files(state: Arc<AppState>, interval: Duration) -> std::io::Result<()> {
    let model = state.config.policy_model_path();
    let directory = state.config.policy_directory();
    std::thread::Builder::new()
        .name("datagate-policy-poll".to_string())
        .spawn(move || {
            let mut last = stat_fingerprint(&model, &directory);
            loop {
                std::thread::sleep(interval);
                let current = stat_fingerprint(&model, &directory);
                if current != last {
                    last = current;
                    let _ = state.reload(ReloadTrigger::FileChange);
                }
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
