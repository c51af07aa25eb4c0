//! The agent's memory of its runs, in the state directory: a run is marked
//! started before it starts and its report is kept before it is sent, so an
//! agent that restarts re-sends a finished run's report instead of doing the
//! run again, and says a run was interrupted instead of guessing.

use crate::api::provisioning::{RunReport, RunState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A run's entry; `R` is the report kept (a provisioning run's by default).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Entry<R = RunReport> {
    Started,
    Done { report: R },
}

pub struct Journal<R = RunReport> {
    dir: PathBuf,
    kind: std::marker::PhantomData<R>,
}

impl Journal<RunReport> {
    /// The journal of provisioning runs.
    pub fn new(state: &Path) -> Self {
        Self::named(state, "runs")
    }

    pub fn done(&self, report: &RunReport) -> std::io::Result<()> {
        self.finished(&report.id, report)
    }
}

impl<R: Serialize + DeserializeOwned> Journal<R> {
    /// The journal in `<state>/<name>`.
    pub fn named(state: &Path, name: &str) -> Self {
        Self { dir: state.join(name), kind: std::marker::PhantomData }
    }

    /// The file of run `id`; ids that are not plain names have none.
    fn path(&self, id: &str) -> Option<PathBuf> {
        let plain = !id.is_empty() && id.len() <= 200 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        plain.then(|| self.dir.join(format!("{id}.json")))
    }

    pub fn get(&self, id: &str) -> Option<Entry<R>> {
        let bytes = std::fs::read(self.path(id)?).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn put(&self, id: &str, entry: &Entry<R>) -> std::io::Result<()> {
        let path = self.path(id).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("run id {id:?} is not a plain name"))
        })?;
        let bytes = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        super::link::write_private(&path, &bytes)
    }

    pub fn started(&self, id: &str) -> std::io::Result<()> {
        self.put(id, &Entry::Started)
    }

    /// Keeps the report of run `id`, before it is sent.
    pub fn finished(&self, id: &str, report: &R) -> std::io::Result<()>
    where
        R: Clone,
    {
        self.put(id, &Entry::Done { report: report.clone() })
    }
}

/// The report of a run found started but not finished: the agent stopped in
/// the middle of it.
pub fn interrupted(id: &str) -> RunReport {
    RunReport {
        id: id.to_string(),
        state: RunState::Failed,
        step: None,
        reason: Some("AgentRestarted".into()),
        message: Some("the agent restarted while this run was under way; the run is done again".into()),
        root_device: None,
        steps: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_remembered_across_restarts() {
        let dir = std::env::temp_dir().join(format!("girder-agent-runs-{:08x}", rand::random::<u32>()));
        let journal = Journal::new(&dir);
        assert_eq!(journal.get("s1-deploy-1"), None);
        journal.started("s1-deploy-1").unwrap();
        assert_eq!(Journal::new(&dir).get("s1-deploy-1"), Some(Entry::Started));
        let mut report = interrupted("s1-deploy-1");
        report.state = RunState::Succeeded;
        journal.done(&report).unwrap();
        assert_eq!(Journal::new(&dir).get("s1-deploy-1"), Some(Entry::Done { report }));
        assert!(journal.started("../escape").is_err());
        assert_eq!(journal.get("../escape"), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
