//! The Pod Security Standards (`baseline` and `restricted`, the current
//! policy version as published at kubernetes.io, "Pod Security Standards")
//! evaluated over a PodSpec as JSON.
//!
//! This is the project's own reading of the published standard, written to
//! test our pod specs where no API server runs; it is not the
//! pod-security-admission plugin and may differ from it at the edges. Where
//! the standard lets an enforcer choose (a "known list" of host ports, a list
//! of allowed capabilities beyond the defaults), this reading takes the
//! strictest choice: no host port but 0, no capability beyond the published
//! sets. The relaxations the standard describes for pods in a user
//! namespace (`hostUsers: false`, behind a feature gate) are not applied.
//! The restricted controls the standard waives for Windows pods
//! (`spec.os.name: windows`: privilege escalation, seccomp, capabilities)
//! are waived here too.
//!
//! Controls, by level:
//! - `baseline`: HostProcess; host namespaces (hostNetwork, hostPID,
//!   hostIPC); privileged containers; capabilities added beyond
//!   [`BASELINE_CAPABILITIES`]; hostPath volumes; host ports; host probes and
//!   lifecycle hooks (`httpGet.host`/`tcpSocket.host`, the v1.34 addition;
//!   only empty or undefined passes, loopback addresses included); AppArmor
//!   (the `appArmorProfile` fields and the beta annotations); SELinux type,
//!   user and role; `/proc` mount type; seccomp other than RuntimeDefault or
//!   Localhost; sysctls outside [`SAFE_SYSCTLS`].
//! - `restricted`, on top: volume types outside [`RESTRICTED_VOLUME_TYPES`];
//!   `allowPrivilegeEscalation` not false; `runAsNonRoot` not true (at the
//!   pod level, or in every container); `runAsUser: 0`; no seccomp profile
//!   (at the pod level, or in every container); capabilities not dropping
//!   ALL or adding anything but NET_BIND_SERVICE.
//!
//! Every container check covers `containers`, `initContainers` and
//! `ephemeralContainers`. [`check`] reads the PodSpec object (a Pod's
//! `spec`, or a pod template's `spec` as rendered from a chart) and, for the
//! AppArmor annotations, the pod's (or template's) `metadata.annotations`. Paths in the violations are
//! written from the pod: `spec.initContainers[0].securityContext.runAsNonRoot`.
//! A JSON `null` counts as undefined, as the API server reads it.

use std::fmt;

use serde_json::Value;

/// A level of the standard; `Restricted` includes every `Baseline` control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Baseline,
    Restricted,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        })
    }
}

/// A control of the standard, by the name the published tables give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Control {
    // Baseline.
    HostProcess,
    HostNamespaces,
    PrivilegedContainers,
    Capabilities,
    HostPathVolumes,
    HostPorts,
    HostProbes,
    AppArmor,
    SeLinux,
    ProcMount,
    Seccomp,
    Sysctls,
    // Restricted.
    VolumeTypes,
    PrivilegeEscalation,
    RunningAsNonRoot,
    RunningAsNonRootUser,
    SeccompRequired,
    CapabilitiesRestricted,
}

impl Control {
    /// The lowest level that enforces this control.
    pub fn level(self) -> Level {
        match self {
            Control::HostProcess
            | Control::HostNamespaces
            | Control::PrivilegedContainers
            | Control::Capabilities
            | Control::HostPathVolumes
            | Control::HostPorts
            | Control::HostProbes
            | Control::AppArmor
            | Control::SeLinux
            | Control::ProcMount
            | Control::Seccomp
            | Control::Sysctls => Level::Baseline,
            Control::VolumeTypes
            | Control::PrivilegeEscalation
            | Control::RunningAsNonRoot
            | Control::RunningAsNonRootUser
            | Control::SeccompRequired
            | Control::CapabilitiesRestricted => Level::Restricted,
        }
    }

