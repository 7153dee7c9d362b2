//! The ways slimforge is installed: the Helm chart (`charts/slimforge`),
//! rendered and linted by Helm 4's own engine (helm-python-sdk), and the
//! kustomize base (`deploy/base`), built by real kubectl. Every object is
//! validated against the Kubernetes OpenAPI schemas (kubernetes-validate),
//! the operator's pod against Pod Security `restricted`, and the RBAC
//! against the rules the code declares in `controller::rbac`.
//!
//! The tools come from PyPI into a venv that scripts/install-deps makes
//! (`<cache>/venv`, pinned in tests/requirements.txt).

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{Value, json};
use support::k8s::{NAMESPACE, k8s_tool, kustomize, render, repo, schema_errors};
use support::pss::{self, Level};

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn deployment(objects: &[Value]) -> &Value {
    let deployments = of_kind(objects, "Deployment");
    assert_eq!(deployments.len(), 1, "one Deployment");
    deployments[0]
}

fn env<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("env {name}"))
}

/// The operator's pod must pass `restricted`: it runs no user code and
/// ships in namespaces that enforce it.
fn assert_restricted(deployment: &Value) {
    let template = &deployment["spec"]["template"];
    let violations = pss::check(
        Level::Restricted,
        &template["spec"],
        template["metadata"].get("annotations"),
    );
    assert!(violations.is_empty(), "{violations:#?}");
}

/// One permission: (API group, resource, resource name or "", verb).
type Grant = (String, String, String, String);

fn grants(rules: &Value) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().unwrap() {
        let list = |key: &str| -> Vec<String> {
            rule[key]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        let names = match list("resourceNames") {
            names if names.is_empty() => vec![String::new()],
            names => names,
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for name in &names {
                    for verb in list("verbs") {
                        out.insert((group.clone(), resource.clone(), name.clone(), verb));
                    }
                }
            }
        }
    }
    out
}

fn code_grants(rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule>) -> BTreeSet<Grant> {
    grants(&serde_json::to_value(rules).unwrap())
}

