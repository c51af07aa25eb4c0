//! The annealer against the real API server: roles bound to provisioned
//! nodes (support/farm.rs) run by the nodes' own `girder agent`s, in
//! dependency order, with outputs flowing to children, and each failure
//! path: a task that fails, one that hangs, an agent killed mid-task, the
//! operator killed mid-anneal, a cycle. Every task leaves a line in a file
//! per run, so "ran once" is counted, not assumed.

mod support;

use girder::api::noderole::{NodeRole, RoleRunState};
use girder::api::{ConditionStatus, Workload};
use girder::graph::BindingState;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use support::bind::{Bind, dig_until, set};
use support::farm::{Farm, OPERATOR_FLAGS};
use support::*;

async fn bindings(client: &Client, ns: &str, workload: &str) -> Vec<NodeRole> {
    let api: Api<NodeRole> = Api::namespaced(client.clone(), ns);
    let mut list = api.list(&ListParams::default()).await.expect("list NodeRoles").items;
    list.retain(|b| b.spec.workload == workload);
    list.sort_by_key(|b| b.name_any());
    list
}

fn state(b: &NodeRole) -> Option<BindingState> {
    b.status.as_ref()?.state
}

fn message(b: &NodeRole) -> String {
    b.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_default()
}

/// Waits until `check` holds for the workload's bindings; returns them.
async fn bindings_where(farm: &Farm, workload: &str, what: &str, check: impl Fn(&[NodeRole]) -> bool) -> Vec<NodeRole> {
    let (client, ns) = (farm.client.clone(), farm.ns.name.clone());
    let what = format!("{workload}: {what}");
    let found = wait_for(&what, || {
        let (client, ns) = (client.clone(), ns.clone());
        let check = &check;
        async move {
            let list = bindings(&client, &ns, workload).await;
            check(&list).then_some(list)
        }
    });
    found.await
}

async fn workload_condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
) -> Option<(ConditionStatus, String, String)> {
    let api: Api<Workload> = Api::namespaced(client.clone(), ns);
    let w = api.get_opt(name).await.ok()??;
    let c = girder::api::condition::find(&w.status?.conditions, type_)?.clone();
    Some((c.status, c.reason, c.message))
}

fn all_in(list: &[NodeRole], n: usize, s: BindingState) -> bool {
    list.len() == n && list.iter().all(|b| state(b) == Some(s))
}

/// Lines of the file a task appends to on each run.
fn runs(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default().lines().map(str::to_string).collect()
}

fn role_yaml(name: &str, scope: &str, requires: &[&str], extra: &str, script: &str) -> String {
    let script: String = script.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "---\napiVersion: girder.dev/v1alpha1\nkind: Role\nmetadata: {{name: {name}}}\nspec:\n  scope: {scope}\n  requires: {requires:?}\n  task:\n{extra}    script: |\n{script}"
    )
}

