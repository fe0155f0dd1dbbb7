//! A single instance's store: the state file, written atomically.

use std::path::PathBuf;

use super::{Change, Store};
use crate::control::ControlError;
use crate::control::state::{self, StateFile};

pub struct FileStore {
    /// None: `[state]` is not configured; decisions live in memory only.
    path: Option<PathBuf>,
}

impl FileStore {
    pub fn new(path: Option<PathBuf>) -> FileStore {
        FileStore { path }
    }
}

impl Store for FileStore {
    fn write(&mut self, _change: &Change<'_>, all: &StateFile) -> Result<(), ControlError> {
        self.cache(all)
    }

    fn cache(&mut self, all: &StateFile) -> Result<(), ControlError> {
        let Some(path) = &self.path else { return Ok(()) };
        state::save(path, all).map_err(|e| {
            tracing::error!("{e}");
            ControlError::Internal(e.to_string())
        })
    }
}
