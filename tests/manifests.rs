//! The ways users install girder, against a real API server: kustomize
//! (`config/`), the Helm chart, and a GitOps-style double server-side apply.

mod support;

use support::*;

fn can_i(request: &[&str; 2], namespace: &str) -> bool {
    can_i_as("system:serviceaccount:girder-system:girder-operator", request, &["-n", namespace])
}

/// `kubectl auth can-i` as `user`; `scope` is `-n NAMESPACE` or `-A`.
fn can_i_as(user: &str, request: &[&str; 2], scope: &[&str]) -> bool {
    let [verb, resource] = *request;
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let out = kubectl()
        .args(["auth", "can-i", "--as", user])
        .args(scope)
        .args([verb, resource, "--subresource", subresource])
        .output()
        .expect("kubectl auth can-i");
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[tokio::test]
async fn kustomize_default_and_samples_apply() {
    let client = client().await;
    install_crds(&client).await;
    run_ok(kubectl().args(["apply", "-k", "config/default"]));
    let deployment =
        run_ok(kubectl().args(["get", "deployment", "girder-operator", "-n", "girder-system", "-o", "json"]));
    let deployment: serde_json::Value = serde_json::from_str(&deployment).unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"][0], "operator");
    assert_eq!(container["securityContext"]["runAsNonRoot"], true);

    // Least privilege: exactly what the controllers use.
    for (allowed, request, ns) in [
        (true, ["list", "workloads.girder.dev"], "default"),
        (true, ["watch", "roles.girder.dev"], "default"),
        (true, ["patch", "workloads.girder.dev/status"], "default"),
        (true, ["patch", "roles.girder.dev/status"], "default"),
        (true, ["create", "events.events.k8s.io"], "default"),
        (true, ["patch", "events.events.k8s.io"], "default"),
        (true, ["update", "leases.coordination.k8s.io"], "girder-system"),
        // Agents' heartbeat Leases live in the nodes' namespaces.
        (true, ["update", "leases.coordination.k8s.io"], "default"),
        (true, ["create", "serviceaccounts/token"], "default"),
        (true, ["patch", "roles.rbac.authorization.k8s.io"], "default"),
        (false, ["update", "roles.rbac.authorization.k8s.io"], "default"),
        (false, ["create", "clusterroles.rbac.authorization.k8s.io"], "default"),
        (false, ["delete", "workloads.girder.dev"], "default"),
        (false, ["update", "workloads.girder.dev"], "default"),
        (false, ["patch", "workloads.girder.dev"], "default"),
        (true, ["get", "secrets"], "default"),
        (true, ["patch", "baremetalnodes.girder.dev"], "default"),
        (true, ["patch", "baremetalnodes.girder.dev/status"], "default"),
        (false, ["update", "baremetalnodes.girder.dev"], "default"),
        (false, ["delete", "baremetalnodes.girder.dev"], "default"),
        // The agent Secret of each session.
        (true, ["create", "secrets"], "default"),
        (false, ["update", "secrets"], "default"),
        (true, ["list", "networks.girder.dev"], "default"),
        (true, ["watch", "networks.girder.dev"], "default"),
        (true, ["watch", "baremetalnodes.girder.dev"], "default"),
        (true, ["patch", "networks.girder.dev/status"], "default"),
        (true, ["patch", "networks.girder.dev"], "default"),
        (false, ["update", "networks.girder.dev"], "default"),
        (false, ["delete", "networks.girder.dev"], "default"),
    ] {
        assert_eq!(can_i(&request, ns), allowed, "can the operator {request:?} in {ns}?");
    }

    let ns = TestNamespace::new(&client, "kustomize").await;
    // The operator runs with nothing but its ServiceAccount's permissions.
    let kubeconfig = service_account_kubeconfig(&ns.name, "girder-system", "girder-operator");
    let operator = Operator::start(OperatorOptions {
        lease_namespace: Some("girder-system"),
        kubeconfig: Some(&kubeconfig.0),
        lease_name: &ns.name,
        ..OperatorOptions::new(&ns.name, "rbac")
    });
    let out = run_ok(kubectl().args(["apply", "-k", "config/samples", "-n", &ns.name]));
    assert!(out.contains("workload.girder.dev/lab-k8s"), "{out}");
    let nodes = run_ok(kubectl().args(["get", "bmn", "-n", &ns.name, "-o", "name"]));
    assert_eq!(nodes.lines().count(), 5, "{nodes}");
    // `kubectl get girder` lists every kind through the category.
    let all = run_ok(kubectl().args(["get", "girder", "-n", &ns.name, "-o", "name"]));
    for kind in ["baremetalnode", "network", "role", "workload"] {
        assert!(all.contains(&format!("{kind}.girder.dev/")), "{all}");
    }
    wait_for("the operator, with only its RBAC, to plan the sample workload", || {
        let layers = kubectl()
            .args(["get", "workload", "lab-k8s", "-n", &ns.name, "-o", "jsonpath={.status.layerCount}"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        async move { (layers.ok()? == "5").then_some(()) }
    })
    .await;
    let logs = operator.logs();
    assert!(!logs.contains("forbidden"), "the operator hit a permission it lacks:\n{logs}");
}

/// A kubeconfig holding a token of the ServiceAccount `namespace`/`account`.
fn service_account_kubeconfig(name: &str, namespace: &str, account: &str) -> TempFile {
    let token = run_ok(kubectl().args(["create", "token", account, "-n", namespace, "--duration", "1h"]));
    let cluster = run_ok(kubectl().args([
        "config",
        "view",
        "--raw",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server} {.clusters[0].cluster.certificate-authority-data}",
    ]));
    let (server, ca) = cluster.trim().split_once(' ').expect("server and CA in the kubeconfig");
    let path = std::env::temp_dir().join(format!("{name}-operator.kubeconfig"));
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{ "name": "c", "cluster": { "server": server, "certificate-authority-data": ca } }],
        "users": [{ "name": "sa", "user": { "token": token.trim() } }],
        "contexts": [{ "name": "sa", "context": { "cluster": "c", "user": "sa" } }],
    });
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    TempFile(path)
}

