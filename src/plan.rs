//! `girder plan WORKLOAD`: the annealer's plan of a workload, read from the
//! cluster and rehearsed without changing anything: which node holds which
//! role, in which order, in which state; and, given a changed version of the
//! workload (`-f`), what applying it would create, remove and run again.
//!
//! `--output dot|svg` draws it: a box per role, a node per binding coloured
//! by its state, arrows from parents (see [`View::dot`]).
//!
//! It runs the operator's own decision ([`bindings::decide`]) on what the
//! API server holds, so the rehearsal is the decision, not a model of it.

use crate::api::noderole::NodeRole;
use crate::api::{BareMetalNode, Role, RoleSpec, Workload};
use crate::controller::role::role_def;
use crate::controller::workload::bindings::{self, Outcome, World};
use crate::controller::workload::{node_facts, node_selector};
use crate::graph::{BindingState, RoleGraph, Scope};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// The Workload.
    workload: String,
    /// Its namespace (default: the kubeconfig's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// A changed version of the Workload (YAML) to rehearse: what applying it
    /// would create, remove and run again. Nothing is applied.
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// How to show it: `text` (an indented tree), `dot` (Graphviz's
    /// language) or `svg` (a picture; needs Graphviz's `dot` on PATH).
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

/// How `girder plan` shows the plan.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Dot,
    Svg,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot reach the API server: {0}")]
    Client(kube::Error),
    #[error("cannot read {what}: {source}")]
    Read { what: String, source: kube::Error },
    #[error("workload {0} does not exist in namespace {1}")]
    NoWorkload(String, String),
    #[error("cannot read {path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("{path} is Workload {found}, not {wanted}")]
    OtherWorkload { path: PathBuf, found: String, wanted: String },
    #[error("spec.nodeSelector: {0}")]
    Selector(String),
    #[error("the plan is blocked: {0}")]
    Blocked(String),
    #[error(
        "--output svg runs Graphviz's `dot`, which failed: {0} (install Graphviz, e.g. apt-get install graphviz, or use --output dot and render it elsewhere)"
    )]
    Graphviz(String),
}

pub fn main(args: PlanArgs) -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(PlanError::Runtime)?;
    let output = args.output;
    let view = runtime.block_on(plan(args))?;
    let text = match output {
        Format::Text => view.text(),
        Format::Dot => view.dot(),
        Format::Svg => svg(&view.dot())?,
    };
    print!("{text}");
    Ok(())
}

async fn plan(args: PlanArgs) -> Result<View, PlanError> {
    let client = Client::try_default().await.map_err(PlanError::Client)?;
    let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let read = |what: &str| {
        let what = format!("{what} in namespace {namespace}");
        move |source| PlanError::Read { what, source }
    };
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &namespace);
    let live = workloads.get_opt(&args.workload).await.map_err(read("the Workload"))?;
    let workload = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| PlanError::File { path: path.clone(), detail: e.to_string() })?;
            let mut changed: Workload = serde_yaml::from_str(&text)
                .map_err(|e| PlanError::File { path: path.clone(), detail: e.to_string() })?;
            if changed.name_any() != args.workload {
                return Err(PlanError::OtherWorkload {
                    path: path.clone(),
                    found: changed.name_any(),
                    wanted: args.workload.clone(),
                });
            }
            // The live object's identity: its bindings are owned by it.
            changed.metadata.uid = live.as_ref().and_then(|w| w.metadata.uid.clone());
            changed
        }
        None => live.clone().ok_or_else(|| PlanError::NoWorkload(args.workload.clone(), namespace.clone()))?,
    };
    let roles: Vec<Role> = Api::<Role>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map_err(read("Roles"))?
        .items;
    let nodes: Vec<BareMetalNode> = Api::<BareMetalNode>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map_err(read("BareMetalNodes"))?
        .items;
    let all: Vec<NodeRole> = Api::<NodeRole>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default().fields(&format!("spec.workload={}", args.workload)))
        .await
        .map_err(read("NodeRoles"))?
        .items;
    let uid = live.as_ref().and_then(|w| w.metadata.uid.clone());
    let existing: Vec<NodeRole> =
        all.into_iter().filter(|b| b.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref())).collect();

    let graph = RoleGraph::new(roles.iter().map(role_def));
    let names: Vec<String> = workload.spec.roles.iter().map(|r| r.role.clone()).collect();
    let layers = graph.plan(&names).map_err(|e| PlanError::Blocked(e.to_string()))?;
    let selector = node_selector(&workload).map_err(PlanError::Selector)?;
    let facts: Vec<_> = nodes.iter().map(|n| node_facts(n, selector.as_ref())).collect();
    let specs: BTreeMap<String, RoleSpec> = roles.iter().map(|r| (r.name_any(), r.spec.clone())).collect();
    let outcome = bindings::decide(&World {
        workload: &workload,
        graph: &graph,
        roles: &specs,
        nodes: &facts,
        bindings: &existing,
        now: jiff::Timestamp::now(),
    });
    let layers: Vec<Vec<String>> = layers.into_iter().map(|l| l.roles).collect();
    Ok(View::new(&namespace, &workload, &graph, &layers, &existing, &outcome, args.file.is_some()))
}