    /// The control's name in the published tables.
    pub fn name(self) -> &'static str {
        match self {
            Control::HostProcess => "HostProcess",
            Control::HostNamespaces => "Host Namespaces",
            Control::PrivilegedContainers => "Privileged Containers",
            Control::Capabilities => "Capabilities",
            Control::HostPathVolumes => "HostPath Volumes",
            Control::HostPorts => "Host Ports",
            Control::HostProbes => "Host Probes / Lifecycle Hooks",
            Control::AppArmor => "AppArmor",
            Control::SeLinux => "SELinux",
            Control::ProcMount => "/proc Mount Type",
            Control::Seccomp => "Seccomp",
            Control::Sysctls => "Sysctls",
            Control::VolumeTypes => "Volume Types",
            Control::PrivilegeEscalation => "Privilege Escalation",
            Control::RunningAsNonRoot => "Running as Non-root",
            Control::RunningAsNonRootUser => "Running as Non-root user",
            Control::SeccompRequired => "Seccomp (restricted)",
            Control::CapabilitiesRestricted => "Capabilities (restricted)",
        }
    }
}

/// One field of the pod that the standard does not allow at some level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub control: Control,
    /// The field, from the pod: `spec.containers[0].securityContext.privileged`.
    pub path: String,
    /// What is there and what the control allows.
    pub message: String,
}

impl Violation {
    /// The lowest level this violation fails.
    pub fn level(&self) -> Level {
        self.control.level()
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}] {}: {}",
            self.level(),
            self.control.name(),
            self.path,
            self.message
        )
    }
}

/// Capabilities `baseline` lets a container add.
pub const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// The "safe" sysctls `baseline` allows.
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Volume sources `restricted` allows.
pub const RESTRICTED_VOLUME_TYPES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// SELinux types `baseline` allows (besides undefined and empty).
pub const SELINUX_TYPES: &[&str] = &[
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";
const CONTAINER_LISTS: [&str; 3] = ["initContainers", "containers", "ephemeralContainers"];

/// Every violation of `level` by the PodSpec `pod_spec` (a Pod's `spec` or a
/// pod template's `spec`), with `pod_metadata_annotations` the pod's (or the
/// template's) `metadata.annotations`, if any. Empty: the pod is allowed.
pub fn check(
    level: Level,
    pod_spec: &Value,
    pod_metadata_annotations: Option<&Value>,
) -> Vec<Violation> {
    let pod = Pod::new(pod_spec);
    let mut out = Vec::new();
    baseline(&pod, pod_metadata_annotations, &mut out);
    if level == Level::Restricted {
        restricted(&pod, &mut out);
    }
    out
}

/// [`check`] on a whole Pod, or on a pod template (`{metadata, spec}`).
pub fn check_pod(level: Level, pod: &Value) -> Vec<Violation> {
    check(level, &pod["spec"], pod["metadata"].get("annotations"))
}

/// Panics, listing every violation, unless `pod` (a Pod or a pod template)
/// meets `level`; `what` names it in the message.
pub fn assert_meets(level: Level, pod: &Value, what: &str) {
    let violations = check_pod(level, pod);
    if !violations.is_empty() {
        let list: Vec<String> = violations.iter().map(|v| format!("  {v}")).collect();
        panic!(
            "{what} would be rejected by Pod Security `{level}`:\n{}",
            list.join("\n")
        );
    }
}

/// The value at `key` of an object, `None` when missing or null.
fn get<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value.get(key).filter(|v| !v.is_null())
}

/// The value at a path of keys, `None` when any step is missing or null.
fn at<'a>(value: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(value, |v, k| get(v, k))
}

fn items(value: Option<&Value>) -> &[Value] {
    value.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// A JSON value as the message shows it.
fn shown(value: &Value) -> String {
    value.to_string()
}

struct Container<'a> {
    /// `spec.containers[0]`
    path: String,
    value: &'a Value,
}

impl<'a> Container<'a> {
    fn security(&self, keys: &[&str]) -> Option<&'a Value> {
        let mut path = vec!["securityContext"];
        path.extend_from_slice(keys);
        at(self.value, &path)
    }

    fn field(&self, rest: &str) -> String {
        format!("{}.securityContext.{rest}", self.path)
    }
}

struct Pod<'a> {
    spec: &'a Value,
    containers: Vec<Container<'a>>,
    windows: bool,
}

impl<'a> Pod<'a> {
    fn new(spec: &'a Value) -> Self {
        let mut containers = Vec::new();
        for list in CONTAINER_LISTS {
            for (i, value) in items(get(spec, list)).iter().enumerate() {
                containers.push(Container {
                    path: format!("spec.{list}[{i}]"),
                    value,
                });
            }
        }
        let windows = at(spec, &["os", "name"]).and_then(Value::as_str) == Some("windows");
        Pod {
            spec,
            containers,
            windows,
        }
    }

