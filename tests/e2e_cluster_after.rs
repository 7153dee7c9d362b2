//! What the REAL cluster can tell only after every other cluster test
//! (`scripts/test` runs this file last; alone, it checks what has happened
//! so far):
//! - the operator's RBAC as kube-apiserver judged it: every request its
//!   ServiceAccount made during the run, read from the audit log; RBAC
//!   refused none, and every verb `slimforge::controller::rbac` grants was
//!   used, but for its explained exceptions;
//! - `helm uninstall` leaves nothing of ours behind.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use slimforge::controller::rbac;
use support::cluster::Cluster;

const SERVICE_ACCOUNT: &str = "system:serviceaccount:slimforge-system:slimforge";

/// One test, in this order: while `helm uninstall` runs, the operator's
/// pods outlive their RoleBinding for a moment and are refused, so the
/// audit log must be read before it.
#[test]
fn after_every_build() {
    let cluster = Cluster::get();
    cluster.operator();
    the_operator_was_refused_nothing_and_used_every_verb_it_is_granted(cluster);
    helm_uninstall_leaves_nothing_of_ours_behind(cluster);
}

fn the_operator_was_refused_nothing_and_used_every_verb_it_is_granted(cluster: &Cluster) {
    let log_path = cluster.state_dir().join("audit.log");
    let log = std::fs::read_to_string(&log_path).expect("read the audit log");

    let mut used = BTreeSet::new();
    let mut refused = Vec::new();
    for line in log.lines() {
        let event: Value = serde_json::from_str(line).expect("an audit event");
        if event["user"]["username"] != SERVICE_ACCOUNT || event["stage"] != "ResponseComplete" {
            continue;
        }
        let object = &event["objectRef"];
        if object.is_null() {
            continue; // discovery and other non-resource requests
        }
        let mut resource = object["resource"].as_str().unwrap_or_default().to_string();
        if let Some(sub) = object["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        let group = object["apiGroup"].as_str().unwrap_or_default().to_string();
        let verb = event["verb"].as_str().unwrap_or_default().to_string();
        // RBAC's verdict; a 403 from admission (Pod Security in the
        // `restricted` test, a namespace being deleted) is not a refusal of
        // the operator's permissions.
        if event["annotations"]["authorization.k8s.io/decision"] != "allow" {
            refused.push(format!(
                "{verb} {} ({group}, {resource}): {}",
                event["requestURI"], event["annotations"]
            ));
        }
        used.insert((group, resource, verb));
    }
    assert!(
        !used.is_empty(),
        "no request by {SERVICE_ACCOUNT} in {}",
        log_path.display()
    );
    assert!(refused.is_empty(), "refused:\n{}", refused.join("\n"));

    let granted: BTreeSet<(String, String, String)> = rbac::granted()
        .map(|(group, resource, verb)| (group.into(), resource.into(), verb.into()))
        .collect();
    let exceptions = BTreeSet::from([
        // Never sent: the API server checks it on the owner when a pod or
        // claim the operator creates has blockOwnerDeletion.
        (
            "slimforge.dev".to_string(),
            "imagebuilds/finalizers".to_string(),
            "update".to_string(),
        ),
        // kube's Recorder patches an event only when the same one repeats.
        (
            "events.k8s.io".to_string(),
            "events".to_string(),
            "patch".to_string(),
        ),
        // The chart makes the Lease; the operator creates it only when it
        // has gone missing.
        (
            "coordination.k8s.io".to_string(),
            "leases".to_string(),
            "create".to_string(),
        ),
    ]);
    let unused: BTreeSet<_> = granted.difference(&used).cloned().collect();
    let unexplained: Vec<_> = unused.difference(&exceptions).collect();
    assert!(
        unexplained.is_empty(),
        "granted but never used: {unexplained:?}\nused: {used:#?}"
    );
    let ungranted: Vec<_> = used.difference(&granted).collect();
    assert!(
        ungranted.is_empty(),
        "used without a rule of ours: {ungranted:?}"
    );
}

fn helm_uninstall_leaves_nothing_of_ours_behind(cluster: &Cluster) {
    let out = std::process::Command::new(cluster.bin.join("helm"))
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args([
            "uninstall",
            "slimforge",
            "--namespace",
            "slimforge-system",
            "--wait",
        ])
        .output()
        .expect("run helm");
    cluster.forget_operator();
    assert!(out.status.success(), "helm uninstall: {out:?}");

    let left = |args: &[&str]| -> Vec<String> {
        let list: Value = serde_json::from_str(&cluster.kubectl_ok(args)).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| format!("{} {}", o["kind"], o["metadata"]["name"]))
            .collect()
    };
    let namespaced = "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,\
                      leases,configmaps,secrets,events.events.k8s.io";
    let ours = || -> Vec<String> {
        left(&["-n", "slimforge-system", "get", namespaced, "-o", "json"])
            .into_iter()
            // What Kubernetes itself puts in every namespace.
            .filter(|o| {
                o != "\"ServiceAccount\" \"default\"" && o != "\"ConfigMap\" \"kube-root-ca.crt\""
            })
            // Events expire on their own (an hour), as everyone's do.
            .filter(|o| !o.starts_with("\"Event\""))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !ours().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let remaining = ours();
    assert!(
        remaining.is_empty(),
        "left behind in slimforge-system: {remaining:?}"
    );
    let cluster_wide: Vec<String> =
        left(&["get", "clusterroles,clusterrolebindings", "-o", "json"])
            .into_iter()
            .filter(|o| o.contains("slimforge"))
            .collect();
    assert!(cluster_wide.is_empty(), "left behind: {cluster_wide:?}");
    // The CRD stays, as Helm does with every chart's crds/ (the README says
    // how to remove it).
    cluster.kubectl_ok(&["get", "crd", "imagebuilds.slimforge.dev"]);
}