#[test]
fn helm_lint_is_clean_and_rendering_is_deterministic() {
    let lint = run_ok(helm().args(["lint", "--strict", "charts/girder"]));
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    run_ok(helm().args(["lint", "--strict", "charts/girder", "--set", "pxe.enabled=true"]));
    let refused = helm()
        .args(["template", "girder", "charts/girder", "--set", "replicaCount=many"])
        .output()
        .expect("helm template");
    assert!(!refused.status.success(), "values.schema.json must refuse a non-integer replicaCount");
    // The image by the digest make image prints; a malformed digest is refused.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let pinned =
        run_ok(helm().args(["template", "girder", "charts/girder", "--set", &format!("image.digest={digest}")]));
    assert!(pinned.contains(&format!("image: \"girder@{digest}\"")), "{pinned}");
    let refused = helm()
        .args(["template", "girder", "charts/girder", "--set", "image.digest=latest"])
        .output()
        .expect("helm template");
    assert!(!refused.status.success(), "values.schema.json must refuse a digest that is not sha256:<64 hex>");
    let render = || run_ok(helm().args(["template", "girder", "charts/girder", "-n", "girder", "--include-crds"]));
    let first = render();
    assert_eq!(first, render(), "helm template is not deterministic");
    // The chart ships exactly the generated CRDs.
    for crd in std::fs::read_dir(repo_root().join("crds")).unwrap() {
        let path = crd.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with("girder.dev_") {
            let chart = std::fs::read_to_string(repo_root().join("charts/girder/crds").join(&name)).unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), chart, "{name} differs in the chart");
        }
    }
}

