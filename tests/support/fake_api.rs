//! A recording fake of the Kubernetes API server (axum on 127.0.0.1),
//! the only test double this project permits: no API server can run on
//! this machine. It keeps a small world of objects in memory and answers
//! as the API server would (reads, lists filtered by label, creates,
//! patches merged in, deletes; watches are held open and stay silent), and
//! records every request as the RBAC access it needs: (apiGroup,
//! resource[/subresource], verb). Used by tests/controller_api.rs (the
//! controller binary) and tests/operator_image.rs (the operator image).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::percent_decode;

/// What a request needs in RBAC terms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Access {
    pub group: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    pub verb: String,
}

impl Access {
    pub fn new(group: &str, resource: &str, verb: &str) -> Self {
        Access {
            group: group.into(),
            resource: resource.into(),
            verb: verb.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub access: Access,
}

/// (group, resource, namespace or "", name).
pub type Key = (String, String, String, String);

#[derive(Default)]
pub struct World {
    pub objects: BTreeMap<Key, Value>,
    pub requests: Vec<Recorded>,
    pub version: u64,
}

#[derive(Clone, Default)]
pub struct Fake(pub Arc<Mutex<World>>);

impl Fake {
    pub fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn object(
        &self,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let key = (group.into(), resource.into(), namespace.into(), name.into());
        self.world().objects.get(&key).cloned()
    }

    /// The objects of a kind in a namespace whose labels include `label=value`.
    pub fn labelled(
        &self,
        resource: &str,
        namespace: &str,
        label: &str,
        value: &str,
    ) -> Vec<Value> {
        self.world()
            .objects
            .iter()
            .filter(|((_, r, ns, _), o)| {
                r == resource && ns == namespace && o["metadata"]["labels"][label] == value
            })
            .map(|(_, o)| o.clone())
            .collect()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.world().requests.clone()
    }

    pub fn saw(&self, method: &str, path: &str) -> bool {
        self.world()
            .requests
            .iter()
            .any(|r| r.method == method && r.path == path)
    }
}

/// Where a request points.
pub struct Target {
    pub group: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

pub fn target(path: &str) -> Option<Target> {
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

pub fn verb(method: &Method, named: bool, query: &BTreeMap<String, String>) -> &'static str {
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

pub fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Equality-based label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`.
pub fn selected(object: &Value, selector: &str) -> bool {
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

pub fn kind_of(group: &str, resource: &str) -> (&'static str, &'static str) {
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

pub fn failure(code: StatusCode, reason: &str, message: String) -> Response {
    json_reply(
        code,
        json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
               "reason": reason, "message": message, "code": code.as_u16()}),
    )
}

pub fn json_reply(code: StatusCode, body: Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A JSON merge: objects key by key, `null` removes, the rest replaces.
/// Enough for the merge, strategic-merge and apply patches the controller sends.
pub fn merge(target: &mut Value, patch: &Value) {
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

pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap()
        .to_string()
}

pub async fn api_server(State(fake): State<Fake>, request: Request) -> Response {
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

pub async fn start_api_server(fake: Fake) -> SocketAddr {
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

/// `DIR/kubeconfig` pointing at the fake on `api`, without credentials,
/// readable by any uid (a container may read it as another user).
pub fn write_kubeconfig(dir: &std::path::Path, api: SocketAddr) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: fake, cluster: {{server: 'http://{api}'}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n\
             current-context: fake\n"
        ),
    )
    .expect("write the kubeconfig");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .expect("chmod the kubeconfig");
    path
}

// ---- the world ---------------------------------------------------------

/// The seed example (deploy/examples/goapp.yaml) as the API server holds it.
pub fn seed_build(namespace: &str, name: &str) -> Value {
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

pub fn push_secret(namespace: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
           "metadata": {"name": "regcred", "namespace": namespace, "uid": format!("uid-{namespace}-regcred"), "resourceVersion": "1"},
           "data": {".dockerconfigjson": "eyJhdXRocyI6e319"}})
}

pub fn ours(build: &str) -> Value {
    json!({"app.kubernetes.io/managed-by": "slimforge", "slimforge.dev/build": build,
           "slimforge.dev/generation": "1"})
}

pub fn owner(namespace: &str, build: &str) -> Value {
    json!([{"apiVersion": "slimforge.dev/v1alpha1", "kind": "ImageBuild", "name": build,
            "uid": format!("uid-{namespace}-{build}"), "controller": true, "blockOwnerDeletion": true}])
}

/// A namespace holding: the seed build, new; its push secret; a build that
/// finished long ago, its TTL expired, with a pod and a workspace left; a
/// build whose context and Dockerfile are in a ConfigMap.
pub fn namespace_objects(namespace: &str) -> Vec<Value> {
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

pub fn fake_with(namespaces: &[&str]) -> Fake {
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
