//! The Kubernetes shell against an API server TEST DOUBLE: a tower-test mock
//! service answering kube's HTTP requests in place of an API server (none
//! can run on this machine). The test checks the exact requests one
//! reconcile makes for a new build, and how a Pod Security rejection and a
//! missing Secret end.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::core::DeserializeGuard;
use kube::runtime::events::Recorder;
use serde_json::{Value, json};
use slimforge::api::ImageBuild;
use slimforge::controller::Settings;
use slimforge::controller::cluster::{Context, reconcile_build};
use slimforge::controller::metrics::Metrics;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const BUILD: &str = r#"{
  "apiVersion": "slimforge.dev/v1alpha1", "kind": "ImageBuild",
  "metadata": {"name": "goapp", "namespace": "demo", "uid": "u-1", "generation": 1},
  "spec": {
    "context": {"inline": {"app.go": "package main\nfunc main() {}\n"}},
    "dockerfile": "FROM golang AS builder\nCOPY app.go .\nRUN go build app.go\nFROM busybox\nCOPY --from=builder /go/app .\nCMD [\"./app\"]\n",
    "output": {"image": "registry.example/goapp:v1", "pushSecret": "regcred"}
  }
}"#;

fn context() -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let context = Context {
        recorder: Recorder::new(client.clone(), "slimforge".into()),
        client,
        settings: Settings {
            helper_image: "registry.example/slimforge:test".into(),
            ..Settings::default()
        },
        metrics: Arc::new(Metrics::new()),
        in_flight: Default::default(),
    };
    (Arc::new(context), handle)
}

/// The next request, checked against method and path (query aside),
/// answered with `status` and `body`; returns the request's JSON body.
async fn expect(
    handle: &mut Handle,
    method: Method,
    path: &str,
    status: StatusCode,
    body: Value,
) -> (String, Value) {
    let (request, send) = handle.next_request().await.expect("a request");
    assert_eq!(request.method(), method, "{}", request.uri());
    assert_eq!(request.uri().path(), path, "{}", request.uri());
    let uri = request.uri().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let sent = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let reply = if body.is_null() { sent.clone() } else { body };
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    (uri, sent)
}

fn empty_list(kind: &str) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": []})
}

fn build() -> Arc<DeserializeGuard<ImageBuild>> {
    Arc::new(DeserializeGuard(Ok(serde_json::from_str(BUILD).unwrap())))
}