#[tokio::test]
async fn helm_install_and_a_second_server_side_apply_changes_nothing() {
    let client = client().await;
    install_crds(&client).await;
    let installed = TestNamespace::new(&client, "helm").await;
    let release = installed.name.clone();
    let out = run_ok(helm().args(["install", &release, "charts/girder", "-n", &installed.name, "--wait=false"]));
    assert!(out.contains("STATUS: deployed"), "{out}");
    let status = run_ok(helm().args(["status", &release, "-n", &installed.name]));
    assert!(status.contains("deployed"), "{status}");
    run_ok(helm().args(["uninstall", &release, "-n", &installed.name]));

    // What an Argo CD sync does: server-side apply the rendered chart, twice.
    let synced = TestNamespace::new(&client, "argocd").await;
    let rendered_file = TempFile::new(&format!("{}.yaml", synced.name));
    let rendered = rendered_file.0.as_path();
    let manifest =
        run_ok(helm().args(["template", &synced.name, "charts/girder", "-n", &synced.name, "--include-crds"]));
    std::fs::write(rendered, manifest).unwrap();
    let apply = || {
        run_ok(
            kubectl()
                .args(["apply", "--server-side", "--field-manager", "argocd-controller", "-n", &synced.name, "-f"])
                .arg(rendered),
        )
    };
    apply();
    apply();
    let diff = kubectl()
        .args(["diff", "--server-side", "--field-manager", "argocd-controller", "-n", &synced.name, "-f"])
        .arg(rendered)
        .output()
        .expect("kubectl diff");
    assert_eq!(
        diff.status.code(),
        Some(0),
        "kubectl diff --server-side is not empty:\n{}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    assert!(diff.stdout.is_empty());
    // Cluster-scoped objects of this render go with it.
    run_ok(kubectl().args([
        "delete",
        "--ignore-not-found",
        "--wait=false",
        "-l",
        &format!("app.kubernetes.io/instance={}", synced.name),
        "clusterrole,clusterrolebinding",
    ]));
}

/// With `watchNamespace` set, the chart grants the operator the namespaced
/// objects it uses (BMC credentials Secrets among them) in that namespace
/// only, plus reading the CRDs; and the operator works with just that: a
/// machine there is registered and inspected through its BMC.
#[tokio::test]
async fn a_chart_watching_one_namespace_grants_secrets_there_only_and_the_operator_works_with_that() {
    use support::sushy::{FakeSystem, PASSWORD, Sushy, SushyConfig, USER};
    let client = client().await;
    install_crds(&client).await;
    let installed = TestNamespace::new(&client, "helm-scoped").await;
    let watched = TestNamespace::new(&client, "watched").await;
    let other = TestNamespace::new(&client, "unwatched").await;
    let release = installed.name.clone();
    let value = format!("watchNamespace={}", watched.name);
    run_ok(helm().args(["install", &release, "charts/girder", "-n", &installed.name, "--wait=false", "--set", &value]));
    let account = run_ok(kubectl().args([
        "get",
        "serviceaccount",
        "-n",
        &installed.name,
        "-l",
        &format!("app.kubernetes.io/instance={release}"),
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]));
    let user = format!("system:serviceaccount:{}:{account}", installed.name);
    let here = ["-n", watched.name.as_str()];
    let elsewhere = ["-n", other.name.as_str()];
    for (allowed, request, scope) in [
        (true, ["get", "secrets"], &here[..]),
        (true, ["create", "secrets"], &here[..]),
        (false, ["get", "secrets"], &elsewhere[..]),
        (false, ["list", "secrets"], &["-A"][..]),
        (true, ["create", "serviceaccounts/token"], &here[..]),
        (false, ["create", "serviceaccounts/token"], &elsewhere[..]),
        (true, ["watch", "baremetalnodes.girder.dev"], &here[..]),
        (false, ["watch", "baremetalnodes.girder.dev"], &["-A"][..]),
        (true, ["list", "customresourcedefinitions.apiextensions.k8s.io"], &["-A"][..]),
    ] {
        assert_eq!(can_i_as(&user, &request, scope), allowed, "can the operator {request:?} {scope:?}?");
    }

    // The operator with nothing but that ServiceAccount's permissions.
    let kubeconfig = service_account_kubeconfig(&watched.name, &installed.name, &account);
    let operator = Operator::start(OperatorOptions {
        lease_namespace: Some(&installed.name),
        kubeconfig: Some(&kubeconfig.0),
        ..OperatorOptions::new(&watched.name, "scoped")
    });
    let sushy = Sushy::start(SushyConfig {
        systems: vec![FakeSystem::new("0000000d-0000-4000-8000-000000000001", "scoped", "Off", &["52:54:00:0d:00:01"])],
        ..Default::default()
    })
    .await;
    run_ok(
        kubectl()
            .args(["create", "secret", "generic", "bmc", "-n", &watched.name])
            .args([&format!("--from-literal=username={USER}"), &format!("--from-literal=password={PASSWORD}")]),
    );
    apply_yaml(
        &watched.name,
        &format!(
            "apiVersion: girder.dev/v1alpha1\nkind: BareMetalNode\nmetadata: {{name: scoped}}\nspec:\n  bmc: {{address: \"{}\", credentialsSecretRef: {{name: bmc}}}}\n  bootMACAddress: \"52:54:00:0d:00:01\"\n  online: false\n",
            sushy.address(Some("scoped"))
        ),
    );
    node_where(&client, &watched.name, "scoped", "Available and inspected, with a namespace's permissions", |n| {
        n.status.as_ref().and_then(|s| s.phase) == Some(girder::api::node::NodePhase::Available)
            && condition(n, "Inspected").is_some_and(|c| c.0 == girder::api::ConditionStatus::True)
    })
    .await;
    let logs = operator.logs();
    assert!(!logs.contains("forbidden"), "the operator hit a permission it lacks:\n{logs}");
    drop(operator);
    run_ok(helm().args(["uninstall", &release, "-n", &installed.name]));
}

/// `config/namespaced`: the operator's rules (exactly those of
/// config/rbac's ClusterRole) in a Role in the one namespace it watches, its
/// ClusterRole cut down to reading the CRDs, and the operator told to watch
/// that namespace.
#[test]
fn the_namespaced_overlay_grants_the_operators_rules_in_one_namespace_only() {
    let docs = |rendered: &str| -> Vec<serde_json::Value> {
        rendered.split("\n---\n").map(|doc| serde_yaml::from_str(doc).unwrap_or_default()).collect()
    };
    let find = |all: &[serde_json::Value], kind: &str, name: &str| {
        all.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let cluster_wide = docs(&run_ok(kubectl().args(["kustomize", "config/default"])));
    let scoped = docs(&run_ok(kubectl().args(["kustomize", "config/namespaced"])));
    let role = find(&scoped, "Role", "girder-operator");
    assert_eq!(role["metadata"]["namespace"], "girder-lab");
    assert_eq!(role["rules"], find(&cluster_wide, "ClusterRole", "girder-operator")["rules"]);
    let binding = find(&scoped, "RoleBinding", "girder-operator");
    assert_eq!(binding["metadata"]["namespace"], "girder-lab");
    assert_eq!(binding["subjects"][0]["namespace"], "girder-system");
    let rules = find(&scoped, "ClusterRole", "girder-operator")["rules"].clone();
    assert_eq!(rules.as_array().map(Vec::len), Some(1), "{rules}");
    assert_eq!(rules[0]["resources"][0], "customresourcedefinitions");
    assert!(!rules.to_string().contains("secrets"));
    let env =
        find(&scoped, "Deployment", "girder-operator")["spec"]["template"]["spec"]["containers"][0]["env"].clone();
    let watch = env.as_array().unwrap().iter().find(|e| e["name"] == "GIRDER_WATCH_NAMESPACE").cloned();
    assert_eq!(watch.map(|e| e["value"].clone()), Some(serde_json::json!("girder-lab")));
    // The API server takes all of it (checked, not kept: the ClusterRole is
    // the one config/default's test uses).
    apply_yaml("default", "apiVersion: v1\nkind: Namespace\nmetadata: {name: girder-lab}\n");
    run_ok(kubectl().args(["apply", "--dry-run=server", "-k", "config/namespaced"]));
}

/// The overlay `config/README.md` shows for the PXE sidecar renders as it says:
/// host network, the `pxe` container with the interface patched in, and the
/// assets and lease-journal volumes. The chart's `pxe.*` values do the same.
#[test]
fn the_pxe_sidecar_overlay_and_chart_values_render() {
    let readme = std::fs::read_to_string(repo_root().join("config/README.md")).unwrap();
    let start = readme.find("# my-site/kustomization.yaml\n").expect("the overlay example in config/README.md");
    let body = &readme[start..];
    let body = &body[..body.find("```").expect("end of the example")];
    // The example sits next to config/; here it sits in target/, two levels deeper.
    let dir = repo_root().join(format!("target/pxe-overlay-{}/my-site", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kustomization.yaml"), body.replace("../config/", "../../../config/")).unwrap();
    let rendered = run_ok(kubectl().args(["kustomize", dir.to_str().unwrap()]));
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    let check = |rendered: &str, interface: &str| {
        let deployment = rendered
            .split("\n---\n")
            .map(|doc| serde_yaml::from_str::<serde_json::Value>(doc).unwrap_or_default())
            .find(|doc| doc["kind"] == "Deployment")
            .expect("a Deployment");
        let spec = &deployment["spec"]["template"]["spec"];
        assert_eq!(spec["hostNetwork"], true);
        let containers = spec["containers"].as_array().unwrap();
        let pxe = containers.iter().find(|c| c["name"] == "pxe").expect("a pxe container");
        assert_eq!(pxe["args"][0], "pxe");
        let env = pxe["env"].as_array().unwrap();
        assert!(
            env.iter().any(|e| e["name"] == "GIRDER_PXE_INTERFACES" && e["value"] == interface),
            "GIRDER_PXE_INTERFACES={interface}: {env:?}"
        );
        let mounts: Vec<&str> =
            pxe["volumeMounts"].as_array().unwrap().iter().filter_map(|m| m["name"].as_str()).collect();
        assert_eq!(mounts, ["pxe-assets", "pxe-state"]);
        let volumes = spec["volumes"].as_array().unwrap();
        assert!(volumes.iter().any(|v| v["hostPath"]["path"] == "/var/lib/girder/pxe"), "{volumes:?}");
    };
    check(&rendered, "eno2");
    let chart = run_ok(helm().args([
        "template",
        "girder",
        "charts/girder",
        "--set",
        "pxe.enabled=true",
        "--set",
        "pxe.interfaces={eno2,eno3}",
    ]));
    check(&chart, "eno2,eno3");
}

/// The image by digest, as the README shows for kustomize: an overlay of
/// config/default whose `images` entry pins the operator's image.
#[test]
fn a_kustomize_overlay_pins_the_image_by_digest() {
    let digest = format!("sha256:{}", "cd".repeat(32));
    let dir = repo_root().join(format!("target/image-overlay-{}/site", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let overlay = format!(
        "resources: [../../../config/default]\nimages:\n  - {{name: girder, newName: registry.example.com/girder, digest: {digest}}}\n"
    );
    std::fs::write(dir.join("kustomization.yaml"), overlay).unwrap();
    let rendered = run_ok(kubectl().args(["kustomize", dir.to_str().unwrap()]));
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    let images: Vec<&str> = rendered.lines().filter_map(|l| l.trim().strip_prefix("image: ")).collect();
    assert!(!images.is_empty(), "{rendered}");
    for image in images {
        assert_eq!(image, format!("registry.example.com/girder@{digest}"));
    }
}

/// The chart's NetworkPolicy: the operator's HTTP port only from the peers
/// given; refused without them, and with the PXE sidecar (host network,
/// where policies do not apply). The API server takes what it renders.
#[tokio::test]
async fn the_charts_network_policy_admits_metrics_only_from_the_peers_given() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "netpol").await;
    let peer = "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring";
    let rendered = run_ok(helm().args(["template", "g", "charts/girder", "-n", &ns.name]).args([
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        peer,
        "--show-only",
        "templates/networkpolicy.yaml",
    ]));
    apply_yaml(&ns.name, &rendered);
    let policy: serde_json::Value = serde_json::from_str(&run_ok(kubectl().args([
        "get",
        "networkpolicy",
        "g-girder-operator",
        "-n",
        &ns.name,
        "-o",
        "json",
    ])))
    .unwrap();
    let spec = &policy["spec"];
    assert_eq!(spec["policyTypes"], serde_json::json!(["Ingress"]), "{policy}");
    assert_eq!(spec["podSelector"]["matchLabels"]["app.kubernetes.io/instance"], "g", "{policy}");
    let rule = &spec["ingress"][0];
    assert_eq!(rule["ports"], serde_json::json!([{"port": "http", "protocol": "TCP"}]), "{policy}");
    assert_eq!(rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "monitoring");
    assert!(spec["ingress"].as_array().unwrap().len() == 1, "{policy}");
    // The Deployment's port is named http, as the policy's rule says.
    let chart = run_ok(helm().args(["template", "g", "charts/girder", "--show-only", "templates/deployment.yaml"]));
    assert!(chart.contains("- name: http\n"), "{chart}");

    let refused = |extra: &[&str]| {
        let out = helm()
            .args(["template", "g", "charts/girder", "--set", "networkPolicy.enabled=true"])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} rendered");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(refused(&[]).contains("networkPolicy.metricsFrom: say who may reach"));
    assert!(refused(&["--set", peer, "--set", "pxe.enabled=true"]).contains("on the host network"));
}

/// The chart's Argo CD health checks reach Argo CD as the README says: the
/// generated patch merges into an argocd-cm, giving one entry per girder
/// kind whose script is that kind's health.lua. (What the scripts decide is
/// checked by e2e/argocd-health.sh in make test.)
#[tokio::test]
async fn the_argocd_health_patch_merges_into_argocd_cm() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "argocd").await;
    run_ok(kubectl().args([
        "create",
        "configmap",
        "argocd-cm",
        "-n",
        &ns.name,
        "--from-literal=url=https://argocd.example",
    ]));
    run_ok(
        kubectl()
            .args(["patch", "configmap", "argocd-cm", "-n", &ns.name, "--type", "merge"])
            .args(["--patch-file", "charts/girder/argocd/argocd-cm.yaml"]),
    );
    let cm: serde_json::Value =
        serde_json::from_str(&run_ok(kubectl().args(["get", "configmap", "argocd-cm", "-n", &ns.name, "-o", "json"])))
            .unwrap();
    let data = cm["data"].as_object().unwrap();
    assert_eq!(data["url"], "https://argocd.example", "the patch keeps what was there");
    for kind in ["BareMetalNode", "Network", "NodeRole", "Workload"] {
        let script =
            std::fs::read_to_string(repo_root().join(format!("charts/girder/argocd/girder.dev/{kind}/health.lua")))
                .unwrap();
        let key = format!("resource.customizations.health.girder.dev_{kind}");
        assert_eq!(data.get(&key).and_then(|v| v.as_str()), Some(script.as_str()), "{key}");
    }
    assert_eq!(data.len(), 5, "{data:?}");
}
