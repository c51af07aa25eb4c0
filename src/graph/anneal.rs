//! The annealer: one pass over the bindings of a workload (role x node),
//! deciding which may run next. Pure: the controller feeds it the current
//! states and applies what it returns.
//!
//! Rules:
//! - a binding becomes Todo only when every parent is Active: on the same
//!   node for a Node-scoped role, on every node for a Cluster-scoped one;
//! - a binding whose ancestor failed is Blocked, and says which one to fix;
//! - one task per node at a time, and at most `max_in_flight` in all;
//! - Running, Active and Error bindings are left alone (re-running is an
//!   explicit act, done by the caller resetting the binding to Proposed).

use super::{BindingState, RoleGraph, Scope};
use std::collections::{BTreeMap, BTreeSet};

/// One role on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub role: String,
    pub node: String,
    pub state: BindingState,
    /// Why this binding may not start even when ready (its node's agent is
    /// away, its inputs are invalid); it stays Todo and says so.
    pub hold: Option<String>,
}

/// What the annealer decided for one binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub role: String,
    pub node: String,
    pub state: BindingState,
    /// Why, for people: what it waits on, or which ancestor to fix.
    pub message: String,
}

type Key<'a> = (&'a str, &'a str);

/// One annealer pass over the bindings of an acyclic graph (check it with
/// [`RoleGraph::plan`] first). Returns a decision for every binding.
pub fn anneal(graph: &RoleGraph, bindings: &[Binding], max_in_flight: usize) -> Vec<Decision> {
    let state: BTreeMap<Key, BindingState> =
        bindings.iter().map(|b| ((b.role.as_str(), b.node.as_str()), b.state)).collect();
    let mut by_role: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for b in bindings {
        by_role.entry(b.role.as_str()).or_default().push(b.node.as_str());
    }
    let view = View { graph, state: &state, by_role: &by_role };

    let mut decisions: Vec<Decision> = bindings
        .iter()
        .map(|b| {
            let (state, message) = match b.state {
                BindingState::Proposed | BindingState::Blocked | BindingState::Todo => view.readiness(&b.role, &b.node),
                other => (other, String::new()),
            };
            Decision { role: b.role.clone(), node: b.node.clone(), state, message }
        })
        .collect();

    // Start Todo bindings: parents first, then by role and node, for a stable order.
    let depth = |role: &str| view.depth(role);
    let mut busy_nodes: BTreeSet<String> =
        decisions.iter().filter(|d| d.state == BindingState::Running).map(|d| d.node.clone()).collect();
    let mut in_flight = decisions.iter().filter(|d| d.state == BindingState::Running).count();
    let mut todo: Vec<usize> = (0..decisions.len()).filter(|&i| decisions[i].state == BindingState::Todo).collect();
    todo.sort_by(|&a, &b| {
        let (a, b) = (&decisions[a], &decisions[b]);
        (depth(&a.role), &a.role, &a.node).cmp(&(depth(&b.role), &b.role, &b.node))
    });
    for i in todo {
        let decision = &mut decisions[i];
        if in_flight >= max_in_flight {
            decision.message = format!("ready; waiting for a free slot ({max_in_flight} tasks run at once)");
        } else if let Some(why) = &bindings[i].hold {
            decision.message = format!("ready; {why}");
        } else if busy_nodes.contains(&decision.node) {
            decision.message = format!("ready; waiting for the task running on {} to finish", decision.node);
        } else {
            decision.state = BindingState::Running;
            decision.message = "started".into();
            busy_nodes.insert(decision.node.clone());
            in_flight += 1;
        }
    }
    decisions
}

struct View<'a> {
    graph: &'a RoleGraph,
    state: &'a BTreeMap<Key<'a>, BindingState>,
    by_role: &'a BTreeMap<&'a str, Vec<&'a str>>,
}

impl View<'_> {
    /// Todo when every parent binding this one depends on is Active; else
    /// Blocked with the reason.
    fn readiness(&self, role: &str, node: &str) -> (BindingState, String) {
        if let Some((failed_role, failed_node)) = self.failed_ancestor(role, node, &mut BTreeSet::new()) {
            return (
                BindingState::Blocked,
                format!("{failed_role} failed on {failed_node}; fix it and re-run it to continue"),
            );
        }
        let mut unplaced = Vec::new();
        let mut waiting = Vec::new();
        for (parent, nodes) in self.parent_bindings(role, node) {
            if nodes.is_empty() {
                unplaced.push(match self.scope(role) {
                    Scope::Node => format!("{parent} is not placed on {node}"),
                    Scope::Cluster => format!("{parent} is not placed on any node"),
                });
                continue;
            }
            let active = nodes.iter().filter(|n| self.state.get(&(parent, **n)) == Some(&BindingState::Active)).count();
            if active < nodes.len() {
                waiting.push(match self.scope(role) {
                    Scope::Node => format!("{parent} on {node}"),
                    Scope::Cluster => format!("{parent} ({active} of {} nodes Active)", nodes.len()),
                });
            }
        }
        if !waiting.is_empty() {
            unplaced.push(format!("waiting for {}", waiting.join(", ")));
        }
        if unplaced.is_empty() {
            (BindingState::Todo, "every parent is Active".into())
        } else {
            (BindingState::Blocked, unplaced.join("; "))
        }
    }

    /// The parent bindings `role` on `node` waits for, per parent role.
    fn parent_bindings(&self, role: &str, node: &str) -> Vec<(&str, Vec<&str>)> {
        let Some(def) = self.graph.get(role) else { return Vec::new() };
        def.requires
            .iter()
            .map(|parent| {
                let nodes: Vec<&str> = match def.scope {
                    Scope::Node => self
                        .by_role
                        .get(parent.as_str())
                        .into_iter()
                        .flatten()
                        .copied()
                        .filter(|n| *n == node)
                        .collect(),
                    Scope::Cluster => self.by_role.get(parent.as_str()).cloned().unwrap_or_default(),
                };
                (parent.as_str(), nodes)
            })
            .collect()
    }

    /// The first ancestor binding in Error, searching parents before grandparents.
    fn failed_ancestor(
        &self,
        role: &str,
        node: &str,
        seen: &mut BTreeSet<(String, String)>,
    ) -> Option<(String, String)> {
        let parents = self.parent_bindings(role, node);
        for (parent, nodes) in &parents {
            for n in nodes {
                if self.state.get(&(*parent, *n)) == Some(&BindingState::Error) {
                    return Some((parent.to_string(), n.to_string()));
                }
            }
        }
        for (parent, nodes) in parents {
            for n in nodes {
                if seen.insert((parent.to_string(), n.to_string()))
                    && let Some(found) = self.failed_ancestor(parent, n, seen)
                {
                    return Some(found);
                }
            }
        }
        None
    }

    fn scope(&self, role: &str) -> Scope {
        self.graph.get(role).map_or(Scope::Node, |d| d.scope)
    }

    /// Length of the longest chain of requirements above `role` (0 for a
    /// root); a cycle, which `plan` refuses beforehand, counts as a root.
    fn depth(&self, role: &str) -> usize {
        fn walk(graph: &RoleGraph, role: &str, open: &mut BTreeSet<String>) -> usize {
            let Some(def) = graph.get(role) else { return 0 };
            if !open.insert(role.to_string()) {
                return 0;
            }
            let deepest = def.requires.iter().map(|p| walk(graph, p, open) + 1).max().unwrap_or(0);
            open.remove(role);
            deepest
        }
        walk(self.graph, role, &mut BTreeSet::new())
    }
}
