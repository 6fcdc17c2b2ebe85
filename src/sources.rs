//! The policy's input files as one unit: read once, stamped, digested.
//!
//! Sits in front of every file-triggered snapshot build (watcher, poll, SIGHUP, admin
//! reload). A reload first compares a [`FileStamp`] (device, inode, size, modification and
//! change times of every input file; no reads) with the one it saw last; only when that
//! differs are the files read, once, into [`PolicyInputs`], whose content digest is
//! compared with the serving one. Only new content is parsed and compiled, and from the
//! very bytes that were digested, so a file edited between the digest and the build can
//! never be served under the old digest.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::policy::{PolicyError, PolicyTexts, read_policy_texts};

/// A file changed within this window of a stamp being taken may change again without
/// its times moving (coarse file-system clocks), so such a stamp is never trusted to mean
/// "unchanged": the contents are digested instead (git's "racy" index entries).
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Why the input files could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("cannot read `{path}`: {message}")]
    Read { path: String, message: String },
}

/// Every input file of a snapshot, as read from disk.
#[derive(Debug)]
pub struct PolicyInputs {
    /// The casbin model and the `*.csv` grant files.
    pub texts: PolicyTexts,
    /// `*.rls.yaml` / `*.rls.yml` filter files, `(name, contents)` by name.
    pub filter_files: Vec<(String, String)>,
    /// sha256 over all of the above, names and contents framed.
    pub digest: String,
}

impl PolicyInputs {
    /// Reads the model, the grant files and the filter files of `config`.
    pub fn read(config: &Config) -> Result<PolicyInputs, SourcesError> {
        let texts = read_policy_texts(&config.policy_model_path(), &config.policy_directory())?;
        let filter_files = read_filter_files(&config.policy_directory())?;
        let digest = digest_of(&texts, &filter_files);
        Ok(PolicyInputs {
            texts,
            filter_files,
            digest,
        })
    }
}