#[tokio::test]
async fn roles_run_in_dependency_order_on_the_nodes_agents_and_failures_say_where() {
    let mut farm = Farm::new("roles", 3, "127.91.0").await;
    let (client, ns) = (farm.client.clone(), farm.ns.name.clone());
    let marks = farm.lab.0.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let marks_dir = marks.to_str().unwrap();

    // greet (Node) on every node -> gather (Cluster, one node: the barrier)
    // -> spread (Cluster, every node, gets gather's outputs).
    let mut yaml = String::new();
    yaml += &role_yaml(
        "greet",
        "Node",
        &[],
        "    timeoutSeconds: 30\n",
        &format!(
            "set -eu\ns=$(date +%s%N)\nin=$(cat)\nip=$(printf '%s' \"$in\" | jq -r '.node.addresses.admin[0]')\necho \"$GIRDER_RUN $(printf '%s' \"$in\" | jq -r .attributes.word)\" >> {marks_dir}/greet-$GIRDER_NODE\necho \"greeting from $GIRDER_NODE\"\nsleep 0.2\necho \"$s $(date +%s%N)\" >> {marks_dir}/spans\nprintf '{{\"greeting\": \"%s at %s\"}}\\n' \"$GIRDER_NODE\" \"$ip\""
        ),
    );
    yaml += &role_yaml(
        "gather",
        "Cluster",
        &["greet"],
        "    timeoutSeconds: 30\n    sensitiveOutputs: [secret]\n",
        &format!(
            "set -eu\necho \"$GIRDER_RUN\" >> {marks_dir}/gather\ns=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n')\necho \"$s\" > {marks_dir}/gather-secret\njq -c --arg s \"$s\" '{{all: [.parents.greet[].outputs.greeting] | sort, members: (.parents.greet | length), secret: $s}}' \"$GIRDER_INPUTS\" > \"$GIRDER_OUTPUTS\""
        ),
    );
    yaml += &role_yaml(
        "spread",
        "Cluster",
        &["gather"],
        "    timeoutSeconds: 30\n",
        &format!("set -eu\njq -c '.parents.gather[0].outputs' \"$GIRDER_INPUTS\" > {marks_dir}/spread-$GIRDER_NODE"),
    );
    let hello = "---\napiVersion: girder.dev/v1alpha1\nkind: Workload\nmetadata: {name: hello}\nspec:\n  nodeSelector: {matchLabels: {farm: \"yes\"}}\n  roles:\n  - {role: greet, attributes: {word: WORD}}\n  - {role: gather, count: 1}\n  - {role: spread}\n  rollout: {maxInFlight: 1}\n";
    yaml += &hello.replace("WORD", "one");
    apply_yaml(&ns, &yaml);

    let done = bindings_where(&farm, "hello", "all 7 bindings Active", |l| all_in(l, 7, BindingState::Active)).await;
    // Each greet ran once; gather saw all three, after all three.
    for name in &farm.names {
        assert_eq!(runs(&marks, &format!("greet-{name}")).len(), 1, "{}", farm.agent_logs());
    }
    let gather = done.iter().find(|b| b.spec.role == "gather").unwrap();
    let outputs = gather.status.as_ref().unwrap().outputs.clone().unwrap();
    assert_eq!(outputs["members"], 3, "{outputs}");
    let all: Vec<String> = serde_json::from_value(outputs["all"].clone()).unwrap();
    assert_eq!(all.len(), 3);
    assert!(all[0].starts_with("roles-0 at 127.91.0."), "{all:?}");
    // Outputs flowed to every spread member through its inputs, the
    // sensitive one too; that one is in no status, only in the binding's
    // Secret.
    let secret = std::fs::read_to_string(marks.join("gather-secret")).unwrap().trim().to_string();
    assert_eq!(secret.len(), 32, "{secret}");
    let mut with_secret = outputs.clone();
    with_secret["secret"] = json!(secret);
    for name in &farm.names {
        let seen = std::fs::read_to_string(marks.join(format!("spread-{name}"))).unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&seen).unwrap(), with_secret);
    }
    for b in &done {
        assert!(!serde_json::to_string(&b.status).unwrap().contains(&secret), "{} shows the secret", b.name_any());
    }
    let kept = gather.status.as_ref().unwrap().secret_outputs.clone().expect("status.secretOutputs");
    assert_eq!(kept.keys, ["secret"]);
    assert_eq!(kept.secret, format!("girder-out-{}", gather.name_any()));
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let stored = secrets.get(&kept.secret).await.unwrap();
    assert_eq!(stored.data.as_ref().unwrap()["secret"].0, secret.as_bytes());
    assert_eq!(stored.owner_references()[0].uid, gather.uid().unwrap(), "owned by its binding");
    // The report: timing, a log tail, the exit code.
    let greet = done.iter().find(|b| b.spec.role == "greet").unwrap();
    let report = greet.status.as_ref().unwrap().report.clone().unwrap();
    assert_eq!(report.state, RoleRunState::Succeeded);
    assert_eq!(report.exit_code, Some(0));
    assert!(report.log_tail.unwrap_or_default().contains("greeting from"));
    assert!(report.milliseconds.is_some() && report.started.is_some());
    let (ready, reason, _) = workload_condition(&client, &ns, "hello", "Ready").await.unwrap();
    assert_eq!((ready, reason.as_str()), (ConditionStatus::True, "AllActive"));

    // maxInFlight: 1 held: no two greet runs overlapped.
    let mut spans: Vec<(u128, u128)> = runs(&marks, "spans")
        .iter()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 3);
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "overlapping runs: {spans:?}");

    // An agent's token cannot report on another node's binding.
    let other = done.iter().find(|b| b.spec.node != farm.names[0]).unwrap().name_any();
    let token = farm.agents[0].as_ref().unwrap().token();
    let as_agent = {
        let mut config = kube::Config::infer().await.unwrap();
        config.auth_info = kube::config::AuthInfo { token: Some(token.into()), ..Default::default() };
        Client::try_from(config).unwrap()
    };
    let api: Api<NodeRole> = Api::namespaced(as_agent.clone(), &ns);
    let forged = api
        .patch_status(
            &other,
            &PatchParams::apply("girder-agent").force(),
            &Patch::Apply(json!({
            "apiVersion": "girder.dev/v1alpha1", "kind": "NodeRole",
            "status": { "report": { "id": "x", "state": "Succeeded" } } })),
        )
        .await;
    match forged {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("another node's binding was writable: {other:?}"),
    }
    // It reads the Secret its runs name (a parent's sensitive outputs) and
    // no other; it writes only those of its own sensitive bindings.
    let as_agent_secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(as_agent, &ns);
    let read = as_agent_secrets.get(&kept.secret).await.map(|s| s.data.unwrap_or_default()["secret"].0.clone());
    assert_eq!(read.unwrap(), secret.as_bytes());
    match as_agent_secrets.get("bmc").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("an agent read the BMC credentials: {other:?}"),
    }
    if gather.spec.node != farm.names[0] {
        let overwrite = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": {"secret": "Zm9yZ2Vk"}});
        match as_agent_secrets.patch(&kept.secret, &PatchParams::apply("forger"), &Patch::Apply(overwrite)).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
            other => panic!("another node's sensitive outputs were writable: {other:?}"),
        }
    }

    // A change of attributes re-runs what it reaches, one at a time.
    // Rehearsed first: girder plan runs the operator's decision on the
    // changed workload and applies nothing.
    let plan = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_girder"));
        run_ok(cmd.args(["plan", "hello", "-n", &ns]).args(extra))
    };
    let now = plan(&[]);
    assert!(now.contains("layer 1: gather (Cluster: waits for every binding of greet)"), "{now}");
    assert!(now.contains("create 0 bindings; remove 0; run 0 again"), "{now}");
    // The same plan as a picture, and through kubectl as its plugin (the
    // binary on PATH as kubectl-girder).
    picture_matches(&plan(&["-o", "svg"]), &bindings(&farm.client, &ns, "hello").await);
    let dot = plan(&["-o", "dot"]);
    assert!(dot.contains("ltail=\"cluster_greet\", lhead=\"cluster_gather\""), "{dot}");
    let plugins = farm.lab.0.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_girder"), plugins.join("kubectl-girder")).unwrap();
    let path = format!("{}:{}", plugins.display(), std::env::var("PATH").unwrap_or_default());
    let through_kubectl = run_ok(kubectl().env("PATH", &path).args(["girder", "plan", "hello", "-n", &ns]));
    assert_eq!(through_kubectl, plan(&[]));
    let help = run_ok(kubectl().env("PATH", &path).args(["girder", "plan", "--help"]));
    assert!(help.contains("Usage: kubectl girder plan"), "{help}");
    let changed = farm.lab.0.join("hello-two.yaml");
    std::fs::write(&changed, hello.replace("WORD", "two")).unwrap();
    let rehearsed = plan(&["-f", changed.to_str().unwrap()]);
    assert!(
        rehearsed.contains("Applying it would create 0 bindings; remove 0; run 3 again: hello.greet."),
        "{rehearsed}"
    );
    assert_eq!(runs(&marks, "spans").len(), 3, "a rehearsal runs nothing");
    apply_yaml(&ns, &hello.replace("WORD", "two"));
    bindings_where(&farm, "hello", "greet re-run everywhere with the new word", |l| {
        all_in(l, 7, BindingState::Active)
            && farm
                .names
                .iter()
                .all(|n| runs(&marks, &format!("greet-{n}")).last().is_some_and(|l| l.ends_with(" two")))
    })
    .await;
    for name in &farm.names {
        assert_eq!(runs(&marks, &format!("greet-{name}")).len(), 2, "greet on {name} ran once more, no more");
    }

    // The operator killed mid-anneal: another workload converges once a new
    // one starts, nothing ran twice.
    yaml = role_yaml(
        "slow",
        "Node",
        &[],
        "    timeoutSeconds: 60\n    destructive: true\n",
        &format!("echo \"$GIRDER_RUN\" >> {marks_dir}/slow-$GIRDER_NODE\nsleep 3"),
    );
    yaml += "---\napiVersion: girder.dev/v1alpha1\nkind: Workload\nmetadata: {name: slow}\nspec:\n  roles:\n  - {role: slow}\n";
    apply_yaml(&ns, &yaml);
    bindings_where(&farm, "slow", "a slow task running", |l| l.iter().any(|b| state(b) == Some(BindingState::Running)))
        .await;
    let mut operator = farm.operator.take().unwrap();
    operator.signal("KILL");
    operator.wait_exit().await;
    drop(operator);
    farm.operator = Some(Operator::start_with(OperatorOptions::new(&ns, "roles-again"), &OPERATOR_FLAGS));
    bindings_where(&farm, "slow", "every slow binding Active after the restart", |l| {
        all_in(l, 3, BindingState::Active)
    })
    .await;
    for name in &farm.names {
        assert_eq!(runs(&marks, &format!("slow-{name}")).len(), 1, "a destructive task ran once on {name}");
    }
}

