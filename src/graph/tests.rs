use super::*;

fn role(name: &str, requires: &[&str], scope: Scope) -> RoleDef {
    RoleDef { name: name.to_string(), requires: requires.iter().map(|s| s.to_string()).collect(), scope }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The sample lab: etcd, its cluster sync, Kubernetes masters, then workers.
fn kubernetes_lab() -> RoleGraph {
    RoleGraph::new([
        role("etcd-install", &[], Scope::Node),
        role("etcd-cluster", &["etcd-install"], Scope::Cluster),
        role("k8s-master", &["etcd-cluster"], Scope::Cluster),
        role("k8s-worker", &["k8s-master"], Scope::Cluster),
        role("node-base", &[], Scope::Node),
    ])
}

#[test]
fn plan_layers_follow_dependencies() {
    let graph = kubernetes_lab();
    let layers =
        graph.plan(&names(&["k8s-worker", "k8s-master", "etcd-cluster", "etcd-install", "node-base"])).unwrap();
    let roles: Vec<Vec<&str>> = layers.iter().map(|l| l.roles.iter().map(String::as_str).collect()).collect();
    assert_eq!(
        roles,
        vec![vec!["etcd-install", "node-base"], vec!["etcd-cluster"], vec!["k8s-master"], vec!["k8s-worker"],]
    );
    let barriers: Vec<bool> = layers.iter().map(|l| l.barrier).collect();
    assert_eq!(barriers, [false, true, true, true]);
}

#[test]
fn a_role_sits_below_its_deepest_parent() {
    let graph = RoleGraph::new([
        role("a", &[], Scope::Node),
        role("b", &["a"], Scope::Node),
        role("c", &["a", "b"], Scope::Node),
    ]);
    let layers = graph.plan(&names(&["a", "b", "c"])).unwrap();
    assert_eq!(layers.len(), 3);
    assert_eq!(layers[2].roles, ["c"]);
    assert!(layers.iter().all(|l| !l.barrier));
}

#[test]
fn empty_placement_gives_an_empty_plan() {
    assert!(kubernetes_lab().plan(&[]).unwrap().is_empty());
}

#[test]
fn missing_placed_role_is_named() {
    let err = kubernetes_lab().plan(&names(&["ceph-mon"])).unwrap_err();
    assert_eq!(err, GraphError::MissingRole { role: "ceph-mon".into(), required_by: None });
    assert_eq!(err.to_string(), "role ceph-mon does not exist in this namespace");
    assert_eq!(err.reason(), "MissingRole");
}

#[test]
fn missing_parent_names_parent_and_child() {
    let graph = RoleGraph::new([role("app", &["db"], Scope::Node)]);
    let err = graph.plan(&names(&["app"])).unwrap_err();
    assert_eq!(err.to_string(), "role app requires db, which does not exist in this namespace");
}

#[test]
fn an_unreadable_role_is_named_as_such_not_as_missing() {
    let graph = RoleGraph::new([role("app", &["db"], Scope::Node)])
        .with_unreadable([("db".to_string(), "unknown variant `Rack`".to_string())]);
    let err = graph.plan(&names(&["app", "db"])).unwrap_err();
    assert_eq!(err.reason(), "UnreadableRole");
    assert!(err.to_string().contains("role db cannot be read (unknown variant `Rack`)"), "{err}");
    assert_eq!(graph.check_role("app").unwrap_err().reason(), "UnreadableRole");
}

#[test]
fn unplaced_parent_is_refused() {
    let err = kubernetes_lab().plan(&names(&["k8s-worker"])).unwrap_err();
    assert_eq!(err, GraphError::NotPlaced { role: "k8s-master".into(), required_by: "k8s-worker".into() });
    assert_eq!(err.reason(), "RoleNotPlaced");
}

#[test]
fn cycle_is_named_in_order_from_its_smallest_member() {
    let graph = RoleGraph::new([
        role("c", &["a"], Scope::Node),
        role("a", &["b"], Scope::Node),
        role("b", &["c"], Scope::Cluster),
        role("d", &["a"], Scope::Node),
    ]);
    let err = graph.plan(&names(&["d", "c", "b", "a"])).unwrap_err();
    assert_eq!(err, GraphError::Cycle(names(&["a", "b", "c", "a"])));
    assert_eq!(
        err.to_string(),
        "dependency cycle: a -> b -> c -> a (each role requires the next); remove one of these requirements"
    );
    assert_eq!(err.reason(), "DependencyCycle");
}

#[test]
fn two_role_cycle() {
    let graph = RoleGraph::new([role("y", &["x"], Scope::Node), role("x", &["y"], Scope::Node)]);
    assert_eq!(graph.plan(&names(&["x", "y"])).unwrap_err(), GraphError::Cycle(names(&["x", "y", "x"])));
}

#[test]
fn check_role_accepts_a_sound_ancestry() {
    let graph = kubernetes_lab();
    for name in ["etcd-install", "etcd-cluster", "k8s-master", "k8s-worker"] {
        assert_eq!(graph.check_role(name), Ok(()), "{name}");
    }
}

#[test]
fn check_role_reports_a_missing_ancestor() {
    let graph = RoleGraph::new([role("top", &["mid"], Scope::Node), role("mid", &["gone"], Scope::Node)]);
    assert_eq!(
        graph.check_role("top"),
        Err(GraphError::MissingRole { role: "gone".into(), required_by: Some("mid".into()) })
    );
}

#[test]
fn check_role_reports_a_cycle_above_it() {
    let graph = RoleGraph::new([
        role("leaf", &["p"], Scope::Node),
        role("p", &["q"], Scope::Node),
        role("q", &["p"], Scope::Node),
    ]);
    assert_eq!(graph.check_role("leaf"), Err(GraphError::Cycle(names(&["p", "q", "p"]))));
}

#[test]
fn diamond_is_not_a_cycle() {
    let graph = RoleGraph::new([
        role("base", &[], Scope::Node),
        role("left", &["base"], Scope::Node),
        role("right", &["base"], Scope::Node),
        role("top", &["left", "right"], Scope::Cluster),
    ]);
    assert_eq!(graph.check_role("top"), Ok(()));
    let layers = graph.plan(&names(&["base", "left", "right", "top"])).unwrap();
    assert_eq!(layers[1].roles, ["left", "right"]);
    assert!(layers[2].barrier);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Random acyclic graphs: role i may only require roles with a smaller index.
    fn acyclic_graph() -> impl Strategy<Value = Vec<RoleDef>> {
        (1usize..24).prop_flat_map(|n| {
            proptest::collection::vec((proptest::collection::vec(any::<prop::sample::Index>(), 0..4), any::<bool>()), n)
                .prop_map(move |specs| {
                    specs
                        .into_iter()
                        .enumerate()
                        .map(|(i, (parents, cluster))| {
                            let mut requires: Vec<String> = if i == 0 {
                                Vec::new()
                            } else {
                                parents.iter().map(|p| format!("r{:02}", p.index(i))).collect()
                            };
                            requires.sort();
                            requires.dedup();
                            RoleDef {
                                name: format!("r{i:02}"),
                                requires,
                                scope: if cluster { Scope::Cluster } else { Scope::Node },
                            }
                        })
                        .collect()
                })
        })
    }

    proptest! {
        #[test]
        fn every_parent_is_in_an_earlier_layer(roles in acyclic_graph()) {
            let placed: Vec<String> = roles.iter().map(|r| r.name.clone()).collect();
            let graph = RoleGraph::new(roles.clone());
            let layers = graph.plan(&placed).unwrap();
            let layer_of = |name: &str| layers.iter().position(|l| l.roles.iter().any(|r| r == name)).unwrap();
            let total: usize = layers.iter().map(|l| l.roles.len()).sum();
            prop_assert_eq!(total, roles.len());
            for role in &roles {
                for parent in &role.requires {
                    prop_assert!(layer_of(parent) < layer_of(&role.name));
                }
            }
        }

        #[test]
        fn closing_a_path_is_always_reported_as_a_cycle(roles in acyclic_graph()) {
            // Make the first role require the last: a cycle exists exactly when
            // the last role already reaches the first.
            let mut roles = roles;
            let last = roles.last().unwrap().name.clone();
            if roles.len() < 2 { return Ok(()); }
            roles[0].requires.push(last.clone());
            let graph = RoleGraph::new(roles.clone());
            let reaches_first = {
                let mut seen = BTreeSet::new();
                let mut stack = vec![last.clone()];
                while let Some(n) = stack.pop() {
                    if seen.insert(n.clone()) {
                        stack.extend(graph.get(&n).unwrap().requires.iter().cloned());
                    }
                }
                seen.contains("r00")
            };
            let placed: Vec<String> = roles.iter().map(|r| r.name.clone()).collect();
            match graph.plan(&placed) {
                Err(GraphError::Cycle(cycle)) => {
                    prop_assert!(reaches_first);
                    prop_assert_eq!(cycle.first(), cycle.last());
                    for pair in cycle.windows(2) {
                        prop_assert!(graph.get(&pair[0]).unwrap().requires.contains(&pair[1]));
                    }
                }
                Ok(_) => prop_assert!(!reaches_first),
                Err(other) => prop_assert!(false, "unexpected {other}"),
            }
        }
    }
}

mod annealer {
    use super::*;
    use BindingState::*;

    fn bind(role: &str, node: &str, state: BindingState) -> Binding {
        Binding { role: role.into(), node: node.into(), state, hold: None }
    }

    fn state_of(decisions: &[Decision], role: &str, node: &str) -> (BindingState, String) {
        let d = decisions.iter().find(|d| d.role == role && d.node == node).expect("decision");
        (d.state, d.message.clone())
    }

    /// etcd on n1..n3, its Cluster-scoped sync, a master on n1 and a worker on n4.
    fn lab(etcd: [BindingState; 3], sync: [BindingState; 3]) -> Vec<Binding> {
        let mut b = Vec::new();
        for (i, n) in ["n1", "n2", "n3"].into_iter().enumerate() {
            b.push(bind("etcd-install", n, etcd[i]));
            b.push(bind("etcd-cluster", n, sync[i]));
        }
        b.push(bind("k8s-master", "n1", Proposed));
        b.push(bind("k8s-worker", "n4", Proposed));
        b
    }

    #[test]
    fn roots_start_one_per_node_within_the_global_limit() {
        let decisions = anneal(&kubernetes_lab(), &lab([Proposed; 3], [Proposed; 3]), 2);
        let running: Vec<_> = decisions.iter().filter(|d| d.state == Running).map(|d| d.node.as_str()).collect();
        assert_eq!(running, ["n1", "n2"], "two slots, lowest nodes first");
        let (state, message) = state_of(&decisions, "etcd-install", "n3");
        assert_eq!(state, Todo);
        assert!(message.contains("free slot"), "{message}");
        let (state, message) = state_of(&decisions, "etcd-cluster", "n1");
        assert_eq!(state, Blocked);
        assert_eq!(message, "waiting for etcd-install (0 of 3 nodes Active)");
    }

    #[test]
    fn a_cluster_scoped_role_waits_for_every_node() {
        let decisions = anneal(&kubernetes_lab(), &lab([Active, Active, Running], [Proposed; 3]), 10);
        assert_eq!(state_of(&decisions, "etcd-cluster", "n1").0, Blocked);
        assert!(state_of(&decisions, "etcd-cluster", "n1").1.contains("2 of 3"));
        let decisions = anneal(&kubernetes_lab(), &lab([Active; 3], [Proposed; 3]), 10);
        for n in ["n1", "n2", "n3"] {
            assert_eq!(state_of(&decisions, "etcd-cluster", n).0, Running, "{n}");
        }
        assert_eq!(state_of(&decisions, "k8s-master", "n1").0, Blocked);
    }

    #[test]
    fn a_node_scoped_role_waits_only_for_its_own_node() {
        let graph = RoleGraph::new([role("os", &[], Scope::Node), role("agent", &["os"], Scope::Node)]);
        let bindings = [
            bind("os", "a", Active),
            bind("os", "b", Running),
            bind("agent", "a", Proposed),
            bind("agent", "b", Proposed),
        ];
        let decisions = anneal(&graph, &bindings, 10);
        assert_eq!(state_of(&decisions, "agent", "a").0, Running);
        assert_eq!(state_of(&decisions, "agent", "b"), (Blocked, "waiting for os on b".into()));
    }

    #[test]
    fn one_task_per_node() {
        let graph = RoleGraph::new([role("x", &[], Scope::Node), role("y", &[], Scope::Node)]);
        let decisions = anneal(&graph, &[bind("x", "a", Todo), bind("y", "a", Todo)], 10);
        assert_eq!(state_of(&decisions, "x", "a").0, Running);
        let (state, message) = state_of(&decisions, "y", "a");
        assert_eq!(state, Todo);
        assert!(message.contains("task running on a"), "{message}");
    }

    #[test]
    fn an_error_blocks_every_descendant_and_names_the_ancestor() {
        let mut bindings = lab([Active, Error, Active], [Proposed; 3]);
        bindings.push(bind("etcd-install", "n4", Active));
        let decisions = anneal(&kubernetes_lab(), &bindings, 10);
        for (role, node) in [("etcd-cluster", "n1"), ("k8s-master", "n1"), ("k8s-worker", "n4")] {
            let (state, message) = state_of(&decisions, role, node);
            assert_eq!(state, Blocked, "{role} on {node}");
            assert_eq!(message, "etcd-install failed on n2; fix it and re-run it to continue", "{role} on {node}");
        }
        // The failed binding itself is left for a person to re-run.
        assert_eq!(state_of(&decisions, "etcd-install", "n2").0, Error);
    }

    #[test]
    fn a_parent_not_placed_on_the_node_is_said() {
        let graph = RoleGraph::new([role("os", &[], Scope::Node), role("agent", &["os"], Scope::Node)]);
        let decisions = anneal(&graph, &[bind("os", "a", Active), bind("agent", "b", Proposed)], 10);
        assert_eq!(state_of(&decisions, "agent", "b"), (Blocked, "os is not placed on b".into()));
    }

    #[test]
    fn running_and_active_are_left_alone() {
        let decisions = anneal(&kubernetes_lab(), &lab([Active, Running, Active], [Proposed; 3]), 1);
        assert_eq!(state_of(&decisions, "etcd-install", "n2").0, Running);
        assert_eq!(state_of(&decisions, "etcd-install", "n1").0, Active);
    }
}
