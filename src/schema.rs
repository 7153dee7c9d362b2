//! An ImageBuild manifest read as strictly as the API server reads it under
//! `kubectl`'s default field validation: the apiVersion this slimforge
//! serves, no unknown field, and every value of the type, format and enum
//! the CRD's schema gives. The CRD's CEL rules have their twins in
//! [`crate::controller::reconcile::validate()`], which local builds run too;
//! the one every reader of a spec needs, where the Dockerfile comes from,
//! is here ([`dockerfile_source`]).

use kube::CustomResourceExt;
use serde_json::Value;

use crate::api::{ImageBuild, ImageBuildSpec};

/// Why a YAML document is not an ImageBuild this slimforge accepts.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The document can't be seen as JSON (a mapping key that isn't text).
    #[error("ImageBuild: {0}")]
    Json(#[from] serde_json::Error),
    /// The schema check's findings, one per broken rule.
    #[error("ImageBuild is invalid: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The schema passed but the typed object could not be read.
    #[error("ImageBuild: {0}")]
    Typed(#[from] serde_yaml::Error),
}

/// One YAML document as the API server would take it: checked against the
/// CRD's schema first (so an error names the field as `kubectl` does), then
/// read as the typed [`ImageBuild`]. Every reader of a manifest (the local
/// build, `slimforge plan`) goes through here so they accept the same files.
/// `metadata` may be left out (`slimforge plan` needs none); the typed
/// object then has an empty one, and a reader that needs a name says so.
pub fn parse_image_build(mut document: serde_yaml::Value) -> Result<ImageBuild, ManifestError> {
    let object = serde_json::to_value(&document)?;
    let errors = image_build_errors(&object);
    if !errors.is_empty() {
        return Err(ManifestError::Invalid(errors));
    }
    if let serde_yaml::Value::Mapping(fields) = &mut document
        && fields
            .get("metadata")
            .is_none_or(serde_yaml::Value::is_null)
    {
        fields.insert("metadata".into(), serde_yaml::Mapping::new().into());
    }
    Ok(serde_yaml::from_value(document)?)
}

/// Where a spec's Dockerfile comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerfileSource<'a> {
    /// `spec.dockerfile`: the text itself.
    Inline(&'a str),
    /// `spec.dockerfilePath`: a file of the build context.
    Path(&'a str),
}

/// A spec that breaks the rule "exactly one of dockerfile and dockerfilePath".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DockerfileSourceError {
    #[error("give exactly one of dockerfile and dockerfilePath")]
    Neither,
    #[error("give exactly one of dockerfile and dockerfilePath")]
    Both,
}

/// The rule `has(self.dockerfile) != has(self.dockerfilePath)` of the CRD,
/// for the readers the API server does not stand in front of (local builds,
/// `slimforge plan`) and for the controller, which must not trust that the
/// CRD installed is this one.
pub fn dockerfile_source(
    spec: &ImageBuildSpec,
) -> Result<DockerfileSource<'_>, DockerfileSourceError> {
    match (&spec.dockerfile, &spec.dockerfile_path) {
        (Some(text), None) => Ok(DockerfileSource::Inline(text)),
        (None, Some(path)) => Ok(DockerfileSource::Path(path)),
        (None, None) => Err(DockerfileSourceError::Neither),
        (Some(_), Some(_)) => Err(DockerfileSourceError::Both),
    }
}

/// The fields Kubernetes knows in any object's `metadata`.
const OBJECT_META: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Every way `object` (a whole ImageBuild document) breaks the rules, one
/// line each, named by field path as `kubectl` names them.
pub fn image_build_errors(object: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let api_version = object.get("apiVersion").and_then(Value::as_str);
    let served = ImageBuild::api_resource().api_version;
    if api_version != Some(served.as_str()) {
        errors.push(format!(
            "apiVersion: {}: this slimforge serves {served}",
            match api_version {
                Some(v) => format!("`{v}` is not served"),
                None => "missing".into(),
            }
        ));
    }
    let Some(fields) = object.as_object() else {
        errors.push("the document is not a mapping".into());
        return errors;
    };
    let crd = ImageBuild::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_default();
    for (name, value) in fields {
        match name.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => check_metadata(value, &mut errors),
            _ => match schema["properties"].get(name) {
                Some(field) => check(value, field, name, &mut errors),
                None => errors.push(format!("{name}: unknown field")),
            },
        }
    }
    if !fields.contains_key("spec") {
        errors.push("spec: Required value".into());
    }
    errors
}