    fn security(&self, keys: &[&str]) -> Option<&'a Value> {
        let mut path = vec!["securityContext"];
        path.extend_from_slice(keys);
        at(self.spec, &path)
    }
}

fn push(out: &mut Vec<Violation>, control: Control, path: String, message: String) {
    out.push(Violation {
        control,
        path,
        message,
    });
}

/// Undefined or `false`, nothing else.
fn check_false_or_unset(
    out: &mut Vec<Violation>,
    control: Control,
    value: Option<&Value>,
    path: String,
) {
    if let Some(v) = value
        && v != &Value::Bool(false)
    {
        push(
            out,
            control,
            path,
            format!("is {}; only false or undefined is allowed", shown(v)),
        );
    }
}

fn baseline(pod: &Pod<'_>, annotations: Option<&Value>, out: &mut Vec<Violation>) {
    // HostProcess.
    check_false_or_unset(
        out,
        Control::HostProcess,
        pod.security(&["windowsOptions", "hostProcess"]),
        "spec.securityContext.windowsOptions.hostProcess".into(),
    );
    for c in &pod.containers {
        check_false_or_unset(
            out,
            Control::HostProcess,
            c.security(&["windowsOptions", "hostProcess"]),
            c.field("windowsOptions.hostProcess"),
        );
    }

    // Host Namespaces.
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        check_false_or_unset(
            out,
            Control::HostNamespaces,
            get(pod.spec, field),
            format!("spec.{field}"),
        );
    }

    // Privileged Containers.
    for c in &pod.containers {
        check_false_or_unset(
            out,
            Control::PrivilegedContainers,
            c.security(&["privileged"]),
            c.field("privileged"),
        );
    }

    // Capabilities.
    for c in &pod.containers {
        for (i, cap) in items(c.security(&["capabilities", "add"]))
            .iter()
            .enumerate()
        {
            let allowed = cap
                .as_str()
                .is_some_and(|s| BASELINE_CAPABILITIES.contains(&s));
            if !allowed {
                push(
                    out,
                    Control::Capabilities,
                    c.field(&format!("capabilities.add[{i}]")),
                    format!(
                        "adds {}; only {} may be added",
                        shown(cap),
                        BASELINE_CAPABILITIES.join(", ")
                    ),
                );
            }
        }
    }

    // HostPath Volumes.
    for (i, volume) in items(get(pod.spec, "volumes")).iter().enumerate() {
        if get(volume, "hostPath").is_some() {
            push(
                out,
                Control::HostPathVolumes,
                format!("spec.volumes[{i}].hostPath"),
                format!("volume {} is a hostPath volume", shown(&volume["name"])),
            );
        }
    }

    // Host Ports.
    for c in &pod.containers {
        for (i, port) in items(get(c.value, "ports")).iter().enumerate() {
            if let Some(host_port) = get(port, "hostPort")
                && host_port.as_i64() != Some(0)
            {
                push(
                    out,
                    Control::HostPorts,
                    format!("{}.ports[{i}].hostPort", c.path),
                    format!("is {}; only 0 or undefined is allowed", shown(host_port)),
                );
            }
        }
    }

    // Host Probes / Lifecycle Hooks.
    for c in &pod.containers {
        let handlers = [
            ("livenessProbe", None),
            ("readinessProbe", None),
            ("startupProbe", None),
            ("lifecycle", Some("postStart")),
            ("lifecycle", Some("preStop")),
        ];
        for (outer, inner) in handlers {
            let (handler, name) = match inner {
                None => (get(c.value, outer), outer.to_string()),
                Some(inner) => (at(c.value, &[outer, inner]), format!("{outer}.{inner}")),
            };
            let Some(handler) = handler else { continue };
            for action in ["httpGet", "tcpSocket"] {
                if let Some(host) = at(handler, &[action, "host"])
                    && host.as_str() != Some("")
                {
                    push(
                        out,
                        Control::HostProbes,
                        format!("{}.{name}.{action}.host", c.path),
                        format!("is {}; only empty or undefined is allowed", shown(host)),
                    );
                }
            }
        }
    }

    // AppArmor: the field, at both levels.
    let apparmor = |value: Option<&Value>, path: String, out: &mut Vec<Violation>| {
        if let Some(kind) = value {
            let allowed = matches!(kind.as_str(), Some("RuntimeDefault" | "Localhost"));
            if !allowed {
                push(
                    out,
                    Control::AppArmor,
                    path,
                    format!(
                        "is {}; only RuntimeDefault, Localhost or undefined is allowed",
                        shown(kind)
                    ),
                );
            }
        }
    };
    apparmor(
        pod.security(&["appArmorProfile", "type"]),
        "spec.securityContext.appArmorProfile.type".into(),
        out,
    );
    for c in &pod.containers {
        apparmor(
            c.security(&["appArmorProfile", "type"]),
            c.field("appArmorProfile.type"),
            out,
        );
    }
    // AppArmor: the annotations.
    if let Some(map) = annotations.and_then(Value::as_object) {
        for (key, value) in map {
            if !key.starts_with(APPARMOR_ANNOTATION_PREFIX) {
                continue;
            }
            let allowed = value
                .as_str()
                .is_some_and(|v| v == "runtime/default" || v.starts_with("localhost/"));
            if !allowed {
                push(
                    out,
                    Control::AppArmor,
                    format!("metadata.annotations[\"{key}\"]"),
                    format!(
                        "is {}; only runtime/default, localhost/* or undefined is allowed",
                        shown(value)
                    ),
                );
            }
        }
    }

    // SELinux.
    let selinux = |options: Option<&Value>, path: String, out: &mut Vec<Violation>| {
        let Some(options) = options else { return };
        if let Some(kind) = get(options, "type") {
            let allowed = kind
                .as_str()
                .is_some_and(|t| t.is_empty() || SELINUX_TYPES.contains(&t));
            if !allowed {
                push(
                    out,
                    Control::SeLinux,
                    format!("{path}.type"),
                    format!(
                        "is {}; only {}, empty or undefined is allowed",
                        shown(kind),
                        SELINUX_TYPES.join(", ")
                    ),
                );
            }
        }
        for field in ["user", "role"] {
            if let Some(v) = get(options, field)
                && v.as_str() != Some("")
            {
                push(
                    out,
                    Control::SeLinux,
                    format!("{path}.{field}"),
                    format!("is {}; only empty or undefined is allowed", shown(v)),
                );
            }
        }
    };
    selinux(
        pod.security(&["seLinuxOptions"]),
        "spec.securityContext.seLinuxOptions".into(),
        out,
    );
    for c in &pod.containers {
        selinux(
            c.security(&["seLinuxOptions"]),
            c.field("seLinuxOptions"),
            out,
        );
    }

    // /proc Mount Type.
    for c in &pod.containers {
        if let Some(mount) = c.security(&["procMount"])
            && mount.as_str() != Some("Default")
        {
            push(
                out,
                Control::ProcMount,
                c.field("procMount"),
                format!("is {}; only Default or undefined is allowed", shown(mount)),
            );
        }
    }

    // Seccomp: no profile but RuntimeDefault and Localhost, where one is set.
    let seccomp = |kind: Option<&Value>, path: String, out: &mut Vec<Violation>| {
        if let Some(kind) = kind
            && !is_confined(kind)
        {
            push(
                out,
                Control::Seccomp,
                path,
                format!(
                    "is {}; only RuntimeDefault, Localhost or undefined is allowed",
                    shown(kind)
                ),
            );
        }
    };
    seccomp(
        pod.security(&["seccompProfile", "type"]),
        "spec.securityContext.seccompProfile.type".into(),
        out,
    );
    for c in &pod.containers {
        seccomp(
            c.security(&["seccompProfile", "type"]),
            c.field("seccompProfile.type"),
            out,
        );
    }

    // Sysctls.
    for (i, sysctl) in items(pod.security(&["sysctls"])).iter().enumerate() {
        let name = &sysctl["name"];
        let allowed = name.as_str().is_some_and(|n| SAFE_SYSCTLS.contains(&n));
        if !allowed {
            push(
                out,
                Control::Sysctls,
                format!("spec.securityContext.sysctls[{i}].name"),
                format!("{} is not one of the safe sysctls", shown(name)),
            );
        }
    }
}