#[tokio::test]
async fn failures_block_descendants_timeouts_kill_and_an_interrupted_task_is_not_rerun_if_destructive() {
    let mut farm = Farm::new("roles-fail", 2, "127.92.0").await;
    let (client, ns) = (farm.client.clone(), farm.ns.name.clone());
    let marks = farm.lab.0.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let marks_dir = marks.to_str().unwrap();

    // A cycle blocks before anything is created.
    let mut yaml = role_yaml("loop-a", "Node", &["loop-b"], "", "true");
    yaml += &role_yaml("loop-b", "Node", &["loop-a"], "", "true");
    yaml += "---\napiVersion: girder.dev/v1alpha1\nkind: Workload\nmetadata: {name: loop}\nspec:\n  roles:\n  - {role: loop-a}\n  - {role: loop-b}\n";
    apply_yaml(&ns, &yaml);
    // (Until the operator has seen both Roles, one of them is missing: the
    // workload is Blocked for that first, then for the cycle.)
    let blocked = wait_for("the cyclic workload Blocked by its cycle", || {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            workload_condition(&client, &ns, "loop", "Blocked")
                .await
                .filter(|c| c.0 == ConditionStatus::True && c.1 == "DependencyCycle")
        }
    })
    .await;
    assert!(blocked.2.contains("loop-a -> loop-b -> loop-a"), "{}", blocked.2);

    // A failing task: Error with its exit code and output; its child Blocked naming it.
    yaml = role_yaml(
        "breaks",
        "Node",
        &[],
        "    timeoutSeconds: 30\n    retries: 1\n",
        &format!("echo \"$GIRDER_ATTEMPT\" >> {marks_dir}/breaks-$GIRDER_NODE\necho 'disk on fire' >&2\nexit 3"),
    );
    yaml += &role_yaml("after", "Cluster", &["breaks"], "    timeoutSeconds: 30\n", "true");
    yaml += &role_yaml(
        "hangs",
        "Node",
        &[],
        "    timeoutSeconds: 2\n",
        &format!("sh -c 'sleep 300; true' {marks_dir}/hang-$GIRDER_NODE &\nwait"),
    );
    yaml += "---\napiVersion: girder.dev/v1alpha1\nkind: Workload\nmetadata: {name: broken}\nspec:\n  roles:\n  - {role: breaks, count: 1}\n  - {role: after}\n  - {role: hangs, count: 1}\n";
    apply_yaml(&ns, &yaml);
    let list = bindings_where(&farm, "broken", "breaks and hangs in Error, after Blocked", |l| {
        let of = |role: &str| l.iter().filter(move |b| b.spec.role == role).collect::<Vec<_>>();
        of("breaks").iter().all(|b| state(b) == Some(BindingState::Error))
            && of("hangs").iter().all(|b| state(b) == Some(BindingState::Error))
            && of("after").len() == 2
            && of("after")
                .iter()
                .all(|b| state(b) == Some(BindingState::Blocked) && message(b).contains("breaks failed"))
    })
    .await;
    let breaks = list.iter().find(|b| b.spec.role == "breaks").unwrap();
    let report = breaks.status.as_ref().unwrap().report.clone().unwrap();
    assert_eq!(report.exit_code, Some(3));
    assert_eq!(report.reason.as_deref(), Some("TaskFailed"));
    assert!(message(breaks).contains("disk on fire"), "{}", message(breaks));
    assert_eq!(runs(&marks, &format!("breaks-{}", breaks.spec.node)), ["1", "2"], "one retry, then Error");
    for after in list.iter().filter(|b| b.spec.role == "after") {
        assert!(message(after).contains(&format!("breaks failed on {}", breaks.spec.node)), "{}", message(after));
    }
    let hangs = list.iter().find(|b| b.spec.role == "hangs").unwrap();
    assert!(message(hangs).contains("TaskTimedOut"), "{}", message(hangs));
    let left = std::process::Command::new("pgrep").args(["-f", &format!("{marks_dir}/hang-")]).output().unwrap();
    assert!(left.stdout.is_empty(), "the timeout killed the task's whole process group");
    let (degraded, reason, text) = workload_condition(&client, &ns, "broken", "Degraded").await.unwrap();
    assert_eq!((degraded, reason.as_str()), (ConditionStatus::True, "BindingFailed"));
    assert!(text.contains("failed"), "{text}");

    // An agent killed mid-task: a non-destructive task runs again; a
    // destructive one is not run again and says so.
    for (role, destructive) in [("resumable", false), ("once", true)] {
        yaml = role_yaml(
            role,
            "Node",
            &[],
            &format!("    timeoutSeconds: 60\n    destructive: {destructive}\n"),
            &format!("echo \"$GIRDER_RUN\" >> {marks_dir}/{role}\nsleep 4"),
        );
        yaml += &format!(
            "---\napiVersion: girder.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {role}}}\nspec:\n  roles:\n  - {{role: {role}, nodes: [{}]}}\n",
            farm.names[1]
        );
        apply_yaml(&ns, &yaml);
        bindings_where(&farm, role, "running", |l| l.iter().any(|b| state(b) == Some(BindingState::Running))).await;
        wait_for("the task to start on the node", || {
            let started = !runs(&marks, role).is_empty();
            async move { started.then_some(()) }
        })
        .await;
        farm.restart_agent(1);
        let expected = if destructive { BindingState::Error } else { BindingState::Active };
        let list =
            bindings_where(&farm, role, &format!("{expected:?} after the agent restarted"), |l| all_in(l, 1, expected))
                .await;
        let ran = runs(&marks, role);
        if destructive {
            assert_eq!(ran.len(), 1, "a destructive task is not run again: {ran:?}");
            assert!(message(&list[0]).contains("destructive"), "{}", message(&list[0]));
        } else {
            assert_eq!(ran.len(), 2, "interrupted, then run again: {ran:?}");
            assert_ne!(ran[0], ran[1], "as a new run");
        }
    }
    let _ = client;
}

