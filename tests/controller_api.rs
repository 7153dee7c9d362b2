//! `slimforge controller`, the real binary, against a RECORDING FAKE
//! Kubernetes API server written in this file (axum on 127.0.0.1). The API
//! server is the only test double this project permits: none can run on
//! this machine. The fake keeps a small world of objects in memory and
//! answers as the API server would (reads, lists filtered by label, creates,
//! patches merged in, deletes; watches are held open and stay silent), and
//! it records every request as the RBAC access it needs: (apiGroup,
//! resource[/subresource], verb). The record is then held against
//! `slimforge::controller::rbac`: every request must be granted (one that is
//! not would be Forbidden in a real cluster), and every granted verb must
//! have been used, but for a short list of explained exceptions.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use slimforge::controller::rbac;

/// How long anything may take to show up.
const PATIENCE: Duration = Duration::from_secs(30);

/// What a request needs in RBAC terms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    group: String,
    /// `resource` or `resource/subresource`.
    resource: String,
    verb: String,
}

impl Access {
    fn new(group: &str, resource: &str, verb: &str) -> Self {
        Access {
            group: group.into(),
            resource: resource.into(),
            verb: verb.into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    path: String,
    query: String,
    access: Access,
}

/// (group, resource, namespace or "", name).
type Key = (String, String, String, String);

#[derive(Default)]
struct World {
    objects: BTreeMap<Key, Value>,
    requests: Vec<Recorded>,
    version: u64,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<World>>);

impl Fake {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn object(&self, group: &str, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (group.into(), resource.into(), namespace.into(), name.into());
        self.world().objects.get(&key).cloned()
    }

    /// The objects of a kind in a namespace whose labels include `label=value`.
    fn labelled(&self, resource: &str, namespace: &str, label: &str, value: &str) -> Vec<Value> {
        self.world()
            .objects
            .iter()
            .filter(|((_, r, ns, _), o)| {
                r == resource && ns == namespace && o["metadata"]["labels"][label] == value
            })
            .map(|(_, o)| o.clone())
            .collect()
    }

    fn requests(&self) -> Vec<Recorded> {
        self.world().requests.clone()
    }

    fn saw(&self, method: &str, path: &str) -> bool {
        self.world()
            .requests
            .iter()
            .any(|r| r.method == method && r.path == path)
    }
}

/// Where a request points.
struct Target {
    group: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn target(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => {
            (Some(namespace.to_string()), rest)
        }
        _ => (None, rest),
    };
    let (resource, name, subresource) = match rest {
        [resource] => (resource, None, None),
        [resource, name] => (resource, Some(name.to_string()), None),
        [resource, name, sub] => (resource, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(Target {
        group: group.into(),
        namespace,
        resource: resource.to_string(),
        name,
        subresource,
    })
}

fn verb(method: &Method, named: bool, query: &BTreeMap<String, String>) -> &'static str {
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                if let Some(byte) = text
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Equality-based label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`.
fn selected(object: &Value, selector: &str) -> bool {
    let labels = &object["metadata"]["labels"];
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels[k].as_str() != Some(v)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                labels[k].as_str() == Some(v)
            } else if let Some(k) = term.strip_prefix('!') {
                labels[k].is_null()
            } else {
                !labels[term].is_null()
            }
        })
}

fn kind_of(group: &str, resource: &str) -> (&'static str, &'static str) {
    match (group, resource) {
        ("", "pods") => ("v1", "Pod"),
        ("", "persistentvolumeclaims") => ("v1", "PersistentVolumeClaim"),
        ("", "secrets") => ("v1", "Secret"),
        ("", "configmaps") => ("v1", "ConfigMap"),
        ("slimforge.dev", "imagebuilds") => ("slimforge.dev/v1alpha1", "ImageBuild"),
        ("events.k8s.io", "events") => ("events.k8s.io/v1", "Event"),
        ("coordination.k8s.io", "leases") => ("coordination.k8s.io/v1", "Lease"),
        _ => ("v1", "Unknown"),
    }
}

fn failure(code: StatusCode, reason: &str, message: String) -> Response {
    json_reply(
        code,
        json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
               "reason": reason, "message": message, "code": code.as_u16()}),
    )
}

fn json_reply(code: StatusCode, body: Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A JSON merge: objects key by key, `null` removes, the rest replaces.
/// Enough for the merge, strategic-merge and apply patches the controller sends.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap()
        .to_string()
}

async fn api_server(State(fake): State<Fake>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query_text = request.uri().query().unwrap_or_default().to_string();
    let query = parse_query(&query_text);
    let body = axum::body::to_bytes(request.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);

    let Some(target) = target(&path) else {
        // Discovery or another non-resource URL: no rule grants those.
        fake.world().requests.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query: query_text,
            access: Access::new("(non-resource)", &path, &method.as_str().to_lowercase()),
        });
        return failure(StatusCode::NOT_FOUND, "NotFound", path);
    };
    let verb = verb(&method, target.name.is_some(), &query);
    let resource = match &target.subresource {
        Some(sub) => format!("{}/{sub}", target.resource),
        None => target.resource.clone(),
    };
    let mut world = fake.world();
    world.requests.push(Recorded {
        method: method.clone(),
        path: path.clone(),
        query: query_text,
        access: Access::new(&target.group, &resource, verb),
    });
    let (api_version, kind) = kind_of(&target.group, &target.resource);
    let namespace = target.namespace.clone().unwrap_or_default();
    let key = |name: &str| -> Key {
        (
            target.group.clone(),
            target.resource.clone(),
            namespace.clone(),
            name.to_string(),
        )
    };
    let not_found = |name: &str| {
        failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", target.resource),
        )
    };
    match (verb, target.name.as_deref()) {
        ("watch", _) => {
            drop(world);
            // Held open, silent: the controller's reflectors wait for news.
            let silence = futures::stream::pending::<Result<Bytes, Infallible>>();
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(silence))
                .expect("a watch response")
        }
        ("list", _) => {
            let selector = query.get("labelSelector").cloned().unwrap_or_default();
            let items: Vec<Value> = world
                .objects
                .iter()
                .filter(|((g, r, ns, _), o)| {
                    *g == target.group
                        && *r == target.resource
                        && (target.namespace.is_none() || *ns == namespace)
                        && selected(o, &selector)
                })
                .map(|(_, o)| o.clone())
                .collect();
            json_reply(
                StatusCode::OK,
                json!({"apiVersion": api_version, "kind": format!("{kind}List"),
                       "metadata": {"resourceVersion": world.version.to_string()},
                       "items": items}),
            )
        }
        ("get", Some(name)) => match world.objects.get(&key(name)) {
            Some(object) => json_reply(StatusCode::OK, object.clone()),
            None => not_found(name),
        },
        ("create", None) => {
            let mut object = body;
            world.version += 1;
            let version = world.version;
            let metadata = &mut object["metadata"];
            let name = match metadata["name"].as_str() {
                Some(name) => name.to_string(),
                None => format!(
                    "{}{version:05}",
                    metadata["generateName"].as_str().unwrap_or("generated-")
                ),
            };
            if world.objects.contains_key(&key(&name)) {
                return failure(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", target.resource),
                );
            }
            merge(
                metadata,
                &json!({"name": name, "uid": format!("uid-{version}"),
                        "resourceVersion": version.to_string(), "creationTimestamp": now()}),
            );
            if target.namespace.is_some() {
                metadata["namespace"] = json!(namespace);
            }
            if target.resource == "pods" && object["status"].is_null() {
                object["status"] = json!({"phase": "Pending"});
            }
            world.objects.insert(key(&name), object.clone());
            json_reply(StatusCode::CREATED, object)
        }
        ("patch", Some(name)) => {
            world.version += 1;
            let version = world.version.to_string();
            let Some(object) = world.objects.get_mut(&key(name)) else {
                return not_found(name);
            };
            match target.subresource.as_deref() {
                Some("status") => merge(&mut object["status"], &body["status"]),
                _ => {
                    let mut patch = body;
                    if let Some(patch) = patch.as_object_mut() {
                        patch.remove("metadata");
                    }
                    merge(object, &patch);
                }
            }
            object["metadata"]["resourceVersion"] = json!(version);
            json_reply(StatusCode::OK, object.clone())
        }
        ("update", Some(name)) => {
            if !world.objects.contains_key(&key(name)) {
                return not_found(name);
            }
            world.version += 1;
            let mut object = body;
            object["metadata"]["resourceVersion"] = json!(world.version.to_string());
            world.objects.insert(key(name), object.clone());
            json_reply(StatusCode::OK, object)
        }
        ("delete", Some(name)) => match world.objects.remove(&key(name)) {
            Some(mut object) => {
                object["metadata"]["deletionTimestamp"] = json!(now());
                json_reply(StatusCode::OK, object)
            }
            None => not_found(name),
        },
        _ => failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} {path}"),
        ),
    }
}

async fn start_api_server(fake: Fake) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the fake API server");
    let address = listener.local_addr().expect("its address");
    let app = axum::Router::new().fallback(api_server).with_state(fake);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    address
}

// ---- the world ---------------------------------------------------------

/// The seed example (deploy/examples/goapp.yaml) as the API server holds it.
fn seed_build(namespace: &str, name: &str) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples/goapp.yaml");
    let text = std::fs::read_to_string(path).expect("the seed example");
    let mut build: Value = serde_yaml::from_str(&text).expect("the seed example's YAML");
    merge(
        &mut build["metadata"],
        &json!({"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"),
                "generation": 1, "resourceVersion": "1",
                "creationTimestamp": "2026-01-01T00:00:00Z"}),
    );
    build
}

fn push_secret(namespace: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
           "metadata": {"name": "regcred", "namespace": namespace, "uid": format!("uid-{namespace}-regcred"), "resourceVersion": "1"},
           "data": {".dockerconfigjson": "eyJhdXRocyI6e319"}})
}

fn ours(build: &str) -> Value {
    json!({"app.kubernetes.io/managed-by": "slimforge", "slimforge.dev/build": build,
           "slimforge.dev/generation": "1"})
}

fn owner(namespace: &str, build: &str) -> Value {
    json!([{"apiVersion": "slimforge.dev/v1alpha1", "kind": "ImageBuild", "name": build,
            "uid": format!("uid-{namespace}-{build}"), "controller": true, "blockOwnerDeletion": true}])
}

/// A namespace holding: the seed build, new; its push secret; a build that
/// finished long ago, its TTL expired, with a pod and a workspace left; a
/// build whose context and Dockerfile are in a ConfigMap.
fn namespace_objects(namespace: &str) -> Vec<Value> {
    let mut old = seed_build(namespace, "goapp-old");
    old["spec"]["ttlSecondsAfterFinished"] = json!(60);
    old["status"] = json!({
        "phase": "Succeeded", "observedGeneration": 1,
        "startTime": "2020-01-01T00:00:00Z", "completionTime": "2020-01-01T00:05:00Z",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "",
                        "observedGeneration": 1, "lastTransitionTime": "2020-01-01T00:05:00Z"}],
    });
    let mut old_pod_labels = ours("goapp-old");
    merge(
        &mut old_pod_labels,
        &json!({"slimforge.dev/unit": "1", "slimforge.dev/role": "chain"}),
    );
    let old_pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "goapp-old-g1-1", "namespace": namespace, "uid": format!("uid-{namespace}-old-pod"),
                     "resourceVersion": "1", "labels": old_pod_labels,
                     "ownerReferences": owner(namespace, "goapp-old")},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "chain", "image": "ubuntu"}]},
        "status": {"phase": "Succeeded"},
    });
    let old_claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "goapp-old-g1-workspace", "namespace": namespace, "uid": format!("uid-{namespace}-old-pvc"),
                     "resourceVersion": "1", "labels": ours("goapp-old"),
                     "ownerReferences": owner(namespace, "goapp-old")},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}},
    });
    let seed = seed_build(namespace, "goapp");
    let mut from_config_map = seed_build(namespace, "goapp-cm");
    from_config_map["spec"] = json!({
        "context": {"configMap": {"name": "goapp-src"}},
        "dockerfilePath": "Dockerfile",
        "output": {"image": "registry.example.com/team/goapp-cm:v1"},
    });
    let config_map = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "goapp-src", "namespace": namespace, "uid": format!("uid-{namespace}-src"), "resourceVersion": "1"},
        "data": {"app.go": seed["spec"]["context"]["inline"]["app.go"], "Dockerfile": seed["spec"]["dockerfile"]},
    });
    vec![
        seed,
        push_secret(namespace),
        old,
        old_pod,
        old_claim,
        from_config_map,
        config_map,
    ]
}

fn fake_with(namespaces: &[&str]) -> Fake {
    let fake = Fake::default();
    {
        let mut world = fake.world();
        for namespace in namespaces {
            for object in namespace_objects(namespace) {
                let (group, resource) = match object["kind"].as_str() {
                    Some("ImageBuild") => ("slimforge.dev", "imagebuilds"),
                    Some("Pod") => ("", "pods"),
                    Some("PersistentVolumeClaim") => ("", "persistentvolumeclaims"),
                    Some("Secret") => ("", "secrets"),
                    Some("ConfigMap") => ("", "configmaps"),
                    other => panic!("no resource for {other:?}"),
                };
                let name = object["metadata"]["name"].as_str().unwrap().to_string();
                world.objects.insert(
                    (group.into(), resource.into(), namespace.to_string(), name),
                    object,
                );
            }
        }
        world.version = 10;
    }
    fake
}

// ---- the controller process -------------------------------------------

/// The running `slimforge controller`; killed however the test ends.
struct ControllerProcess {
    child: Child,
    metrics: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ControllerProcess {
    fn start(api: SocketAddr, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters: [{{name: fake, cluster: {{server: 'http://{api}'}}}}]\n\
                 users: [{{name: fake, user: {{}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n\
                 current-context: fake\n"
            ),
        )
        .expect("write the kubeconfig");
        let metrics = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("its address")
        };
        let log = std::fs::File::create(dir.path().join("stderr")).expect("the log file");
        let child = Command::new(env!("CARGO_BIN_EXE_slimforge"))
            .arg("controller")
            .args(["--helper-image", "example.invalid/slimforge:test"])
            .args(["--metrics-address", &metrics.to_string()])
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("SLIMFORGE_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env_remove("WATCH_NAMESPACE")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("SLIMFORGE_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start slimforge controller");
        ControllerProcess {
            child,
            metrics,
            dir,
        }
    }

    /// SIGTERM, as the kubelet sends it, then a bounded wait for the exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {PATIENCE:?} after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Fails the test, with the log, when the controller has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the controller exited ({status}):\n{}", self.log());
        }
    }

    /// Waits (bounded) until `check` holds; `Err` says what it saw last.
    async fn eventually(&mut self, what: &str, mut check: impl AsyncFnMut() -> Result<(), String>) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.assert_running();
            let seen = match check().await {
                Ok(()) => return,
                Err(seen) => seen,
            };
            assert!(
                Instant::now() < deadline,
                "not within {PATIENCE:?}: {what}\nlast seen: {seen}\ncontroller log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The holder of the `slimforge-controller` Lease in slimforge-system.
fn lease_holder(fake: &Fake) -> Option<String> {
    fake.object(
        "coordination.k8s.io",
        "leases",
        "slimforge-system",
        "slimforge-controller",
    )?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

/// GET over plain HTTP/1.1: (status, content type, body).
async fn http_get(address: SocketAddr, path: &str) -> Option<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    Some((status, content_type, body.to_string()))
}

// ---- RBAC --------------------------------------------------------------

/// What the rules grant, verb by verb.
fn granted() -> BTreeSet<Access> {
    rbac::BUILD_RULES
        .iter()
        .chain(rbac::LEADER_ELECTION_RULES)
        .flat_map(|rule| {
            rule.verbs
                .iter()
                .map(|verb| Access::new(rule.api_group, rule.resource, verb))
        })
        .collect()
}

/// Every request was allowed by the rules; none of them is a wildcard.
fn assert_every_request_is_granted(requests: &[Recorded]) {
    for rule in rbac::rules() {
        let fields = rule
            .api_groups
            .iter()
            .flatten()
            .chain(rule.resources.iter().flatten())
            .chain(&rule.verbs);
        for field in fields {
            assert!(!field.contains('*'), "a wildcard in {rule:?}");
        }
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
    }
    let forbidden: Vec<String> = requests
        .iter()
        .filter(|r| !rbac::grants(&r.access.group, &r.access.resource, &r.access.verb))
        .map(|r| format!("{} {}?{} needs {:?}", r.method, r.path, r.query, r.access))
        .collect();
    assert!(
        forbidden.is_empty(),
        "requests a real cluster would forbid:\n{}",
        forbidden.join("\n")
    );
}

fn observed(requests: &[Recorded]) -> BTreeSet<Access> {
    requests.iter().map(|r| r.access.clone()).collect()
}

fn pods_of(fake: &Fake, namespace: &str, build: &str) -> usize {
    fake.labelled("pods", namespace, "slimforge.dev/build", build)
        .len()
}

fn claims_of(fake: &Fake, namespace: &str, build: &str) -> usize {
    fake.labelled(
        "persistentvolumeclaims",
        namespace,
        "slimforge.dev/build",
        build,
    )
    .len()
}

/// The namespace's new builds started (workspace, first pod, status
/// patched), and the expired build's leftovers are gone.
fn namespace_done(fake: &Fake, namespace: &str) -> Result<(), String> {
    let phase = |name: &str| {
        fake.object("slimforge.dev", "imagebuilds", namespace, name)
            .map(|b| b["status"]["phase"].clone())
    };
    let done = pods_of(fake, namespace, "goapp") >= 1
        && claims_of(fake, namespace, "goapp") == 1
        && pods_of(fake, namespace, "goapp-cm") >= 1
        && claims_of(fake, namespace, "goapp-cm") == 1
        && phase("goapp") == Some(json!("Running"))
        && phase("goapp-cm") == Some(json!("Running"))
        && pods_of(fake, namespace, "goapp-old") == 0
        && claims_of(fake, namespace, "goapp-old") == 0
        && fake.saw(
            "POST",
            &format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events"),
        );
    if done {
        return Ok(());
    }
    let world = fake.world();
    let names: Vec<String> = world
        .objects
        .keys()
        .filter(|(_, _, ns, _)| ns == namespace)
        .map(|(_, resource, _, name)| format!("{resource}/{name}"))
        .collect();
    Err(format!("objects in {namespace}: {names:?}"))
}

/// The status code of GET `path`, 200 or an error naming it.
async fn answers_ok(address: SocketAddr, path: &str) -> Result<(), String> {
    match http_get(address, path).await {
        Some((200, _, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

// ---- the tests ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_leads_builds_and_asks_only_for_what_rbac_grants() {
    let fake = fake_with(&["demo", "elsewhere"]);
    let api = start_api_server(fake.clone()).await;
    let mut controller = ControllerProcess::start(
        api,
        &[
            "--leader-election",
            "--lease-namespace",
            "slimforge-system",
            "--namespace",
            "demo",
            "--log-format",
            "json",
        ],
    );
    let metrics = controller.metrics;

    controller
        .eventually("/healthz answers 200", async || {
            answers_ok(metrics, "/healthz").await
        })
        .await;
    controller
        .eventually("/readyz answers 200", async || {
            answers_ok(metrics, "/readyz").await
        })
        .await;
    let own = format!("slimforge-{}", controller.child.id());
    controller
        .eventually("the Lease in slimforge-system is held", async || {
            lease_holder(&fake)
                .filter(|h| *h == own)
                .map(|_| ())
                .ok_or(format!("{:?}", lease_holder(&fake)))
        })
        .await;
    controller
        .eventually(
            "the builds in demo start, the expired one is cleaned up",
            async || namespace_done(&fake, "demo"),
        )
        .await;
    // The build counters are there from the start, at 0: no build has
    // finished under this process.
    controller
        .eventually("/metrics serves OpenMetrics text", async || {
            let answer = http_get(metrics, "/metrics").await;
            match &answer {
                Some((200, content_type, body))
                    if content_type.starts_with("application/openmetrics-text")
                        && body.contains("\nslimforge_builds_in_flight 2\n")
                        && body.contains("\nslimforge_builds_total{result=\"failed\"} 0\n")
                        && body.contains("# TYPE slimforge_builds_in_flight gauge")
                        && body.contains("# TYPE slimforge_build_duration_seconds histogram")
                        && body.ends_with("# EOF\n") =>
                {
                    Ok(())
                }
                _ => Err(format!("{answer:?}")),
            }
        })
        .await;
    let log = controller.log();
    drop(controller);

    let requests = fake.requests();
    eprintln!("observed: {:#?}", observed(&requests));
    assert_every_request_is_granted(&requests);
    // Nothing outside the watched namespace, and nothing cluster-wide but
    // what leader election needs in its own namespace.
    for request in &requests {
        let allowed = ["/namespaces/demo/", "/namespaces/slimforge-system/leases"];
        assert!(
            allowed.iter().any(|a| request.path.contains(a)),
            "{} {} is outside the namespaces given",
            request.method,
            request.path
        );
    }
    assert_eq!(pods_of(&fake, "elsewhere", "goapp"), 0);
    let status_patch = requests
        .iter()
        .find(|r| r.path == "/apis/slimforge.dev/v1alpha1/namespaces/demo/imagebuilds/goapp/status")
        .expect("the status was patched");
    assert!(
        status_patch.query.contains("fieldManager=slimforge")
            && status_patch.query.contains("force=true"),
        "server-side apply under our field manager: {}",
        status_patch.query
    );

    // Every granted verb is used, but for these, which this run can't show:
    let exceptions = BTreeSet::from([
        // Never sent by the controller: the API server checks it on the owner
        // when a pod or claim it creates has blockOwnerDeletion (OpenShift).
        Access::new("slimforge.dev", "imagebuilds/finalizers", "update"),
        // kube's Recorder patches an event only when the same one repeats.
        Access::new("events.k8s.io", "events", "patch"),
    ]);
    let unused: BTreeSet<Access> = granted()
        .difference(&observed(&requests))
        .cloned()
        .collect();
    assert_eq!(
        unused,
        exceptions,
        "granted but not used (observed: {:#?})",
        observed(&requests)
    );

    // --log-format json: one JSON object a line.
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            entry["level"].is_string() && entry["fields"].is_object(),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_namespace_the_controller_watches_the_whole_cluster() {
    let fake = fake_with(&["demo", "team-b"]);
    let api = start_api_server(fake.clone()).await;
    let mut controller = ControllerProcess::start(api, &[]);
    controller
        .eventually("the builds of both namespaces start", async || {
            namespace_done(&fake, "demo").and(namespace_done(&fake, "team-b"))
        })
        .await;
    drop(controller);

    let requests = fake.requests();
    assert_every_request_is_granted(&requests);
    for path in [
        "/apis/slimforge.dev/v1alpha1/imagebuilds",
        "/api/v1/pods",
        "/api/v1/persistentvolumeclaims",
    ] {
        let verbs: BTreeSet<&str> = requests
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.access.verb.as_str())
            .collect();
        assert_eq!(verbs, BTreeSet::from(["list", "watch"]), "{path}");
    }
    assert!(
        !requests.iter().any(|r| r.path.contains("/leases")),
        "no Lease without --leader-election"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_list_runs_one_controller_per_namespace() {
    let fake = fake_with(&["demo", "team-b", "elsewhere"]);
    let api = start_api_server(fake.clone()).await;
    let mut controller = ControllerProcess::start(api, &["--namespace", " demo,team-b,"]);
    controller
        .eventually("the builds of demo and team-b start", async || {
            namespace_done(&fake, "demo").and(namespace_done(&fake, "team-b"))
        })
        .await;
    drop(controller);

    let requests = fake.requests();
    assert_every_request_is_granted(&requests);
    for request in &requests {
        assert!(
            request.path.contains("/namespaces/demo/")
                || request.path.contains("/namespaces/team-b/"),
            "{} {} is outside the namespaces given",
            request.method,
            request.path
        );
    }
    for namespace in ["demo", "team-b"] {
        let watched: BTreeSet<&str> = requests
            .iter()
            .filter(|r| {
                r.access.verb == "watch" && r.path.contains(&format!("/namespaces/{namespace}/"))
            })
            .map(|r| r.access.resource.as_str())
            .collect();
        assert_eq!(
            watched,
            BTreeSet::from(["imagebuilds", "persistentvolumeclaims", "pods"]),
            "{namespace}"
        );
    }
    assert_eq!(pods_of(&fake, "elsewhere", "goapp"), 0);
    assert_eq!(pods_of(&fake, "elsewhere", "goapp-old"), 1);
}

/// Two replicas: the standby is ready (a rollout must not wait for it to
/// lead) but builds nothing, stops at once on SIGTERM, and the leader gives
/// the Lease up when it stops, so a standby takes over without waiting for
/// the Lease to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_replica_is_ready_and_the_leader_releases_the_lease_on_sigterm() {
    let fake = fake_with(&["demo"]);
    let api = start_api_server(fake.clone()).await;
    let args = [
        "--leader-election",
        "--lease-namespace",
        "slimforge-system",
        "--namespace",
        "demo",
    ];
    let mut leader = ControllerProcess::start(api, &args);
    let leader_id = format!("slimforge-{}", leader.child.id());
    leader
        .eventually("the first replica leads", async || {
            match lease_holder(&fake) {
                Some(h) if h == leader_id => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    leader
        .eventually("the leader starts the builds", async || {
            namespace_done(&fake, "demo")
        })
        .await;

    let mut standby = ControllerProcess::start(api, &args);
    let standby_metrics = standby.metrics;
    standby
        .eventually("the standby answers /readyz", async || {
            answers_ok(standby_metrics, "/readyz").await
        })
        .await;
    assert_eq!(lease_holder(&fake).as_deref(), Some(leader_id.as_str()));
    let status = standby.terminate();
    assert!(status.success(), "{status}:\n{}", standby.log());
    assert!(
        standby.log().contains("stopped before leading"),
        "{}",
        standby.log()
    );

    let status = leader.terminate();
    assert!(status.success(), "{status}:\n{}", leader.log());
    assert_eq!(
        lease_holder(&fake),
        None,
        "the Lease is released: {:?}",
        fake.object(
            "coordination.k8s.io",
            "leases",
            "slimforge-system",
            "slimforge-controller"
        )
    );
}