fn is_confined(kind: &Value) -> bool {
    matches!(kind.as_str(), Some("RuntimeDefault" | "Localhost"))
}

fn restricted(pod: &Pod<'_>, out: &mut Vec<Violation>) {
    // Volume Types.
    for (i, volume) in items(get(pod.spec, "volumes")).iter().enumerate() {
        let Some(fields) = volume.as_object() else {
            continue;
        };
        // A volume with no source at all is defaulted to emptyDir.
        for (source, value) in fields {
            if source == "name" || value.is_null() {
                continue;
            }
            if !RESTRICTED_VOLUME_TYPES.contains(&source.as_str()) {
                push(
                    out,
                    Control::VolumeTypes,
                    format!("spec.volumes[{i}].{source}"),
                    format!(
                        "volume {} is of type {source}; only {} are allowed",
                        shown(&volume["name"]),
                        RESTRICTED_VOLUME_TYPES.join(", ")
                    ),
                );
            }
        }
    }

    // Privilege Escalation (waived for Windows pods).
    if !pod.windows {
        for c in &pod.containers {
            let value = c.security(&["allowPrivilegeEscalation"]);
            if value != Some(&Value::Bool(false)) {
                push(
                    out,
                    Control::PrivilegeEscalation,
                    c.field("allowPrivilegeEscalation"),
                    format!(
                        "is {}; must be false",
                        value.map_or("undefined".into(), shown)
                    ),
                );
            }
        }
    }

    // Running as Non-root: true at the pod level, or in every container;
    // false nowhere.
    let pod_non_root = pod.security(&["runAsNonRoot"]);
    if let Some(v) = pod_non_root
        && v != &Value::Bool(true)
    {
        push(
            out,
            Control::RunningAsNonRoot,
            "spec.securityContext.runAsNonRoot".into(),
            format!("is {}; must be true or undefined", shown(v)),
        );
    }
    let pod_says_non_root = pod_non_root == Some(&Value::Bool(true));
    for c in &pod.containers {
        match c.security(&["runAsNonRoot"]) {
            Some(v) if v != &Value::Bool(true) => push(
                out,
                Control::RunningAsNonRoot,
                c.field("runAsNonRoot"),
                format!("is {}; must be true or undefined", shown(v)),
            ),
            None if !pod_says_non_root => push(
                out,
                Control::RunningAsNonRoot,
                c.field("runAsNonRoot"),
                "is undefined and spec.securityContext.runAsNonRoot is not true".into(),
            ),
            _ => {}
        }
    }

    // Running as Non-root user: no runAsUser of 0 anywhere.
    let non_root_user = |value: Option<&Value>, path: String, out: &mut Vec<Violation>| {
        if let Some(v) = value
            && v.as_i64().is_none_or(|uid| uid == 0)
        {
            push(
                out,
                Control::RunningAsNonRootUser,
                path,
                format!("is {}; must be a non-zero UID or undefined", shown(v)),
            );
        }
    };
    non_root_user(
        pod.security(&["runAsUser"]),
        "spec.securityContext.runAsUser".into(),
        out,
    );
    for c in &pod.containers {
        non_root_user(c.security(&["runAsUser"]), c.field("runAsUser"), out);
    }

    if pod.windows {
        return;
    }

    // Seccomp: set, at the pod level or in every container. (Values other
    // than RuntimeDefault and Localhost are the baseline control's.)
    let pod_sets_seccomp = pod.security(&["seccompProfile", "type"]).is_some();
    if !pod_sets_seccomp {
        for c in &pod.containers {
            if c.security(&["seccompProfile", "type"]).is_none() {
                push(
                    out,
                    Control::SeccompRequired,
                    c.field("seccompProfile.type"),
                    "is undefined and so is spec.securityContext.seccompProfile.type; \
                     RuntimeDefault or Localhost is required"
                        .into(),
                );
            }
        }
    }

    // Capabilities: drop ALL, add nothing but NET_BIND_SERVICE.
    for c in &pod.containers {
        let drops_all = items(c.security(&["capabilities", "drop"]))
            .iter()
            .any(|d| d.as_str() == Some("ALL"));
        if !drops_all {
            push(
                out,
                Control::CapabilitiesRestricted,
                c.field("capabilities.drop"),
                "does not include ALL".into(),
            );
        }
        for (i, cap) in items(c.security(&["capabilities", "add"]))
            .iter()
            .enumerate()
        {
            if cap.as_str() != Some("NET_BIND_SERVICE") {
                push(
                    out,
                    Control::CapabilitiesRestricted,
                    c.field(&format!("capabilities.add[{i}]")),
                    format!("adds {}; only NET_BIND_SERVICE may be added", shown(cap)),
                );
            }
        }
    }
}
