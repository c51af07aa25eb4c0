//! The role-dependency engine: validation of the role graph and the plan of
//! a workload. Pure: no Kubernetes, no I/O, so every rule is tested here.

mod anneal;

pub use anneal::{Binding, Decision, anneal};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Where a role's parents must be Active before it may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Scope {
    /// On the same node.
    #[default]
    Node,
    /// Every binding of the parent in the workload: a sync point.
    Cluster,
}

/// A role as the graph sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleDef {
    pub name: String,
    pub requires: Vec<String>,
    pub scope: Scope,
}

/// The state of one role bound to one node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum BindingState {
    /// Placed, not yet evaluated.
    Proposed,
    /// Waiting on a parent, or a parent failed.
    Blocked,
    /// Every parent is Active: ready to run.
    Todo,
    /// The task is running on the node.
    Running,
    /// Applied.
    Active,
    /// The task failed after its retries.
    Error,
}

/// Why a set of roles cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// A role is named but does not exist.
    #[error("{}", missing_message(.role, .required_by.as_deref()))]
    MissingRole { role: String, required_by: Option<String> },
    /// A role requires a parent the workload does not place.
    #[error("role {required_by} requires {role}, which this workload does not place: add {role} to spec.roles")]
    NotPlaced { role: String, required_by: String },
    /// A role exists but its object cannot be read.
    #[error("role {role} cannot be read ({error}); fix the object or delete and re-create it")]
    UnreadableRole { role: String, error: String },
    /// The roles require each other in a circle; the path starts and ends with the same role.
    #[error("dependency cycle: {} (each role requires the next); remove one of these requirements", .0.join(" -> "))]
    Cycle(Vec<String>),
}

fn missing_message(role: &str, required_by: Option<&str>) -> String {
    match required_by {
        Some(child) => {
            format!("role {child} requires {role}, which does not exist in this namespace")
        }
        None => format!("role {role} does not exist in this namespace"),
    }
}

impl GraphError {
    /// Stable CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            GraphError::MissingRole { .. } => "MissingRole",
            GraphError::NotPlaced { .. } => "RoleNotPlaced",
            GraphError::UnreadableRole { .. } => "UnreadableRole",
            GraphError::Cycle(_) => "DependencyCycle",
        }
    }
}

/// One layer of a plan: roles whose parents are all in earlier layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// Sorted role names.
    pub roles: Vec<String>,
    /// A Cluster-scoped role with parents is in this layer: it waits for
    /// every binding of its parents, across all nodes.
    pub barrier: bool,
}

/// The roles of a graph, indexed by name.
#[derive(Clone, Debug, Default)]
pub struct RoleGraph {
    roles: BTreeMap<String, RoleDef>,
    /// Roles that exist but cannot be read (malformed objects), with why.
    unreadable: BTreeMap<String, String>,
}

impl RoleGraph {
    pub fn new(roles: impl IntoIterator<Item = RoleDef>) -> Self {
        Self { roles: roles.into_iter().map(|r| (r.name.clone(), r)).collect(), unreadable: BTreeMap::new() }
    }

    /// Adds roles that exist but cannot be read, so that what depends on them
    /// says so instead of calling them missing.
    pub fn with_unreadable(mut self, unreadable: impl IntoIterator<Item = (String, String)>) -> Self {
        self.unreadable.extend(unreadable);
        self
    }

    /// The error for a role that is not in the graph.
    fn absent(&self, role: &str, required_by: Option<&str>) -> GraphError {
        match self.unreadable.get(role) {
            Some(error) => GraphError::UnreadableRole { role: role.to_string(), error: error.clone() },
            None => GraphError::MissingRole { role: role.to_string(), required_by: required_by.map(str::to_string) },
        }
    }

    pub fn get(&self, name: &str) -> Option<&RoleDef> {
        self.roles.get(name)
    }

    /// Checks that `role` and all its ancestors exist and that no cycle runs
    /// through its ancestry.
    pub fn check_role(&self, role: &str) -> Result<(), GraphError> {
        let mut ancestry = BTreeSet::new();
        let mut stack = vec![(role.to_string(), None::<String>)];
        while let Some((name, child)) = stack.pop() {
            let Some(def) = self.roles.get(&name) else {
                return Err(self.absent(&name, child.as_deref()));
            };
            if ancestry.insert(name.clone()) {
                stack.extend(def.requires.iter().rev().map(|p| (p.clone(), Some(name.clone()))));
            }
        }
        match find_cycle(&ancestry, |name| self.parents(name)) {
            Some(cycle) => Err(GraphError::Cycle(cycle)),
            None => Ok(()),
        }
    }