/// Checks `girder plan -o svg`'s picture against the bindings: Graphviz
/// drew a node for each, filled with its state's colour.
fn picture_matches(svg: &str, list: &[NodeRole]) {
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
    // Each node is a group with its title (the binding's role@node) and a
    // shape filled with its colour.
    let mut drawn = BTreeMap::new();
    for group in svg.split("class=\"node\"").skip(1) {
        let title = group.split("<title>").nth(1).and_then(|t| t.split("</title>").next()).unwrap_or_default();
        let fill = group.split("fill=\"").nth(1).and_then(|f| f.split('"').next()).unwrap_or_default();
        drawn.insert(title.replace("&#45;", "-"), fill.to_string());
    }
    assert!(!list.is_empty());
    for binding in list {
        let key = format!("{}@{}", binding.spec.role, binding.spec.node);
        let want = girder::plan::state_colour(Some(state(binding).unwrap_or(BindingState::Proposed)));
        assert_eq!(drawn.get(&key).map(String::as_str), Some(want), "{key} in the picture: {drawn:?}");
        let group = format!("<title>cluster_{}</title>", binding.spec.role.replace('-', "&#45;"));
        assert!(svg.contains(&group), "no box for role {}", binding.spec.role);
    }
}

/// A binary `make test` built beside kubectl in the tools' assets (etcd,
/// kube-apiserver).
fn tool(name: &str) -> std::path::PathBuf {
    let kubectl = std::env::var("GIRDER_KUBECTL").expect("GIRDER_KUBECTL (make test sets it)");
    Path::new(&kubectl).with_file_name(name)
}

