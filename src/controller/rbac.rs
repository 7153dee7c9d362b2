//! The permissions the controller needs, and nothing more: the single source
//! of truth for the Helm chart's (Cluster)Role and for the test that runs the
//! controller against a recording API server and checks every request it
//! makes against these rules. Each rule names the code that needs it; a rule
//! no code needs is a privilege to remove, not to keep "just in case".

use k8s_openapi::api::rbac::v1::PolicyRule;

/// One RBAC rule in a form that is easy to read and compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// `""` for the core group.
    pub api_group: &'static str,
    /// A resource, or `resource/subresource`.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

impl Rule {
    /// Whether this rule grants `verb` on `resource` (with its subresource) in `api_group`.
    pub fn grants(&self, api_group: &str, resource: &str, verb: &str) -> bool {
        self.api_group == api_group && self.resource == resource && self.verbs.contains(&verb)
    }
}

impl From<Rule> for PolicyRule {
    fn from(rule: Rule) -> Self {
        PolicyRule {
            api_groups: Some(vec![rule.api_group.to_string()]),
            resources: Some(vec![rule.resource.to_string()]),
            verbs: rule
                .verbs
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            ..PolicyRule::default()
        }
    }
}

/// What the controller does in every namespace it watches (a Role per
/// namespace, or a ClusterRole when it watches all of them).
pub const BUILD_RULES: &[Rule] = &[
    // run.rs: the Controller's watcher on ImageBuilds (list, then watch).
    // Nothing reads one ImageBuild by name: no `get`. The rebuild
    // annotation is read from the watched object: no more is needed.
    Rule {
        api_group: "slimforge.dev",
        resource: "imagebuilds",
        verbs: &["list", "watch"],
    },
    // cluster.rs `patch_status`: server-side apply on the status subresource.
    Rule {
        api_group: "slimforge.dev",
        resource: "imagebuilds/status",
        verbs: &["patch"],
    },
    // Not called by our code: the API server (OwnerReferencesPermissionEnforcement,
    // on by default in OpenShift) requires it on the owner to create children
    // whose ownerReferences set blockOwnerDeletion (pods.rs `BuildObjects::metadata`).
    Rule {
        api_group: "slimforge.dev",
        resource: "imagebuilds/finalizers",
        verbs: &["update"],
    },
    // run.rs: `owns(pods)` (list, watch); cluster.rs `dereference` (list),
    // `create` of the build's pods, `delete` of finished and expired ones.
    Rule {
        api_group: "",
        resource: "pods",
        verbs: &["list", "watch", "create", "delete"],
    },
    // The same for the workspace claims: run.rs `owns(claims)`,
    // cluster.rs `dereference`, `create`, `delete`.
    Rule {
        api_group: "",
        resource: "persistentvolumeclaims",
        verbs: &["list", "watch", "create", "delete"],
    },
    // cluster.rs `dereference`: pushSecret and git credentialsSecret must
    // exist (read once, never watched; their data goes to pods as volumes).
    Rule {
        api_group: "",
        resource: "secrets",
        verbs: &["get"],
    },
    // cluster.rs `dereference`: a configMap context must exist, and may hold
    // the Dockerfile (`dockerfilePath`).
    Rule {
        api_group: "",
        resource: "configmaps",
        verbs: &["get"],
    },
    // cluster.rs `record`: kube's Recorder creates an event, and patches it
    // when the same event repeats (its series count).
    Rule {
        api_group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
    },
];

/// Leader election (run.rs, kube-lease-manager): in the operator's own
/// namespace only. The manager reads the Lease, creates it when missing and
/// takes or renews it with patches (server-side apply and strategic merge).
pub const LEADER_ELECTION_RULES: &[Rule] = &[Rule {
    api_group: "coordination.k8s.io",
    resource: "leases",
    verbs: &["get", "create", "patch"],
}];

/// The rules for the namespaces the controller watches.
pub fn build_rules() -> Vec<PolicyRule> {
    BUILD_RULES.iter().copied().map(PolicyRule::from).collect()
}

/// The rules for the Lease's namespace.
pub fn leader_election_rules() -> Vec<PolicyRule> {
    LEADER_ELECTION_RULES
        .iter()
        .copied()
        .map(PolicyRule::from)
        .collect()
}

/// Every rule: [`BUILD_RULES`] then [`LEADER_ELECTION_RULES`].
pub fn rules() -> Vec<PolicyRule> {
    build_rules()
        .into_iter()
        .chain(leader_election_rules())
        .collect()
}

/// Every `(api_group, resource, verb)` some rule grants, one verb at a time.
pub fn granted() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    BUILD_RULES
        .iter()
        .chain(LEADER_ELECTION_RULES)
        .flat_map(|rule| {
            rule.verbs
                .iter()
                .map(|verb| (rule.api_group, rule.resource, *verb))
        })
}

/// Whether some rule grants `verb` on `resource` (`resource/subresource`) in `api_group`.
pub fn grants(api_group: &str, resource: &str, verb: &str) -> bool {
    BUILD_RULES
        .iter()
        .chain(LEADER_ELECTION_RULES)
        .any(|rule| rule.grants(api_group, resource, verb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rule_uses_a_wildcard_or_a_resource_name() {
        for rule in rules() {
            let groups = rule.api_groups.unwrap_or_default();
            let resources = rule.resources.unwrap_or_default();
            assert!(!groups.iter().any(|g| g.contains('*')), "{groups:?}");
            assert!(!resources.iter().any(|r| r.contains('*')), "{resources:?}");
            assert!(
                !rule.verbs.iter().any(|v| v.contains('*')),
                "{:?}",
                rule.verbs
            );
            assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        }
    }

    #[test]
    fn secrets_are_read_never_listed_or_watched() {
        assert!(grants("", "secrets", "get"));
        assert!(!grants("", "secrets", "list"));
        assert!(!grants("", "secrets", "watch"));
    }
}