    /// The layered plan of the roles a workload places. Every placed role
    /// must exist, every parent of a placed role must be placed too, and the
    /// placed roles must be acyclic.
    pub fn plan(&self, placed: &[String]) -> Result<Vec<Layer>, GraphError> {
        let placed: BTreeSet<&str> = placed.iter().map(String::as_str).collect();
        for &name in &placed {
            let def = self.roles.get(name).ok_or_else(|| self.absent(name, None))?;
            for parent in &def.requires {
                if !self.roles.contains_key(parent) {
                    return Err(self.absent(parent, Some(name)));
                }
                if !placed.contains(parent.as_str()) {
                    return Err(GraphError::NotPlaced { role: parent.clone(), required_by: name.to_string() });
                }
            }
        }
        let names: BTreeSet<String> = placed.iter().map(|s| s.to_string()).collect();
        if let Some(cycle) = find_cycle(&names, |name| self.parents(name)) {
            return Err(GraphError::Cycle(cycle));
        }

        // Longest-path layering: a role sits one layer below its deepest parent.
        let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
        while depth.len() < placed.len() {
            for &name in &placed {
                if depth.contains_key(name) {
                    continue;
                }
                let parents = &self.roles[name].requires;
                if parents.iter().all(|p| depth.contains_key(p.as_str())) {
                    let d = parents.iter().map(|p| depth[p.as_str()] + 1).max().unwrap_or(0);
                    depth.insert(name, d);
                }
            }
        }
        let layer_count = depth.values().max().map_or(0, |d| d + 1);
        let mut layers: Vec<Layer> = (0..layer_count).map(|_| Layer { roles: Vec::new(), barrier: false }).collect();
        for (name, d) in depth {
            let def = &self.roles[name];
            let layer = &mut layers[d];
            layer.roles.push(name.to_string());
            layer.barrier |= def.scope == Scope::Cluster && !def.requires.is_empty();
        }
        Ok(layers)
    }

    fn parents<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + use<'a> {
        self.roles.get(name).into_iter().flat_map(|def| def.requires.iter().map(String::as_str))
    }
}

/// Finds a cycle among `nodes` (edges from `edges`, ignoring targets outside
/// `nodes`), deterministically: the returned path starts at the smallest
/// member of the cycle and ends with it again.
fn find_cycle<'a, 'e, I>(nodes: &'a BTreeSet<String>, edges: impl Fn(&str) -> I) -> Option<Vec<String>>
where
    I: Iterator<Item = &'e str>,
{
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for start in nodes {
        if marks.contains_key(start.as_str()) {
            continue;
        }
        // Iterative depth-first search; `path` is the chain of open nodes.
        let mut path: Vec<&str> = vec![start];
        let mut pending: Vec<Vec<&str>> = vec![sorted_targets(nodes, edges(start))];
        marks.insert(start, Mark::Open);
        while let Some(targets) = pending.last_mut() {
            match targets.pop() {
                Some(next) => match marks.get(next) {
                    Some(Mark::Open) => {
                        let from = path.iter().position(|n| *n == next).unwrap_or(0);
                        return Some(rotate_cycle(&path[from..]));
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(next, Mark::Open);
                        path.push(next);
                        pending.push(sorted_targets(nodes, edges(next)));
                    }
                },
                None => {
                    pending.pop();
                    if let Some(done) = path.pop() {
                        marks.insert(done, Mark::Done);
                    }
                }
            }
        }
    }
    None
}

/// Targets inside `nodes`, reversed so that popping visits them in order.
fn sorted_targets<'a, 'e>(nodes: &'a BTreeSet<String>, targets: impl Iterator<Item = &'e str>) -> Vec<&'a str> {
    let mut targets: Vec<&str> = targets.filter_map(|t| nodes.get(t).map(String::as_str)).collect();
    targets.sort_unstable_by(|a, b| b.cmp(a));
    targets.dedup();
    targets
}

fn rotate_cycle(members: &[&str]) -> Vec<String> {
    let smallest = members.iter().enumerate().min_by_key(|(_, n)| **n).map_or(0, |(i, _)| i);
    let mut cycle: Vec<String> =
        members[smallest..].iter().chain(&members[..smallest]).map(|s| s.to_string()).collect();
    if let Some(first) = cycle.first().cloned() {
        cycle.push(first);
    }
    cycle
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Node => "Node",
            Scope::Cluster => "Cluster",
        })
    }
}

#[cfg(test)]
mod tests;