/// The TSIG Secret (YAML) and the Network's `dns` (spec lines) of a farm
/// whose Network registers its names in `bind`'s `zone`.
fn farm_dns(bind: &Bind, zone: &str) -> (String, String) {
    let tsig = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: tsig}}\nstringData: {{keyName: {}, algorithm: {}, secret: \"{}\"}}\n",
        bind.key("key.name"),
        bind.key("key.algorithm"),
        bind.key("key.secret")
    );
    let dns =
        format!("  dns: {{server: \"{}\", zone: {zone}, tsigSecretRef: {{name: tsig}}, ttl: 5}}\n", bind.server());
    (tsig, dns)
}

/// curl with the client certificate of `pki`.
fn curl_tls(pki: &Path, url: &str, client_cert: bool) -> (bool, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "5", "--cacert"]).arg(pki.join("ca.crt"));
    if client_cert {
        cmd.arg("--cert").arg(pki.join("client.crt")).arg("--key").arg(pki.join("client.key"));
    }
    let out = cmd.arg(url).output().expect("curl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// The workload's `roles` entries of the sample's etcd roles, `count`
/// members keeping their files below `data`.
fn etcd_roles(data: &str, assets: &str, count: usize) -> String {
    format!(
        r#"  - {{role: etcd-keys, count: {count}, attributes: {{dataDir: "{data}", network: admin}}}}
  - {{role: etcd-ca, count: 1, attributes: {{dataDir: "{data}", extraSANs: ["127.0.0.1"]}}}}
  - {{role: etcd, count: {count}, attributes: {{dataDir: "{data}", network: admin, assets: "{assets}"}}}}
  - {{role: etcd-healthy, count: 1, attributes: {{dataDir: "{data}"}}}}
"#
    )
}

/// A workload of the sample's roles (`roles` and `pools`: its YAML list
/// entries), one run at a time as in the sample, into the farm's namespace.
fn sample_workload(ns: &str, name: &str, roles: &str, pools: &str) {
    apply_yaml(
        ns,
        &format!(
            "apiVersion: girder.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}}}\nspec:\n  roles:\n{roles}  dnsPools:\n{pools}  rollout: {{maxInFlight: 1}}\n"
        ),
    );
}

/// The etcd sample workload with `count` members, into the farm's namespace.
fn etcd_workload(ns: &str, data: &str, assets: &str, count: usize) {
    let pools = "  - {name: etcd.farm.test, role: etcd, network: admin}\n";
    sample_workload(ns, "etcd", &etcd_roles(data, assets, count), pools);
}

/// Fails the test at once when a binding is in Error, saying why.
fn no_error(farm: &Farm, list: &[NodeRole]) {
    if let Some(failed) = list.iter().find(|b| state(b) == Some(BindingState::Error)) {
        panic!("{}: {}\n{}", failed.name_any(), message(failed), farm.agent_logs());
    }
}

/// Waits for `n` etcd members all Active and healthy, and the DNS pool to
/// name exactly them; returns the endpoints etcd-healthy checked and the
/// bindings.
async fn etcd_settled(farm: &Farm, bind: &Bind, n: usize) -> (Vec<String>, Vec<NodeRole>) {
    let done = bindings_where(farm, "etcd", &format!("{n} members: every binding Active"), |l| {
        no_error(farm, l);
        let healthy = l.iter().find(|b| b.spec.role == "etcd-healthy");
        let members = healthy.and_then(|b| b.status.as_ref()?.outputs.as_ref()?.get("members")?.as_u64());
        all_in(l, 2 * n + 2, BindingState::Active) && members == Some(n as u64)
    })
    .await;
    let healthy = done.iter().find(|b| b.spec.role == "etcd-healthy").unwrap();
    let outputs = healthy.status.as_ref().unwrap().outputs.clone().unwrap();
    let endpoints: Vec<String> = outputs["endpoints"].as_str().unwrap().split(',').map(str::to_string).collect();
    assert_eq!(endpoints.len(), n, "{outputs}");
    let addresses: Vec<&str> =
        endpoints.iter().map(|e| e.trim_start_matches("https://").trim_end_matches(":2379")).collect();
    dig_until(bind, &["etcd.farm.test", "A"], set(&addresses)).await;
    (endpoints, done)
}

/// The members etcd itself lists, through `endpoint`.
fn etcd_members(pki: &Path, endpoint: &str) -> Vec<String> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("client.crt"))
        .arg("--key")
        .arg(pki.join("client.key"))
        .args(["-X", "POST", "-d", "{}", &format!("{endpoint}/v3/cluster/member/list")])
        .output()
        .expect("curl");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut names: Vec<String> = list["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m["name"].as_str().unwrap_or("").to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn the_sample_roles_form_a_tls_etcd_cluster_and_scale_it_3_to_5_to_3() {
    // The site's DNS server: the pool etcd.farm.test follows the members.
    let bind = Bind::start(&["farm.test"]);
    let (tsig, dns) = farm_dns(&bind, "farm.test");
    let farm = Farm::with("etcd", 5, "127.93.0", &tsig, &dns).await;
    let (client, ns) = (farm.client.clone(), farm.ns.name.clone());
    let assets = farm.serve("etcd", &tool("etcd"));
    let assets = assets.trim_end_matches("/etcd");
    let data = farm.lab.0.join("etcd");
    let data = data.to_str().unwrap();
    run_ok(kubectl().args(["apply", "-n", &ns, "-f", "config/samples/roles.yaml"]));
    etcd_workload(&ns, data, assets, 3);
    let (endpoints, done) = etcd_settled(&farm, &bind, 3).await;
    // Every member answers over TLS, to a client certificate of the cluster's
    // CA only; the members are three nodes' addresses from IPAM.
    let pki = Path::new(data).join(&farm.names[0]).join("pki");
    for endpoint in &endpoints {
        assert!(endpoint.starts_with("https://127.93.0."), "{endpoint}");
        let (ok, body) = curl_tls(&pki, &format!("{endpoint}/health"), true);
        assert!(ok && body.contains("\"health\":\"true\""), "{endpoint}: {body}");
        let (ok, body) = curl_tls(&pki, &format!("{endpoint}/health"), false);
        assert!(!ok, "{endpoint} answered without a client certificate: {body}");
    }
    let three: Vec<String> = {
        let mut n: Vec<String> = done.iter().filter(|b| b.spec.role == "etcd").map(|b| b.spec.node.clone()).collect();
        n.sort();
        n
    };
    assert_eq!(etcd_members(&pki, &endpoints[0]), three);
    // No private key left its node: not in any status, not in the CA's outputs.
    for b in &done {
        let status = serde_json::to_string(&b.status).unwrap();
        assert!(!status.contains("PRIVATE KEY"), "{} holds a private key in its status", b.name_any());
    }
    let (ready, _, _) = workload_condition(&client, &ns, "etcd", "Ready").await.unwrap();
    assert_eq!(ready, ConditionStatus::True);

    // 3 -> 5: each new member is added to the running cluster, then started.
    etcd_workload(&ns, data, assets, 5);
    let (endpoints, done) = etcd_settled(&farm, &bind, 5).await;
    let mut five: Vec<String> = done.iter().filter(|b| b.spec.role == "etcd").map(|b| b.spec.node.clone()).collect();
    five.sort();
    assert_eq!(etcd_members(&pki, &endpoints[0]), five);
    for endpoint in &endpoints {
        let (ok, body) = curl_tls(&pki, &format!("{endpoint}/health"), true);
        assert!(ok && body.contains("\"health\":\"true\""), "{endpoint}: {body}");
    }
    let added: Vec<&String> = five.iter().filter(|n| !three.contains(n)).collect();
    for node in &added {
        let log = std::fs::read_to_string(Path::new(data).join(node.as_str()).join("etcd.log")).unwrap_or_default();
        assert!(!log.is_empty(), "{node} ran etcd");
    }

    // 5 -> 3: the two members of the highest index leave the cluster, and
    // their etcd stops.
    etcd_workload(&ns, data, assets, 3);
    let (endpoints, done) = etcd_settled(&farm, &bind, 3).await;
    let mut kept: Vec<String> = done.iter().filter(|b| b.spec.role == "etcd").map(|b| b.spec.node.clone()).collect();
    kept.sort();
    assert_eq!(kept, three, "the members placed first stay");
    wait_for("etcd to list three members", || {
        let members = etcd_members(&pki, &endpoints[0]);
        let three = &three;
        async move { (&members == three).then_some(()) }
    })
    .await;
    for node in &added {
        let pid = std::fs::read_to_string(Path::new(data).join(node.as_str()).join("etcd.pid")).unwrap();
        wait_for(&format!("the removed member on {node} to stop"), || {
            let alive = Path::new(&format!("/proc/{}", pid.trim())).exists();
            async move { (!alive).then_some(()) }
        })
        .await;
    }
}