/// The plan as it is shown: roles in layers, each with its placed nodes and
/// what happens next. Built once (pure), then drawn as text or as a graph.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub title: String,
    pub roles: Vec<RoleView>,
    /// Closing lines: shortfalls, blocked bindings, what comes next.
    pub notes: Vec<String>,
}

/// One role of the plan, in the layer it runs in.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleView {
    pub layer: usize,
    pub role: String,
    pub scope: Scope,
    pub requires: Vec<String>,
    pub places: Vec<Place>,
}

/// One node holding a role.
#[derive(Debug, Clone, PartialEq)]
pub struct Place {
    pub node: String,
    pub index: usize,
    /// `None`: the binding does not exist yet (it would be created).
    pub state: Option<BindingState>,
    pub message: String,
}

impl View {
    /// The view of a decision (pure): `existing` bindings, the `outcome` the
    /// operator's decision gives for them, `layers` from the role graph.
    pub fn new(
        namespace: &str,
        workload: &Workload,
        graph: &RoleGraph,
        layers: &[Vec<String>],
        existing: &[NodeRole],
        outcome: &Outcome,
        rehearsal: bool,
    ) -> View {
        let limit = workload.spec.rollout.as_ref().and_then(|r| r.max_in_flight);
        let limit = limit.map(|m| format!("; at most {m} tasks at once")).unwrap_or_default();
        let title = format!(
            "Workload {} in {namespace}: {} roles in {} layers{limit}; one task per node at a time",
            workload.name_any(),
            workload.spec.roles.len(),
            layers.len()
        );
        let by_place: BTreeMap<(&str, &str), &NodeRole> =
            existing.iter().map(|b| ((b.spec.role.as_str(), b.spec.node.as_str()), b)).collect();
        let mut rerun = Vec::new();
        let mut kept = Vec::new();
        let mut roles = Vec::new();
        for (layer, names) in layers.iter().enumerate() {
            for role in names {
                let def = graph.get(role);
                let placed =
                    outcome.counts.iter().find(|c| &c.role == role).map(|c| c.nodes.clone()).unwrap_or_default();
                let mut places = Vec::new();
                for (index, node) in placed.into_iter().enumerate() {
                    let Some(binding) = by_place.get(&(role.as_str(), node.as_str())) else {
                        places.push(Place { node, index, state: None, message: String::new() });
                        continue;
                    };
                    let name = binding.name_any();
                    let now = binding.status.as_ref().and_then(|s| s.state);
                    let next = outcome.statuses.get(&name).or(binding.status.as_ref());
                    let state = next.and_then(|s| s.state).unwrap_or(BindingState::Proposed);
                    let message = next.and_then(|s| s.message.clone()).unwrap_or_default();
                    if now == Some(BindingState::Active) && state != BindingState::Active {
                        rerun.push(format!("{name} ({message})"));
                    } else if now == Some(BindingState::Active) && message.contains("destructive") {
                        kept.push(name);
                    }
                    places.push(Place { node, index, state: Some(state), message });
                }
                roles.push(RoleView {
                    layer,
                    role: role.clone(),
                    scope: def.map(|d| d.scope).unwrap_or(Scope::Node),
                    requires: def.map(|d| d.requires.clone()).unwrap_or_default(),
                    places,
                });
            }
        }
        let mut notes: Vec<String> = outcome.shortfalls.iter().map(|s| format!("short of nodes: {s}")).collect();
        notes.extend(outcome.invalid.iter().map(|(binding, why)| format!("blocked: {binding}: {why}")));
        let verb = if rehearsal { "Applying it would" } else { "Next, the operator will" };
        let list = |items: &[String]| if items.is_empty() { String::new() } else { format!(": {}", items.join(", ")) };
        let creates: Vec<String> = outcome.create.iter().map(|b| b.name.clone()).collect();
        notes.push(format!(
            "{verb} create {} bindings{}; remove {}{}; run {} again{}; leave {} destructive ones as they are{}",
            creates.len(),
            list(&creates),
            outcome.delete.len(),
            list(&outcome.delete),
            rerun.len(),
            list(&rerun),
            kept.len(),
            list(&kept),
        ));
        View { title, roles, notes }
    }

