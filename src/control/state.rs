//! Durable admin decisions: the state file.
//!
//! Written atomically (temp file in the same directory, fsync, rename, fsync
//! of the directory), so a crash leaves either the old or the new file.
//! Precedence on start and reload: a route whose configured `weight` differs
//! from the one recorded with the decision takes the config's value (the
//! config change is the newer decision); otherwise the recorded live weight
//! stays.
//!
//! Everything restored is checked first (weights in range, a rollout's plan
//! valid and its step within it): a file that parses but holds an impossible
//! state is kept aside like a corrupt one, under a name no other kept-aside
//! file has, and cutover starts from the config weights.

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

/// A route's last outcome longer than this is not one cutover wrote.
const MAX_OUTCOME: usize = 4096;

impl StateFile {
    /// Checks everything a restore relies on; the error names the route and
    /// what is impossible.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != FORMAT_VERSION {
            return Err(format!("unknown format version {}", self.version));
        }
        for (name, route) in &self.routes {
            route.validate().map_err(|e| format!("route {name:?}: {e}"))?;
        }
        Ok(())
    }
}

impl RouteState {
    fn validate(&self) -> Result<(), String> {
        if self.weight_bp > 10_000 || self.config_weight_bp > 10_000 {
            return Err(format!(
                "weight out of range (weight_bp {}, config_weight_bp {}; at most 10000)",
                self.weight_bp, self.config_weight_bp
            ));
        }
        if self.last_outcome.as_ref().is_some_and(|o| o.len() > MAX_OUTCOME) {
            return Err(format!("last_outcome is longer than {MAX_OUTCOME} bytes"));
        }
        let Some(rollout) = &self.rollout else { return Ok(()) };
        rollout.plan.validate().map_err(|e| format!("rollout plan: {e}"))?;
        let steps = rollout.plan.steps_bp.len();
        if rollout.step >= steps {
            return Err(format!(
                "rollout step {} is past its plan of {steps} step{}",
                rollout.step.saturating_add(1),
                if steps == 1 { "" } else { "s" }
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "the state file {path} is corrupt ({detail}); it was moved to {aside} and cutover starts from the config weights"
    )]
    Corrupt { path: PathBuf, detail: String, aside: PathBuf },
    #[error(
        "the state file {path} holds an impossible state ({detail}); it was moved to {aside} and cutover starts from \
         the config weights"
    )]
    Invalid { path: PathBuf, detail: String, aside: PathBuf },
    #[error("cannot write the state file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Loads the state file. A missing file is an empty state. A corrupt one, or
/// one that holds an impossible state, is moved aside (never overwriting
/// another) and reported; the caller starts from the config weights.
pub fn load(path: &Path) -> Result<StateFile, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StateFile::default()),
        Err(source) => return Err(StateError::Read { path: path.to_path_buf(), source }),
    };
    let stamp = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let read = |source| StateError::Read { path: path.to_path_buf(), source };
    match serde_json::from_slice::<StateFile>(&bytes) {
        Err(e) => {
            let aside = keep_aside(path, stamp()).map_err(read)?;
            Err(StateError::Corrupt { path: path.to_path_buf(), detail: e.to_string(), aside })
        }
        Ok(state) => match state.validate() {
            Ok(()) => Ok(state),
            Err(detail) => {
                let aside = keep_aside(path, stamp()).map_err(read)?;
                Err(StateError::Invalid { path: path.to_path_buf(), detail, aside })
            }
        },
    }
}

/// Moves the file at `path` to `<stem>.corrupt-<stamp>` (then `-2`, `-3`...
/// when that name is taken): a hard link never replaces an existing file, so
/// two bad files in the same second are both kept.
fn keep_aside(path: &Path, stamp: u64) -> std::io::Result<PathBuf> {
    for n in 1..=1000u32 {
        let suffix = if n == 1 { String::new() } else { format!("-{n}") };
        let aside = path.with_extension(format!("corrupt-{stamp}{suffix}"));
        match std::fs::hard_link(path, &aside) {
            Ok(()) => {
                std::fs::remove_file(path)?;
                return Ok(aside);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            // A filesystem without hard links: rename, onto a free name only.
            Err(_) if std::fs::symlink_metadata(&aside).is_ok() => continue,
            Err(_) => {
                std::fs::rename(path, &aside)?;
                return Ok(aside);
            }
        }
    }
    Err(std::io::Error::other(format!("1000 kept-aside copies of {} already exist", path.display())))
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

    fn rollout(steps_bp: Vec<u16>, step: usize) -> RolloutState {
        RolloutState {
            plan: super::super::rollout::Plan {
                steps_bp,
                interval: std::time::Duration::from_secs(600),
                max_error_rate: 0.01,
                max_p99: None,
                min_requests: 100,
            },
            step,
            paused: false,
            extensions: 0,
        }
    }

    #[test]
    fn a_restored_state_is_checked_in_full() {
        let mut ok = sample();
        ok.routes.get_mut("web").unwrap().rollout = Some(rollout(vec![500, 2500], 1));
        assert_eq!(ok.validate(), Ok(()));
        type Spoil = fn(&mut RouteState);
        let cases: [(Spoil, &str); 5] = [
            (
                |r| r.rollout = Some(rollout(vec![500, 2500], 2)),
                "route \"web\": rollout step 3 is past its plan of 2 steps",
            ),
            (
                |r| r.rollout = Some(rollout(vec![], 0)),
                "route \"web\": rollout plan: steps must list at least one weight",
            ),
            (|r| r.rollout = Some(rollout(vec![2500, 500], 0)), "route \"web\": rollout plan: steps must increase"),
            (
                |r| r.weight_bp = 10_001,
                "route \"web\": weight out of range (weight_bp 10001, config_weight_bp 500; at most 10000)",
            ),
            (|r| r.last_outcome = Some("x".repeat(5000)), "route \"web\": last_outcome is longer than 4096 bytes"),
        ];
        for (spoil, expected) in cases {
            let mut state = sample();
            spoil(state.routes.get_mut("web").unwrap());
            assert_eq!(state.validate().unwrap_err(), expected);
        }
        let mut later = sample();
        later.version = 2;
        assert_eq!(later.validate().unwrap_err(), "unknown format version 2");
    }

    #[test]
    fn an_impossible_state_is_kept_aside_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut state = sample();
        state.routes.get_mut("web").unwrap().rollout = Some(rollout(vec![500, 2500], 7));
        let text = serde_json::to_vec(&state).unwrap();
        std::fs::write(&path, &text).unwrap();
        let err = load(&path).unwrap_err();
        let StateError::Invalid { aside, detail, .. } = &err else { panic!("expected Invalid, got {err}") };
        assert_eq!(detail, "route \"web\": rollout step 8 is past its plan of 2 steps");
        assert_eq!(std::fs::read(aside).unwrap(), text);
        assert!(!path.exists());
    }

    #[test]
    fn two_bad_files_in_the_same_second_are_both_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut kept = Vec::new();
        for content in ["first", "second", "third"] {
            std::fs::write(&path, content).unwrap();
            kept.push(keep_aside(&path, 1_700_000_000).unwrap());
        }
        let names: Vec<String> = kept.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["state.corrupt-1700000000", "state.corrupt-1700000000-2", "state.corrupt-1700000000-3"]);
        let contents: Vec<String> = kept.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
        assert_eq!(contents, ["first", "second", "third"]);
        assert!(!path.exists());
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