/// The sample's masters workload in the farm's namespace: `masters`
/// kube-apiservers on a three-member etcd, behind `k8s.lab.test`.
fn masters_workload(ns: &str, data: &str, assets: &str, masters: usize) {
    let kube = format!(
        r#"  - {{role: kube-keys, count: 3, attributes: {{dataDir: "{data}/kube", network: admin}}}}
  - {{role: kube-ca, count: 1, attributes: {{dataDir: "{data}/kube", name: k8s.lab.test}}}}
  - role: kube-apiserver
    count: {masters}
    attributes:
      dataDir: "{data}/kube"
      etcdDataDir: "{data}/etcd"
      network: admin
      assets: "{assets}"
      # The masters' addresses are loopback ones here.
      extraArgs: ["--endpoint-reconciler-type=none"]
"#
    );
    let roles = etcd_roles(&format!("{data}/etcd"), assets, 3) + &kube;
    sample_workload(ns, "k8s", &roles, "  - {name: k8s.lab.test, role: kube-apiserver, network: admin}\n");
}

/// Waits until `masters` kube-apiserver bindings are Active, one more at a
/// time (they start one by one), then every binding; returns them.
async fn masters_settled(farm: &Farm, masters: usize) -> Vec<NodeRole> {
    let no_error = |l: &[NodeRole]| no_error(farm, l);
    bindings_where(farm, "k8s", "the etcd cluster healthy", |l| {
        no_error(l);
        l.iter().any(|b| b.spec.role == "etcd-healthy" && state(b) == Some(BindingState::Active))
    })
    .await;
    for n in 1..=masters {
        bindings_where(farm, "k8s", &format!("{n} of {masters} kube-apiservers Active"), |l| {
            no_error(l);
            l.iter().filter(|b| b.spec.role == "kube-apiserver" && state(b) == Some(BindingState::Active)).count() >= n
        })
        .await;
    }
    bindings_where(farm, "k8s", "every binding Active", |l| {
        no_error(l);
        let masters_now = l.iter().filter(|b| b.spec.role == "kube-apiserver").count();
        masters_now == masters && all_in(l, 12 + masters, BindingState::Active)
    })
    .await
}