fn digest_of(texts: &PolicyTexts, filter_files: &[(String, String)]) -> String {
    let mut hasher = Sha256::new();
    let mut framed = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    framed(texts.model_text.as_bytes());
    framed(&(texts.files.len() as u64).to_le_bytes());
    for (name, contents) in &texts.files {
        framed(name.as_bytes());
        framed(contents.as_bytes());
    }
    for (name, contents) in filter_files {
        framed(name.as_bytes());
        framed(contents.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Whether a directory entry is an input file by its name: grant files and filter files;
/// dotfiles (a ConfigMap's `..data` internals, editor swap files) are not.
pub fn is_input_name(name: &str) -> bool {
    !name.starts_with('.')
        && (name.ends_with(".csv") || name.ends_with(".rls.yaml") || name.ends_with(".rls.yml"))
}

/// RLS filter files: `*.rls.yaml` / `*.rls.yml` in the policy directory, by name; dotfiles
/// are skipped, symlinked files followed.
fn read_filter_files(directory: &Path) -> Result<Vec<(String, String)>, SourcesError> {
    let read_error = |message: String| SourcesError::Read {
        path: directory.display().to_string(),
        message,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory).map_err(|error| read_error(error.to_string()))? {
        let entry = entry.map_err(|error| read_error(error.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_input_name(&name) || name.ends_with(".csv") {
            continue;
        }
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|error| SourcesError::Read {
            path: name.clone(),
            message: error.to_string(),
        })?;
        files.push((name, text));
    }
    files.sort();
    Ok(files)
}

/// What the metadata of one input file says (symlinks followed; `None` when missing).
#[derive(Debug, Clone, PartialEq, Eq)]
struct StampEntry {
    path: PathBuf,
    identity: Option<FileIdentity>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
    length: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

/// The metadata of every input file at one moment, without reading any of them.
#[derive(Debug, Clone)]
pub struct FileStamp {
    entries: Vec<StampEntry>,
    taken_at: SystemTime,
}

impl FileStamp {
    /// Stats the model and every input file of the policy directory.
    pub fn take(config: &Config) -> FileStamp {
        let taken_at = SystemTime::now();
        let mut paths = vec![config.policy_model_path()];
        if let Ok(entries) = std::fs::read_dir(config.policy_directory()) {
            let mut inputs: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok())
                .filter(|entry| is_input_name(&entry.file_name().to_string_lossy()))
                .map(|entry| entry.path())
                .collect();
            inputs.sort();
            paths.extend(inputs);
        }
        let entries = paths
            .into_iter()
            .map(|path| StampEntry {
                identity: identity_of(&path),
                path,
            })
            .collect();
        FileStamp { entries, taken_at }
    }

    /// Whether `current` certainly describes the same files as this (earlier) stamp. A
    /// stamp taken while a file was fresh never vouches for it.
    pub fn vouches_for(&self, current: &FileStamp) -> bool {
        self.entries == current.entries && !self.is_racy()
    }

    fn is_racy(&self) -> bool {
        let Some(threshold) = self.taken_at.checked_sub(RACY_WINDOW) else {
            return true;
        };
        let threshold = seconds_and_nanos(threshold);
        self.entries.iter().any(|entry| {
            entry.identity.as_ref().is_some_and(|identity| {
                identity.modified >= threshold || identity.changed >= threshold
            })
        })
    }
}

fn seconds_and_nanos(at: SystemTime) -> (i64, i64) {
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => (since.as_secs() as i64, i64::from(since.subsec_nanos())),
        Err(_) => (0, 0),
    }
}

#[cfg(unix)]
fn identity_of(path: &Path) -> Option<FileIdentity> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some(FileIdentity {
        device: metadata.dev(),
        inode: metadata.ino(),
        length: metadata.len(),
        modified: (metadata.mtime(), metadata.mtime_nsec()),
        changed: (metadata.ctime(), metadata.ctime_nsec()),
    })
}

#[cfg(not(unix))]
fn identity_of(path: &Path) -> Option<FileIdentity> {
    let metadata = std::fs::metadata(path).ok()?;
    let modified = metadata.modified().map(seconds_and_nanos).unwrap_or((0, 0));
    Some(FileIdentity {
        device: 0,
        inode: 0,
        length: metadata.len(),
        modified,
        changed: modified,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn config_in(directory: &Path) -> Config {
        let text = r#"
listen: {proxy: "127.0.0.1:8080", admin: "127.0.0.1:9180"}
upstream: {address: "127.0.0.1:8088"}
policy: {model: model.conf, directory: policies}
auth: {}
routes: {}
"#;
        Config::from_yaml(text, "test.yaml", directory.to_path_buf()).unwrap()
    }

    fn backdate(path: &Path) {
        let old = SystemTime::now() - Duration::from_secs(60);
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(old).unwrap();
    }

    fn fixture() -> (tempfile::TempDir, Config) {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("model.conf"), "model").unwrap();
        std::fs::create_dir(directory.path().join("policies")).unwrap();
        std::fs::write(directory.path().join("policies/10-a.csv"), "p, a, b, c\n").unwrap();
        let config = config_in(directory.path());
        (directory, config)
    }

    #[test]
    fn a_fresh_stamp_never_vouches_even_for_identical_metadata() {
        let (_directory, config) = fixture();
        let first = FileStamp::take(&config);
        let second = FileStamp::take(&config);
        // The files were just written: their change time is inside the racy window.
        assert!(!first.vouches_for(&second));
    }

    #[test]
    fn an_old_stamp_vouches_for_unchanged_files_and_not_for_edits() {
        let (directory, config) = fixture();
        let csv = directory.path().join("policies/10-a.csv");
        let mut first = FileStamp::take(&config);
        // As if the stamp had been taken well after the files were last written.
        first.taken_at = SystemTime::now() + Duration::from_secs(10);
        let second = FileStamp::take(&config);
        assert!(first.vouches_for(&second));

        std::fs::write(&csv, "p, a, b, d\n").unwrap();
        backdate(&csv);
        assert!(!first.vouches_for(&FileStamp::take(&config)));
    }

    #[test]
    fn added_removed_and_ignored_files() {
        let (directory, config) = fixture();
        let mut first = FileStamp::take(&config);
        first.taken_at = SystemTime::now() + Duration::from_secs(10);
        // Dotfiles and other extensions (editor swap files) are not inputs.
        std::fs::write(directory.path().join("policies/.10-a.csv.swp"), "x").unwrap();
        std::fs::write(directory.path().join("policies/notes.txt"), "x").unwrap();
        assert!(first.vouches_for(&FileStamp::take(&config)));
        std::fs::write(
            directory.path().join("policies/20-b.rls.yaml"),
            "filters: []",
        )
        .unwrap();
        assert!(!first.vouches_for(&FileStamp::take(&config)));
        std::fs::remove_file(directory.path().join("policies/20-b.rls.yaml")).unwrap();
        std::fs::remove_file(directory.path().join("policies/10-a.csv")).unwrap();
        assert!(!first.vouches_for(&FileStamp::take(&config)));
    }

    #[test]
    fn the_digest_covers_every_input_and_nothing_else() {
        let (directory, config) = fixture();
        let first = PolicyInputs::read(&config).unwrap();
        std::fs::write(directory.path().join("policies/notes.txt"), "x").unwrap();
        assert_eq!(PolicyInputs::read(&config).unwrap().digest, first.digest);
        std::fs::write(
            directory.path().join("policies/20-b.rls.yml"),
            "filters: []",
        )
        .unwrap();
        let with_filter = PolicyInputs::read(&config).unwrap();
        assert_ne!(with_filter.digest, first.digest);
        assert_eq!(with_filter.filter_files.len(), 1);
        std::fs::write(directory.path().join("model.conf"), "model 2").unwrap();
        assert_ne!(
            PolicyInputs::read(&config).unwrap().digest,
            with_filter.digest
        );
    }
}
