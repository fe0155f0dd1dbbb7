//! Durable admin decisions: the state file.
//!
//! Written atomically (temp file in the same directory, fsync, rename, fsync
//! of the directory), so a crash leaves either the old or the new file.
//! Precedence on start and reload: a route whose configured `weight` differs
//! from the one recorded with the decision takes the config's value (the
//! config change is the newer decision); otherwise the recorded live weight
//! stays.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::rollout::RolloutState;

/// The file's content. `version` lets a future format migrate old files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub version: u32,
    pub routes: BTreeMap<String, RouteState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteState {
    /// Live weight in basis points (0..=10000).
    pub weight_bp: u16,
    pub halted: bool,
    /// The route's configured weight (basis points) when this decision was made.
    pub config_weight_bp: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<String>,
}

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "the state file {path} is corrupt ({detail}); it was moved to {aside} and cutover starts from the config weights"
    )]
    Corrupt { path: PathBuf, detail: String, aside: PathBuf },
    #[error("cannot write the state file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Loads the state file. A missing file is an empty state. A corrupt one is
/// moved aside (never overwritten) and reported; the caller starts from the
/// config weights.
pub fn load(path: &Path) -> Result<StateFile, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StateFile::default()),
        Err(source) => return Err(StateError::Read { path: path.to_path_buf(), source }),
    };
    let parsed: Result<StateFile, String> = serde_json::from_slice(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|s: StateFile| {
            if s.version == FORMAT_VERSION { Ok(s) } else { Err(format!("unknown format version {}", s.version)) }
        })
        .and_then(|s| match s.routes.iter().find(|(_, r)| r.weight_bp > 10_000 || r.config_weight_bp > 10_000) {
            Some((name, _)) => Err(format!("route {name}: weight out of range")),
            None => Ok(s),
        });
    match parsed {
        Ok(state) => Ok(state),
        Err(detail) => {
            let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let aside = path.with_extension(format!("corrupt-{stamp}"));
            std::fs::rename(path, &aside).map_err(|source| StateError::Read { path: path.to_path_buf(), source })?;
            Err(StateError::Corrupt { path: path.to_path_buf(), detail, aside })
        }
    }
}

/// Writes the state file atomically.
pub fn save(path: &Path, state: &StateFile) -> Result<(), StateError> {
    let err = |source| StateError::Write { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut bytes = serde_json::to_vec_pretty(state).map_err(|e| err(std::io::Error::other(e)))?;
    bytes.push(b'\n');
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateFile {
        let mut routes = BTreeMap::new();
        routes.insert(
            "web".to_string(),
            RouteState { weight_bp: 2500, halted: false, config_weight_bp: 500, rollout: None, last_outcome: None },
        );
        StateFile { version: FORMAT_VERSION, routes }
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        save(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), sample());
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    #[test]
    fn missing_file_is_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(&dir.path().join("none.json")).unwrap(), StateFile::default());
    }

    #[test]
    fn corrupt_file_is_kept_aside_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{ not json").unwrap();
        let err = load(&path).unwrap_err();
        let StateError::Corrupt { aside, .. } = &err else { panic!("expected Corrupt, got {err}") };
        assert_eq!(std::fs::read(aside).unwrap(), b"{ not json");
        assert!(!path.exists());
        assert!(err.to_string().contains("corrupt"));
    }
}