/// What the operator's ServiceAccount may do, per namespace ("" for
/// cluster-wide), from the roles bound to it.
fn service_account_grants(
    objects: &[Value],
    account: &str,
) -> std::collections::BTreeMap<String, BTreeSet<Grant>> {
    let mut out = std::collections::BTreeMap::<String, BTreeSet<Grant>>::new();
    for binding in objects
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
    {
        let ours = binding["subjects"].as_array().unwrap().iter().any(|s| {
            s["kind"] == "ServiceAccount" && s["name"] == account && s["namespace"] == NAMESPACE
        });
        if !ours {
            continue;
        }
        let role_ref = &binding["roleRef"];
        let role = objects
            .iter()
            .find(|o| {
                o["kind"] == role_ref["kind"]
                    && o["metadata"]["name"] == role_ref["name"]
                    && (role_ref["kind"] == "ClusterRole"
                        || o["metadata"]["namespace"] == binding["metadata"]["namespace"])
            })
            .unwrap_or_else(|| panic!("the role {role_ref} bound by {binding}"));
        let scope = binding["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        out.entry(scope).or_default().extend(grants(&role["rules"]));
    }
    out
}

fn assert_no_wildcards(objects: &[Value]) {
    for role in objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
    {
        for (group, resource, _, verb) in grants(&role["rules"]) {
            assert!(
                !(group == "*" || resource.contains('*') || verb == "*"),
                "{} grants a wildcard: {group} {resource} {verb}",
                role["metadata"]["name"]
            );
        }
    }
}

/// The code's Lease rule as the manifests grant it: `create` cannot be
/// limited to a name, the other verbs are limited to the Lease's.
fn lease_grants(lease: &str) -> BTreeSet<Grant> {
    code_grants(slimforge::controller::rbac::leader_election_rules())
        .into_iter()
        .map(|(group, resource, _, verb)| {
            let name = if verb == "create" { "" } else { lease };
            (group, resource, name.to_string(), verb)
        })
        .collect()
}

fn build_grants() -> BTreeSet<Grant> {
    code_grants(slimforge::controller::rbac::build_rules())
}

#[test]
fn chart_with_default_values_renders_valid_objects() {
    let chart = render(&json!({})).expect("render");
    let kinds: BTreeSet<&str> = chart
        .objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Lease",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ])
    );
    assert_eq!(schema_errors(&chart.objects), []);
    // The CRD against the apiextensions.k8s.io/v1 schema.
    assert_eq!(chart.crds.len(), 1);
    assert_eq!(schema_errors(&chart.crds), []);

    let deployment = deployment(&chart.objects);
    assert_restricted(deployment);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    // The default tag is the chart's appVersion, which is the crate's.
    assert_eq!(
        container["image"],
        format!(
            "registry.example.com/slimforge/slimforge:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(
        container["args"],
        json!([
            "controller",
            "--metrics-address=0.0.0.0:8080",
            "--leader-election",
            "--lease-name=slimforge-controller"
        ])
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    // The build pods' helper is the operator image itself.
    assert_eq!(
        env(deployment, "SLIMFORGE_HELPER_IMAGE")["value"],
        container["image"]
    );
    assert_eq!(env(deployment, "WATCH_NAMESPACE")["value"], "");
    assert!(
        chart.notes.contains("kubectl -n demo get ib goapp -w"),
        "{}",
        chart.notes
    );
}

#[test]
fn chart_with_every_option_on_renders_valid_objects() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let values = json!({
        "image": {"repository": "registry.internal/platform/slimforge", "digest": digest},
        "imagePullSecrets": [{"name": "platform-pull"}],
        "helperImage": "registry.internal/platform/slimforge-helper:1",
        "replicaCount": 2,
        "leaderElection": {"enabled": true, "leaseName": "builds-leader"},
        "watchNamespaces": ["team-a", "team-b"],
        "logLevel": "slimforge=debug,info",
        "concurrency": 4,
        "logFormat": "text",
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "builds", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "priorityClassName": "platform",
        "podLabels": {"team": "platform"},
        "podAnnotations": {"example.com/owner": "platform"},
        "serviceAccount": {"create": true, "name": "builder-operator",
                           "annotations": {"example.com/role": "builder"}},
        "rbac": {"create": true, "aggregateToDefaultRoles": true},
        "metrics": {"port": 9090, "service": {"enabled": true, "type": "ClusterIP", "port": 9090,
                                              "annotations": {"example.com/scrape": "true"}},
                    "serviceMonitor": {"enabled": true, "interval": "15s", "scrapeTimeout": "5s",
                                       "labels": {"release": "prometheus"}}},
    });
    let chart = render(&values).expect("render");
    // kubernetes-validate knows the built-in kinds only: the ServiceMonitor
    // is prometheus-operator's, and the one object without a schema.
    let errors = schema_errors(&chart.objects);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].0.starts_with("ServiceMonitor/") && errors[0].1.starts_with("no schema"));
    let monitor = of_kind(&chart.objects, "ServiceMonitor")[0];
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "15s");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");

    let deployment = deployment(&chart.objects);
    assert_restricted(deployment);
    let pod = &deployment["spec"]["template"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        pod["spec"]["containers"][0]["image"],
        format!("registry.internal/platform/slimforge@{digest}")
    );
    assert_eq!(pod["metadata"]["labels"]["team"], "platform");
    assert_eq!(
        pod["metadata"]["annotations"]["example.com/owner"],
        "platform"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "builder-operator");
    assert_eq!(pod["spec"]["priorityClassName"], "platform");
    assert_eq!(pod["spec"]["imagePullSecrets"][0]["name"], "platform-pull");
    assert_eq!(pod["spec"]["tolerations"][0]["value"], "builds");
    assert_eq!(
        pod["spec"]["containers"][0]["ports"][0]["containerPort"],
        9090
    );
    assert_eq!(env(deployment, "WATCH_NAMESPACE")["value"], "team-a,team-b");
    assert_eq!(env(deployment, "SLIMFORGE_LOG_FORMAT")["value"], "text");
    assert_eq!(env(deployment, "SLIMFORGE_CONCURRENCY")["value"], "4");
    assert_eq!(
        env(deployment, "SLIMFORGE_LOG")["value"],
        "slimforge=debug,info"
    );
    assert_eq!(
        env(deployment, "SLIMFORGE_HELPER_IMAGE")["value"],
        "registry.internal/platform/slimforge-helper:1"
    );
    assert!(
        pod["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--lease-name=builds-leader"))
    );

    // Watching two namespaces: Roles there and nothing cluster-wide for builds.
    let access = service_account_grants(&chart.objects, "builder-operator");
    assert_eq!(
        access.keys().collect::<Vec<_>>(),
        [NAMESPACE, "team-a", "team-b"]
    );
    assert_eq!(access["team-a"], build_grants());
    assert_eq!(access["team-b"], build_grants());
    assert_eq!(access[NAMESPACE], lease_grants("builds-leader"));
    assert!(chart.notes.contains("team-a, team-b"), "{}", chart.notes);
}