#[tokio::test]
async fn a_new_build_creates_its_workspace_first_pod_and_status() {
    let (context, mut handle) = context();
    let server = tokio::spawn(async move {
        let (uri, _) = expect(
            &mut handle,
            Method::GET,
            "/api/v1/namespaces/demo/pods",
            StatusCode::OK,
            empty_list("PodList"),
        )
        .await;
        assert!(uri.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dslimforge%2Cslimforge.dev%2Fbuild%3Dgoapp"), "{uri}");
        expect(
            &mut handle,
            Method::GET,
            "/api/v1/namespaces/demo/persistentvolumeclaims",
            StatusCode::OK,
            empty_list("PersistentVolumeClaimList"),
        )
        .await;
        expect(&mut handle, Method::GET, "/api/v1/namespaces/demo/secrets/regcred", StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred", "namespace": "demo"}, "type": "kubernetes.io/dockerconfigjson"})).await;
        let (_, claim) = expect(
            &mut handle,
            Method::POST,
            "/api/v1/namespaces/demo/persistentvolumeclaims",
            StatusCode::CREATED,
            Value::Null,
        )
        .await;
        assert_eq!(claim["metadata"]["name"], "goapp-g1-workspace");
        assert_eq!(claim["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(claim["metadata"]["ownerReferences"][0]["uid"], "u-1");
        let (_, pod) = expect(
            &mut handle,
            Method::POST,
            "/api/v1/namespaces/demo/pods",
            StatusCode::CREATED,
            Value::Null,
        )
        .await;
        assert_eq!(pod["metadata"]["name"], "goapp-g1-1");
        assert_eq!(
            pod["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "slimforge"
        );
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        let (uri, patch) = expect(
            &mut handle,
            Method::PATCH,
            "/apis/slimforge.dev/v1alpha1/namespaces/demo/imagebuilds/goapp/status",
            StatusCode::OK,
            serde_json::from_str(BUILD).unwrap(),
        )
        .await;
        assert!(
            uri.contains("fieldManager=slimforge") && uri.contains("force=true"),
            "{uri}"
        );
        assert_eq!(patch["status"]["phase"], "Running");
        assert_eq!(patch["status"]["observedGeneration"], 1);
        assert_eq!(patch["status"]["conditions"][0]["type"], "Ready");
        let (_, event) = expect(
            &mut handle,
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/demo/events",
            StatusCode::CREATED,
            Value::Null,
        )
        .await;
        assert_eq!(event["reason"], "PodCreated");
        assert_eq!(event["regarding"]["name"], "goapp");
    });
    reconcile_build(build(), context).await.expect("reconcile");
    server.await.unwrap();
}

#[tokio::test]
async fn a_pod_security_rejection_becomes_ready_false() {
    let (context, mut handle) = context();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            Method::GET,
            "/api/v1/namespaces/demo/pods",
            StatusCode::OK,
            empty_list("PodList"),
        )
        .await;
        expect(
            &mut handle,
            Method::GET,
            "/api/v1/namespaces/demo/persistentvolumeclaims",
            StatusCode::OK,
            empty_list("PersistentVolumeClaimList"),
        )
        .await;
        expect(
            &mut handle,
            Method::GET,
            "/api/v1/namespaces/demo/secrets/regcred",
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"}}),
        )
        .await;
        expect(
            &mut handle,
            Method::POST,
            "/api/v1/namespaces/demo/persistentvolumeclaims",
            StatusCode::CREATED,
            Value::Null,
        )
        .await;
        expect(&mut handle, Method::POST, "/api/v1/namespaces/demo/pods", StatusCode::FORBIDDEN,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403, "reason": "Forbidden",
                   "message": "pods \"goapp-g1-1\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true"})).await;
        let (_, patch) = expect(
            &mut handle,
            Method::PATCH,
            "/apis/slimforge.dev/v1alpha1/namespaces/demo/imagebuilds/goapp/status",
            StatusCode::OK,
            serde_json::from_str(BUILD).unwrap(),
        )
        .await;
        assert_eq!(patch["status"]["conditions"][0]["status"], "False");
        assert_eq!(
            patch["status"]["conditions"][0]["reason"],
            "PodSecurityForbidden"
        );
        let (_, event) = expect(
            &mut handle,
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/demo/events",
            StatusCode::CREATED,
            Value::Null,
        )
        .await;
        assert_eq!(event["type"], "Warning");
    });
    reconcile_build(build(), context).await.expect("reconcile");
    server.await.unwrap();
}

#[tokio::test]
async fn a_missing_push_secret_creates_nothing() {
    let (context, mut handle) = context();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            Method::GET,
            "/api/v1/namespaces/demo/pods",
            StatusCode::OK,
            empty_list("PodList"),
        )
        .await;
        expect(
            &mut handle,
            Method::GET,
            "/api/v1/namespaces/demo/persistentvolumeclaims",
            StatusCode::OK,
            empty_list("PersistentVolumeClaimList"),
        )
        .await;
        expect(&mut handle, Method::GET, "/api/v1/namespaces/demo/secrets/regcred", StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "secrets \"regcred\" not found"})).await;
        // Straight to the status: no claim, no pod.
        let (_, patch) = expect(
            &mut handle,
            Method::PATCH,
            "/apis/slimforge.dev/v1alpha1/namespaces/demo/imagebuilds/goapp/status",
            StatusCode::OK,
            serde_json::from_str(BUILD).unwrap(),
        )
        .await;
        assert_eq!(patch["status"]["conditions"][0]["reason"], "SecretNotFound");
        assert!(
            patch["status"]["conditions"][0]["message"]
                .as_str()
                .unwrap()
                .contains("spec.output.pushSecret")
        );
        expect(
            &mut handle,
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/demo/events",
            StatusCode::CREATED,
            Value::Null,
        )
        .await;
    });
    reconcile_build(build(), context).await.expect("reconcile");
    server.await.unwrap();
}