    /// The plan as an indented tree of layers, roles and nodes.
    pub fn text(&self) -> String {
        let mut out = format!("{}\n", self.title);
        for role in &self.roles {
            let how = if role.requires.is_empty() {
                "no parents".to_string()
            } else if role.scope == Scope::Cluster {
                format!("Cluster: waits for every binding of {}", role.requires.join(", "))
            } else {
                format!("Node: waits for {} on the same node", role.requires.join(", "))
            };
            let _ = writeln!(out, "layer {}: {} ({how})", role.layer, role.role);
            if role.places.is_empty() {
                let _ = writeln!(out, "    (no node yet)");
            }
            for place in &role.places {
                let (node, index) = (&place.node, place.index);
                match place.state {
                    None => {
                        let _ = writeln!(out, "    {node:<24} #{index:<3} new");
                    }
                    Some(state) => {
                        let state = format!("{state:?}");
                        let _ = writeln!(out, "    {node:<24} #{index:<3} {state:<9} {}", place.message);
                    }
                }
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "{note}");
        }
        out
    }

    /// The plan as a Graphviz graph: a box per role (its layer left to
    /// right), a node per binding filled with its state's colour (see
    /// [`state_colour`]), an arrow from each parent binding on the same node
    /// (`scope: Node`) or from the parent role as a whole (`scope: Cluster`:
    /// every binding of it, the sync barrier). A role with no node yet has a
    /// dashed placeholder so that its arrows still show.
    pub fn dot(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph plan {{");
        let _ = writeln!(
            out,
            "  graph [rankdir=LR, compound=true, newrank=true, fontname=\"Helvetica\", labelloc=t, label={}];",
            quote(&self.title)
        );
        let _ = writeln!(out, "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=10];");
        let _ = writeln!(out, "  edge [color=\"#555555\"];");
        for role in &self.roles {
            let scope = if role.scope == Scope::Cluster { "Cluster" } else { "Node" };
            let _ = writeln!(out, "  subgraph {} {{", quote(&format!("cluster_{}", role.role)));
            let _ = writeln!(
                out,
                "    label={}; style=\"rounded\"; color=\"#888888\";",
                quote(&format!("{} (layer {}, {scope})", role.role, role.layer))
            );
            if role.places.is_empty() {
                let _ = writeln!(
                    out,
                    "    {} [label=\"no node yet\", style=\"rounded,dashed\", fillcolor=white];",
                    quote(&anchor(&role.role, None))
                );
            }
            for place in &role.places {
                let (state, style) = match place.state {
                    Some(state) => (format!("{state:?}"), "rounded,filled"),
                    None => ("new".to_string(), "rounded,filled,dashed"),
                };
                let label = format!("{} #{}\n{state}", place.node, place.index);
                let tooltip = if place.message.is_empty() { state.clone() } else { place.message.clone() };
                let _ = writeln!(
                    out,
                    "    {} [label={}, style=\"{style}\", fillcolor=\"{}\", tooltip={}];",
                    quote(&anchor(&role.role, Some(&place.node))),
                    quote(&label),
                    state_colour(place.state),
                    quote(&tooltip)
                );
            }
            let _ = writeln!(out, "  }}");
        }
        let by_name: BTreeMap<&str, &RoleView> = self.roles.iter().map(|r| (r.role.as_str(), r)).collect();
        let first = |role: &RoleView| anchor(&role.role, role.places.first().map(|p| p.node.as_str()));
        for role in &self.roles {
            for parent in role.requires.iter().filter_map(|p| by_name.get(p.as_str())) {
                let pairs: Vec<&str> = match role.scope {
                    Scope::Node => role
                        .places
                        .iter()
                        .map(|p| p.node.as_str())
                        .filter(|n| parent.places.iter().any(|q| q.node == *n))
                        .collect(),
                    Scope::Cluster => Vec::new(),
                };
                if pairs.is_empty() {
                    let _ = writeln!(
                        out,
                        "  {} -> {} [ltail={}, lhead={}, penwidth=2];",
                        quote(&first(parent)),
                        quote(&first(role)),
                        quote(&format!("cluster_{}", parent.role)),
                        quote(&format!("cluster_{}", role.role)),
                    );
                }
                for node in pairs {
                    let _ = writeln!(
                        out,
                        "  {} -> {};",
                        quote(&anchor(&parent.role, Some(node))),
                        quote(&anchor(&role.role, Some(node)))
                    );
                }
            }
        }
        if !self.notes.is_empty() {
            // Each line left-aligned (Graphviz's \l ends a line).
            let notes: String = self.notes.iter().map(|n| escape(n) + "\\l").collect();
            let _ = writeln!(out, "  notes [shape=note, style=filled, fillcolor=\"#fffbe6\", label=\"{notes}\"];");
        }
        let _ = writeln!(out, "}}");
        out
    }
}

/// The fill colour of a binding in `state` (`None`: not created yet).
pub fn state_colour(state: Option<BindingState>) -> &'static str {
    match state {
        None => "#ffffff",
        Some(BindingState::Proposed) => "#e0e0e0",
        Some(BindingState::Blocked) => "#ffd59e",
        Some(BindingState::Todo) => "#cfe3ff",
        Some(BindingState::Running) => "#fff3a3",
        Some(BindingState::Active) => "#b8e6b0",
        Some(BindingState::Error) => "#ff9e9e",
    }
}

/// The graph node of `role` on `node` (or the role's placeholder).
fn anchor(role: &str, node: Option<&str>) -> String {
    format!("{role}@{}", node.unwrap_or(""))
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn quote(text: &str) -> String {
    format!("\"{}\"", escape(text))
}

/// Renders `dot` (Graphviz's language) to SVG with Graphviz's `dot`.
fn svg(dot: &str) -> Result<String, PlanError> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| PlanError::Graphviz(format!("cannot run it: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = dot.to_string();
    // Written from another thread: a large graph fills the pipe both ways.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().map_err(|e| PlanError::Graphviz(e.to_string()))?;
    let _ = writer.join();
    if !output.status.success() {
        return Err(PlanError::Graphviz(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    String::from_utf8(output.stdout).map_err(|e| PlanError::Graphviz(format!("its output is not UTF-8: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(node: &str, index: usize, state: Option<BindingState>) -> Place {
        Place { node: node.into(), index, state, message: String::new() }
    }

    fn view() -> View {
        View {
            title: "Workload w in ns: 3 roles in 3 layers; one task per node at a time".into(),
            roles: vec![
                RoleView {
                    layer: 0,
                    role: "keys".into(),
                    scope: Scope::Node,
                    requires: vec![],
                    places: vec![place("n-0", 0, Some(BindingState::Active)), place("n-1", 1, None)],
                },
                RoleView {
                    layer: 1,
                    role: "ca".into(),
                    scope: Scope::Cluster,
                    requires: vec!["keys".into()],
                    places: vec![Place {
                        message: "waits for \"keys\" on n-1".into(),
                        ..place("n-0", 0, Some(BindingState::Blocked))
                    }],
                },
                RoleView {
                    layer: 2,
                    role: "serve".into(),
                    scope: Scope::Node,
                    requires: vec!["keys".into(), "ca".into()],
                    places: vec![place("n-1", 0, Some(BindingState::Error))],
                },
            ],
            notes: vec!["short of nodes: serve: 1 node".into()],
        }
    }

    #[test]
    fn text_shows_layers_nodes_states_and_notes() {
        let text = view().text();
        let expected = "\
Workload w in ns: 3 roles in 3 layers; one task per node at a time
layer 0: keys (no parents)
    n-0                      #0   Active    \n    n-1                      #1   new
layer 1: ca (Cluster: waits for every binding of keys)
    n-0                      #0   Blocked   waits for \"keys\" on n-1
layer 2: serve (Node: waits for keys, ca on the same node)
    n-1                      #0   Error     \nshort of nodes: serve: 1 node
";
        assert_eq!(text, expected);
    }

    #[test]
    fn dot_draws_a_node_per_binding_coloured_by_state_and_arrows_by_scope() {
        let dot = view().dot();
        let line = |needle: &str| dot.lines().filter(|l| l.contains(needle)).collect::<Vec<_>>();
        // A node per binding, filled with its state's colour; a new one dashed.
        let active = line("\"keys@n-0\" [");
        assert_eq!(active.len(), 1, "{dot}");
        assert!(
            active[0].contains("fillcolor=\"#b8e6b0\"") && active[0].contains("label=\"n-0 #0\\nActive\""),
            "{dot}"
        );
        let new = line("\"keys@n-1\" [");
        assert!(new[0].contains("dashed") && new[0].contains("\\nnew\""), "{dot}");
        assert!(line("\"serve@n-1\" [")[0].contains(state_colour(Some(BindingState::Error))), "{dot}");
        // Quotes in a message are escaped, not ending the string.
        assert!(line("\"ca@n-0\" [")[0].contains("tooltip=\"waits for \\\"keys\\\" on n-1\""), "{dot}");
        // Node scope: from the parent on the same node only.
        assert_eq!(line("\"keys@n-1\" -> \"serve@n-1\";").len(), 1, "{dot}");
        assert!(line("\"keys@n-0\" -> \"serve@").is_empty(), "{dot}");
        // Cluster scope: role to role, the whole parent box.
        let barrier = line("\"keys@n-0\" -> \"ca@n-0\"");
        assert!(barrier[0].contains("ltail=\"cluster_keys\", lhead=\"cluster_ca\""), "{dot}");
        // A Node-scope parent not on the child's node (ca is on n-0 only):
        // drawn role to role.
        assert!(line("\"ca@n-0\" -> \"serve@n-1\"")[0].contains("lhead=\"cluster_serve\""), "{dot}");
        // Every role a box; notes kept; balanced braces.
        for role in ["keys", "ca", "serve"] {
            assert_eq!(line(&format!("subgraph \"cluster_{role}\"")).len(), 1, "{dot}");
        }
        assert!(dot.contains("short of nodes: serve: 1 node\\l"), "{dot}");
        assert_eq!(dot.matches('{').count(), dot.matches('}').count(), "{dot}");
    }

    #[test]
    fn a_role_without_nodes_has_a_placeholder_its_arrows_reach() {
        let mut view = view();
        view.roles[2].places.clear();
        let dot = view.dot();
        assert!(dot.contains("\"serve@\" [label=\"no node yet\""), "{dot}");
        assert!(dot.contains("\"keys@n-0\" -> \"serve@\" [ltail=\"cluster_keys\", lhead=\"cluster_serve\""), "{dot}");
        assert!(
            view.text().contains("layer 2: serve (Node: waits for keys, ca on the same node)\n    (no node yet)\n")
        );
    }

    #[test]
    fn every_state_has_its_own_colour() {
        let states = [
            None,
            Some(BindingState::Proposed),
            Some(BindingState::Blocked),
            Some(BindingState::Todo),
            Some(BindingState::Running),
            Some(BindingState::Active),
            Some(BindingState::Error),
        ];
        let colours: std::collections::BTreeSet<&str> = states.iter().map(|s| state_colour(*s)).collect();
        assert_eq!(colours.len(), states.len());
    }
}