/// kubectl as a client of the site runs it: names resolved through the DNS
/// server `resolv` names. /etc/resolv.conf is replaced in a mount namespace
/// of its own, for this one command.
fn kubectl_through(resolv: &Path, args: &[&str]) -> (bool, String) {
    let kubectl = std::env::var("GIRDER_KUBECTL").expect("GIRDER_KUBECTL (make test sets it)");
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#])
        .arg(resolv)
        .arg(kubectl)
        .args(args)
        .output()
        .expect("unshare");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// When each role's runs went, from `since`: first start and last end per
/// role in seconds, in the order they started (BENCHMARKS.md quotes it).
fn timeline(done: &[NodeRole], since: jiff::Timestamp) -> String {
    let mut spans: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for b in done {
        let Some(report) = b.status.as_ref().and_then(|s| s.report.as_ref()) else { continue };
        let (Some(started), Some(ms)) = (report.started.as_ref(), report.milliseconds) else { continue };
        let start = started.0.duration_since(since).as_secs_f64();
        let end = start + ms as f64 / 1000.0;
        let span = spans.entry(b.spec.role.as_str()).or_insert((start, end));
        *span = (span.0.min(start), span.1.max(end));
    }
    let mut rows: Vec<(&str, (f64, f64))> = spans.into_iter().collect();
    rows.sort_by(|a, b| a.1.0.total_cmp(&b.1.0));
    rows.iter().map(|(role, (a, b))| format!("{role:>15}: {a:6.1} s -> {b:6.1} s\n")).collect()
}

/// The addresses of the nodes whose kube-apiserver binding is Active.
fn master_addresses(done: &[NodeRole]) -> Vec<String> {
    let mut addresses: Vec<String> = done
        .iter()
        .filter(|b| b.spec.role == "kube-apiserver")
        .map(|b| {
            let outputs = b.status.as_ref().and_then(|s| s.outputs.clone()).unwrap_or_default();
            let endpoint = outputs["endpoint"].as_str().unwrap_or_default().to_string();
            endpoint.trim_start_matches("https://").trim_end_matches(":6443").to_string()
        })
        .collect();
    addresses.sort();
    addresses
}

#[tokio::test]
async fn the_sample_masters_serve_kubernetes_through_one_dns_name_that_follows_their_count() {
    // The site's DNS server, and a resolver on port 53 of an address of its
    // own in front of it, so that a resolv.conf can name it: kubectl reaches
    // the masters through it.
    let bind = Bind::start(&["lab.test"]);
    let _resolver = bind.resolver("127.94.0.2");
    let (tsig, dns) = farm_dns(&bind, "lab.test");
    let mut farm = Farm::with("k8s", 3, "127.94.0", &tsig, &dns).await;
    let ns = farm.ns.name.clone();
    let assets = farm.serve("etcd", &tool("etcd"));
    let assets = assets.trim_end_matches("/etcd");
    farm.serve("kube-apiserver", &tool("kube-apiserver"));
    let data = farm.lab.0.join("data");
    let data = data.to_str().unwrap();
    run_ok(kubectl().args(["apply", "-n", &ns, "-f", "config/samples/roles.yaml"]));
    let applied = jiff::Timestamp::now();
    masters_workload(&ns, data, assets, 3);
    let done = masters_settled(&farm, 3).await;
    // The sample lab's plan as a picture: every binding drawn, Active.
    let picture =
        run_ok(std::process::Command::new(env!("CARGO_BIN_EXE_girder")).args(["plan", "k8s", "-n", &ns, "-o", "svg"]));
    picture_matches(&picture, &done);
    eprintln!(
        "from apply to every binding Active: {:.1} s; each role's runs:\n{}",
        jiff::Timestamp::now().duration_since(applied).as_secs_f64(),
        timeline(&done, applied)
    );
    let three = master_addresses(&done);
    assert_eq!(three.len(), 3, "{three:?}");
    assert!(three.iter().all(|a| a.starts_with("127.94.0.")), "{three:?}");
    let names: Vec<&str> = three.iter().map(String::as_str).collect();
    dig_until(&bind, &["k8s.lab.test", "A"], set(&names)).await;

    // The administrator's kubeconfig is a sensitive output: in the kube-ca
    // binding's Secret, not its status. It names the shared name; kubectl
    // resolves it through BIND and any master answers.
    let ca = done.iter().find(|b| b.spec.role == "kube-ca").unwrap();
    let status = ca.status.as_ref().unwrap();
    assert!(status.outputs.as_ref().unwrap().get("adminKubeconfig").is_none(), "{:?}", status.outputs);
    let kept = status.secret_outputs.clone().expect("status.secretOutputs");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(farm.client.clone(), &ns);
    let secret = secrets.get(&kept.secret).await.unwrap();
    let admin_path = farm.lab.0.join("admin.kubeconfig");
    std::fs::write(&admin_path, &secret.data.unwrap()["adminKubeconfig"].0).unwrap();
    let admin = admin_path.to_str().unwrap();
    let resolv = farm.lab.0.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.94.0.2\n").unwrap();
    let through_name = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", admin, "--request-timeout", "10s"];
        all.extend_from_slice(args);
        kubectl_through(&resolv, &all)
    };
    let (ok, out) = through_name(&["get", "--raw", "/readyz"]);
    assert!(ok && out.trim() == "ok", "{out}");
    let (ok, out) = through_name(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert!(ok && out.trim() == "girder-admin", "{out}");
    // Every master answers by its own address too, and they share one etcd:
    // what one writes, another reads.
    for address in &three {
        let server = format!("https://{address}:6443");
        let (ok, out) = through_name(&["--server", &server, "get", "--raw", "/readyz"]);
        assert!(ok && out.trim() == "ok", "{server}: {out}");
    }
    let first = format!("https://{}:6443", three[0]);
    let last = format!("https://{}:6443", three[2]);
    let (ok, out) = through_name(&["--server", &first, "create", "namespace", "written-through-one"]);
    assert!(ok, "{out}");
    let (ok, out) = through_name(&["--server", &last, "get", "namespace", "written-through-one", "-o", "name"]);
    assert!(ok && out.trim() == "namespace/written-through-one", "{out}");

    // 3 -> 2: the master of the highest index leaves the pool; the name
    // still answers. 2 -> 3: it comes back.
    masters_workload(&ns, data, assets, 2);
    let done = masters_settled(&farm, 2).await;
    let two = master_addresses(&done);
    assert_eq!(two.len(), 2, "{two:?}");
    let names: Vec<&str> = two.iter().map(String::as_str).collect();
    dig_until(&bind, &["k8s.lab.test", "A"], set(&names)).await;
    let (ok, out) = through_name(&["get", "--raw", "/readyz"]);
    assert!(ok && out.trim() == "ok", "{out}");
    masters_workload(&ns, data, assets, 3);
    let done = masters_settled(&farm, 3).await;
    assert_eq!(master_addresses(&done), three);
    let names: Vec<&str> = three.iter().map(String::as_str).collect();
    dig_until(&bind, &["k8s.lab.test", "A"], set(&names)).await;

    // A master's node is turned off (spec.online false): an installed
    // system is asked to shut down first (Redfish GracefulShutdown, which
    // sushy-tools honours). A machine made of files does not stop its
    // processes by itself, so its agent, etcd member and kube-apiserver are
    // killed as the shutdown would. Its heartbeat lapses and it leaves the
    // pool; the name still answers (etcd keeps a quorum with two of three).
    let lost = done.iter().filter(|b| b.spec.role == "kube-apiserver").max_by_key(|b| b.spec.node.clone()).unwrap();
    let lost_address = master_addresses(std::slice::from_ref(lost)).remove(0);
    let nodes: Api<girder::api::BareMetalNode> = Api::namespaced(farm.client.clone(), &ns);
    let off = json!({"spec": {"online": false}});
    nodes.patch(&lost.spec.node, &PatchParams::default(), &Patch::Merge(off)).await.unwrap();
    node_where(&farm.client, &ns, &lost.spec.node, "powered off", |n| {
        n.status.as_ref().and_then(|s| s.power_state.as_deref()) == Some("Off")
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(farm.client.clone(), &ns);
    let notes: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(lost.spec.node.as_str()))
        .filter_map(|e| e.note)
        .collect();
    assert!(notes.iter().any(|n| n.contains("GracefulShutdown")), "{notes:?}");
    assert!(!notes.iter().any(|n| n.contains("ForceOff")), "{notes:?}");
    let i = farm.names.iter().position(|n| *n == lost.spec.node).unwrap();
    farm.kill_agent(i);
    let daemons = format!("{data}/(kube|etcd)/{}/bin/", lost.spec.node);
    std::process::Command::new("pkill").args(["-KILL", "-f", &daemons]).status().unwrap();
    let left: Vec<&str> = three.iter().map(String::as_str).filter(|a| *a != lost_address).collect();
    dig_until(&bind, &["k8s.lab.test", "A"], set(&left)).await;
    let (ok, out) = through_name(&["get", "--raw", "/readyz"]);
    assert!(ok && out.trim() == "ok", "{out}");

    // It comes back: powered on, its installed agent starts again. A new
    // agent runs the node's roles again (the others' stay as they are):
    // its etcd member and kube-apiserver start, and it is back in the pool.
    let runs_before = |list: &[NodeRole]| -> Vec<(String, i32)> {
        list.iter().map(|b| (b.name_any(), b.status.as_ref().and_then(|s| s.runs).unwrap_or(0))).collect()
    };
    let before = runs_before(&bindings(&farm.client, &ns, "k8s").await);
    let on = json!({"spec": {"online": true}});
    nodes.patch(&lost.spec.node, &PatchParams::default(), &Patch::Merge(on)).await.unwrap();
    farm.agents[i] = Some(farm.start_agent(i));
    dig_until(&bind, &["k8s.lab.test", "A"], set(&names)).await;
    let done = masters_settled(&farm, 3).await;
    let server = format!("https://{lost_address}:6443");
    let (ok, out) = through_name(&["--server", &server, "get", "--raw", "/readyz"]);
    assert!(ok && out.trim() == "ok", "{server}: {out}");
    for ((name, was), (_, now)) in before.iter().zip(runs_before(&done)) {
        if name.ends_with(&format!(".{}", lost.spec.node)) {
            assert_eq!(now, was + 1, "{name} ran again on the node that came back");
        } else {
            assert_eq!(now, *was, "{name} did not run again");
        }
    }
}