#[test]
fn chart_lints_clean_with_defaults_and_every_option() {
    let chart = repo("charts/slimforge");
    for values in [
        json!({}),
        json!({"watchNamespaces": ["team-a"], "replicaCount": 3,
               "metrics": {"serviceMonitor": {"enabled": true}}}),
    ] {
        let report = k8s_tool(
            &["lint", chart.to_str().unwrap(), &values.to_string()],
            None,
        );
        assert_eq!(report["errors"], json!([]), "{report}");
        let serious: Vec<&Value> = report["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_i64().unwrap() >= 2)
            .collect();
        assert!(serious.is_empty(), "{values}: {serious:?}");
    }
}

#[test]
fn chart_refuses_values_that_would_misbehave() {
    let refused = |values: Value, needle: &str| {
        let error = render(&values)
            .err()
            .unwrap_or_else(|| panic!("{values} rendered"));
        assert!(error.contains(needle), "{values}: {error}");
    };
    // A misspelt key is an error, not a silent default.
    refused(json!({"replicas": 2}), "replicas");
    refused(json!({"logFormat": "xml"}), "logFormat");
    refused(json!({"watchNamespaces": ["Team_A"]}), "watchNamespaces");
    refused(json!({"metrics": {"port": 80}}), "port");
    // Two controllers without a Lease would build everything twice.
    refused(
        json!({"replicaCount": 2, "leaderElection": {"enabled": false}}),
        "leaderElection",
    );
    refused(
        json!({"metrics": {"service": {"enabled": false}, "serviceMonitor": {"enabled": true}}}),
        "metrics.service.enabled",
    );
}

#[test]
fn rbac_grants_exactly_what_the_controller_uses_and_no_wildcards() {
    let chart = render(&json!({})).expect("render");
    let kustomized = kustomize();
    for (source, objects, account) in [
        ("chart", &chart.objects, "sf-slimforge"),
        ("deploy/base", &kustomized, "slimforge"),
    ] {
        assert_no_wildcards(objects);
        let access = service_account_grants(objects, account);
        assert_eq!(
            access.keys().collect::<Vec<_>>(),
            ["", NAMESPACE],
            "{source}: cluster-wide builds, the Lease in its own namespace"
        );
        assert_eq!(access[""], build_grants(), "{source}: build rules");
        assert_eq!(
            access[NAMESPACE],
            lease_grants("slimforge-controller"),
            "{source}: leader election rules"
        );
    }
    // Without leader election there is no Lease to touch.
    let single = render(&json!({"leaderElection": {"enabled": false}})).expect("render");
    let access = service_account_grants(&single.objects, "sf-slimforge");
    assert_eq!(access.keys().collect::<Vec<_>>(), [""]);
    // Users' aggregated roles touch ImageBuilds only.
    for role in of_kind(&chart.objects, "ClusterRole")
        .into_iter()
        .filter(|r| {
            r["metadata"]["labels"]
                .get("rbac.authorization.k8s.io/aggregate-to-view")
                .is_some()
                || r["metadata"]["labels"]
                    .get("rbac.authorization.k8s.io/aggregate-to-edit")
                    .is_some()
        })
    {
        for (group, resource, _, _) in grants(&role["rules"]) {
            assert_eq!(group, "slimforge.dev");
            assert!(resource.starts_with("imagebuilds"), "{resource}");
        }
    }
}

#[test]
fn kustomize_base_builds_valid_objects_like_the_chart() {
    let objects = kustomize();
    assert_eq!(schema_errors(&objects), []);
    let namespace = of_kind(&objects, "Namespace");
    assert_eq!(namespace.len(), 1);
    assert_eq!(namespace[0]["metadata"]["name"], NAMESPACE);
    assert_eq!(
        namespace[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    assert_eq!(of_kind(&objects, "CustomResourceDefinition").len(), 1);
    let kustomized = deployment(&objects);
    assert_eq!(kustomized["metadata"]["namespace"], NAMESPACE);
    assert_restricted(kustomized);

    // The same controller settings as the chart's defaults.
    let chart = render(&json!({})).expect("render");
    let from_chart = &deployment(&chart.objects)["spec"]["template"]["spec"]["containers"][0];
    let ours = &kustomized["spec"]["template"]["spec"]["containers"][0];
    for field in [
        "args",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "resources",
        "securityContext",
    ] {
        assert_eq!(ours[field], from_chart[field], "{field}");
    }
    assert_eq!(
        kustomized["spec"]["template"]["spec"]["securityContext"],
        deployment(&chart.objects)["spec"]["template"]["spec"]["securityContext"]
    );
    let names = |c: &Value| -> Vec<String> {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(ours), names(from_chart));
    // kustomize's image setting carries over to the build pods' helper.
    assert_eq!(
        env(kustomized, "SLIMFORGE_HELPER_IMAGE")["value"],
        ours["image"]
    );
    assert_eq!(ours["image"], from_chart["image"]);
}

/// The objects of every manifest under deploy/examples/.
fn examples() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = ["deploy/examples", "deploy/examples/local"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(repo(dir)).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let object: Value = serde::Deserialize::deserialize(document).unwrap();
            if !object.is_null() {
                out.push((file.display().to_string(), object));
            }
        }
    }
    out
}

#[test]
fn every_example_is_a_valid_manifest() {
    let crd = repo("crds/imagebuilds.slimforge.dev.yaml");
    let crd = crd.to_str().unwrap();
    let (builds, others): (Vec<_>, Vec<_>) = examples()
        .into_iter()
        .partition(|(_, o)| o["kind"] == "ImageBuild");
    assert!(builds.len() >= 4, "{builds:?}");
    let objects: Vec<Value> = builds.iter().map(|(_, o)| o.clone()).collect();
    // As `kubectl apply` (strict field validation) would check them against the CRD.
    for (result, (file, _)) in k8s_tool(&["validate-crd", crd], Some(&json!(objects)))
        .as_array()
        .unwrap()
        .iter()
        .zip(&builds)
    {
        assert_eq!(result["errors"], json!([]), "{file}");
    }
    for (file, object) in &builds {
        // The CRD's CEL rules, and the controller's own checks.
        slimforge::api::ImageBuildSpec::validate_cel(&object["spec"], None)
            .unwrap_or_else(|e| panic!("{file}: {e:?}"));
        let ib: slimforge::api::ImageBuild = serde_json::from_value(object.clone()).unwrap();
        slimforge::controller::reconcile::validate_spec(&ib, &Default::default())
            .unwrap_or_else(|e| panic!("{file}: {e:?}"));
    }
    let others: Vec<Value> = others.into_iter().map(|(_, o)| o).collect();
    assert!(!others.is_empty(), "the ConfigMap context's ConfigMap");
    assert_eq!(schema_errors(&others), []);

    // The check is not vacuous: a misspelt field is caught.
    let mut misspelt = objects[0].clone();
    let output = misspelt["spec"]
        .as_object_mut()
        .unwrap()
        .remove("output")
        .unwrap();
    misspelt["spec"]["outptu"] = output;
    let result = k8s_tool(&["validate-crd", crd], Some(&json!([misspelt])));
    let errors = result[0]["errors"].to_string();
    assert!(
        errors.contains("outptu") && errors.contains("'output' is a required"),
        "{errors}"
    );
}