fn check_metadata(value: &Value, errors: &mut Vec<String>) {
    let Some(fields) = value.as_object() else {
        if !value.is_null() {
            errors.push("metadata: must be a mapping".into());
        }
        return;
    };
    for name in fields.keys() {
        if !OBJECT_META.contains(&name.as_str()) {
            errors.push(format!("metadata.{name}: unknown field"));
        }
    }
}

/// Checks `value` at `path` against a structural schema.
fn check(value: &Value, schema: &Value, path: &str, errors: &mut Vec<String>) {
    // The API server drops a null before it validates.
    if value.is_null() {
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"] == true;
    let want = schema["type"].as_str().unwrap_or_default();
    let got = match value {
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => unreachable!(),
    };
    let fits = if int_or_string {
        matches!(got, "integer" | "string")
    } else {
        want.is_empty() || want == got || (want == "number" && got == "integer")
    };
    if !fits {
        let want = if int_or_string {
            "integer or string"
        } else {
            want
        };
        errors.push(format!("{path}: must be of type {want}, not {got}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let allowed: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push(format!(
            "{path}: unsupported value {value}: supported values: {}",
            allowed.join(", ")
        ));
    }
    match value {
        Value::Number(n) => {
            let fits = match schema["format"].as_str() {
                Some("int32") => n.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
                Some("int64") => n.as_i64().is_some(),
                _ => true,
            };
            if !fits {
                errors.push(format!(
                    "{path}: {n} does not fit in {}",
                    schema["format"].as_str().unwrap_or_default()
                ));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check(item, &schema["items"], &format!("{path}[{i}]"), errors);
            }
        }
        Value::Object(fields) => {
            let properties = schema["properties"].as_object();
            let additional = &schema["additionalProperties"];
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
            for (name, field) in fields {
                let child = format!("{path}.{name}");
                match properties.and_then(|p| p.get(name)) {
                    Some(field_schema) => check(field, field_schema, &child, errors),
                    None if additional.is_object() => check(field, additional, &child, errors),
                    None if preserve => {}
                    None => errors.push(format!("{child}: unknown field")),
                }
            }
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap_or_default();
                if fields.get(name).is_none_or(Value::is_null) {
                    errors.push(format!("{path}.{name}: Required value"));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        image_build_errors(&serde_yaml::from_str(yaml).unwrap())
    }

    fn parse(yaml: &str) -> Result<ImageBuild, ManifestError> {
        parse_image_build(serde_yaml::from_str(yaml).unwrap())
    }

    const GOOD: &str = "apiVersion: slimforge.dev/v1alpha1
kind: ImageBuild
metadata: {name: app, labels: {a: b}}
spec:
  context: {inline: {app.go: x}}
  dockerfile: FROM busybox
  buildArgs: {A: b}
  output: {image: r.example/app:1}
  resources: {limits: {cpu: 1, memory: 1Gi}}
  workspace: {accessModes: [ReadWriteOnce]}
  ttlSecondsAfterFinished: 60
";

    #[test]
    fn a_good_manifest_has_no_errors() {
        assert_eq!(errors(GOOD), Vec::<String>::new());
    }

    #[test]
    fn each_error_names_its_field() {
        let cases = [
            (
                "  dockerfile: FROM busybox\n",
                "  dockerfile: FROM busybox\n  timout: 5m\n",
                "spec.timout: unknown field",
            ),
            (
                "apiVersion: slimforge.dev/v1alpha1",
                "apiVersion: slimforge.dev/v9",
                "apiVersion: `slimforge.dev/v9` is not served: this slimforge serves slimforge.dev/v1alpha1",
            ),
            (
                "metadata: {name: app,",
                "metadata: {nmae: x, name: app,",
                "metadata.nmae: unknown field",
            ),
            (
                "output: {image: r.example/app:1}",
                "output: {image: r.example/app:1, tags: [a]}",
                "spec.output.tags: unknown field",
            ),
            (
                "ttlSecondsAfterFinished: 60",
                "ttlSecondsAfterFinished: soon",
                "spec.ttlSecondsAfterFinished: must be of type integer, not string",
            ),
            (
                "[ReadWriteOnce]",
                "[ReadWriteMost]",
                "spec.workspace.accessModes[0]: unsupported value \"ReadWriteMost\"",
            ),
            (
                "{A: b}",
                "{A: [b]}",
                "spec.buildArgs.A: must be of type string, not array",
            ),
            (
                "cpu: 1,",
                "cpu: [1],",
                "spec.resources.limits.cpu: must be of type integer or string, not array",
            ),
            (
                "  output: {image: r.example/app:1}\n",
                "",
                "spec.output: Required value",
            ),
            (
                "kind: ImageBuild\n",
                "kind: ImageBuild\nstatuss: {}\n",
                "statuss: unknown field",
            ),
        ];
        for (from, to, want) in cases {
            assert!(GOOD.contains(from), "{from}");
            let got = errors(&GOOD.replacen(from, to, 1));
            assert!(
                got.len() == 1 && got[0].starts_with(want),
                "{from} → {to}: {got:?}"
            );
        }
    }

    #[test]
    fn a_good_manifest_parses_to_its_typed_image_build() {
        let ib = parse(GOOD).unwrap();
        assert_eq!(ib.spec.dockerfile.as_deref(), Some("FROM busybox"));
        assert_eq!(ib.spec.build_args.get("A").map(String::as_str), Some("b"));
        assert_eq!(ib.metadata.name.as_deref(), Some("app"));
    }

    #[test]
    fn parsing_reports_every_schema_error_on_one_line() {
        let bad = GOOD.replacen("dockerfile:", "dockerfil:", 1).replacen(
            "ttlSecondsAfterFinished: 60",
            "ttlSecondsAfterFinished: soon",
            1,
        );
        let error = parse(&bad).unwrap_err().to_string();
        assert_eq!(
            error,
            "ImageBuild is invalid: spec.dockerfil: unknown field; spec.ttlSecondsAfterFinished: must be of type integer, not string"
        );
    }

    #[test]
    fn a_manifest_without_metadata_still_parses() {
        for metadata in ["", "metadata:\n", "metadata: null\n"] {
            let ib = parse(&format!(
                "apiVersion: slimforge.dev/v1alpha1\nkind: ImageBuild\n{metadata}spec: {{context: {{inline: {{}}}}, output: {{image: r.example/x:1}}, dockerfilePath: Dockerfile}}\n",
            ))
            .unwrap();
            assert_eq!(ib.spec.dockerfile_path.as_deref(), Some("Dockerfile"));
            assert_eq!(ib.metadata.name, None);
        }
    }

    #[test]
    fn exactly_one_dockerfile_source() {
        let mut spec = ImageBuildSpec::default();
        assert_eq!(
            dockerfile_source(&spec),
            Err(DockerfileSourceError::Neither)
        );
        spec.dockerfile = Some("FROM x".into());
        assert_eq!(
            dockerfile_source(&spec),
            Ok(DockerfileSource::Inline("FROM x"))
        );
        spec.dockerfile_path = Some("Dockerfile".into());
        assert_eq!(dockerfile_source(&spec), Err(DockerfileSourceError::Both));
        spec.dockerfile = None;
        assert_eq!(
            dockerfile_source(&spec),
            Ok(DockerfileSource::Path("Dockerfile"))
        );
        assert_eq!(
            DockerfileSourceError::Both.to_string(),
            "give exactly one of dockerfile and dockerfilePath"
        );
    }
}
