//! [`Policy`]: which callers, named by the identity in their certificates, may call which of a
//! node's services and methods.
//!
//! A policy is a set of rules `<target>=<callers>`. The target is a service (`greeter`), one
//! method of a service (`greeter.greet`), or `*`: every service of the node that has no rule of
//! its own. The callers are node names (`--name` of the calling node, proven by the URI
//! `meshrpc://<cluster>/<name>` in its certificate), or `*` for any member of the cluster.
//!
//! A call is decided by the most specific rule: its method's, else its service's, else `*`'s.
//! A service no rule covers stays open to every member of the cluster, as without a policy; so
//! adding a rule for `billing` closes `billing` only. Write `*=<callers>` to close the rest too.
//! The built-in service `meshrpc.node` (ping, describe, members, stats, which the gateway and
//! `meshctl` call) is covered only by rules that name it, never by `*`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use crate::node_service::NODE_SERVICE;
use crate::server::Caller;
use crate::spec::{MethodSpec, ServiceSpec};
use crate::tls::is_identity_name;

/// The target of a rule that covers every service without a rule of its own.
pub const EVERY_SERVICE: &str = "*";

/// Who a rule lets call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callers {
    /// Any member of the cluster (`*`), whether or not its certificate names it.
    Any,
    /// The nodes of these names, proven by their certificates.
    Named(BTreeSet<String>),
}

impl fmt::Display for Callers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Callers::Any => f.write_str("*"),
            Callers::Named(names) => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

/// Which callers may call which of this node's services and methods; see the
/// [module documentation](self) for how rules apply. The default policy has no rules and
/// allows every member of the cluster.
///
/// ```
/// use meshrpc::server::authorize::Policy;
///
/// let parsed: Policy = "greeter=concierge,mesh-api; billing.charge=payments".parse()?;
/// let built = Policy::new()
///     .allow("greeter", ["concierge", "mesh-api"])?
///     .allow("billing.charge", ["payments"])?;
/// assert_eq!(parsed, built);
/// # Ok::<(), meshrpc::server::authorize::PolicyError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    rules: BTreeMap<String, Callers>,
}

/// Why a policy could not be built, parsed or applied; each message names the rule and says
/// what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A rule has no `=`.
    #[error(
        "rule `{rule}` has no `=`: write `<service>[.<method>]=<caller>[,<caller>...]`, \
         e.g. `greeter=concierge,mesh-api`, and separate rules with `;`"
    )]
    MissingEquals {
        /// The rule as written.
        rule: String,
    },
    /// A rule's target is not a service name, a `service.method` name or `*`.
    #[error(
        "rule `{rule}`: `{target}` is not a service or method: write a service (`greeter`), \
         one of its methods (`greeter.greet`), or `*` for every service without a rule of its own"
    )]
    BadTarget {
        /// The rule as written.
        rule: String,
        /// The target as written.
        target: String,
    },
    /// A rule names no caller.
    #[error(
        "rule `{rule}` names no caller: write `{target}=<caller>[,<caller>...]` with the callers' \
         node names, or `{target}=*` to allow any member of the cluster"
    )]
    NoCallers {
        /// The rule as written.
        rule: String,
        /// The rule's target.
        target: String,
    },
    /// A caller is not a node name.
    #[error(
        "rule `{rule}`: `{caller}` is not a node name: write the caller's --name (1 to 128 ASCII \
         letters, digits, `-`, `_` and `.`), or `*` for any member of the cluster"
    )]
    BadCaller {
        /// The rule as written.
        rule: String,
        /// The caller as written.
        caller: String,
    },
    /// Two rules have the same target.
    #[error(
        "there are two rules for `{target}`: merge them into one, e.g. `{target}=<caller>,<caller>`"
    )]
    Duplicate {
        /// The target ruled twice.
        target: String,
    },
    /// A rule names a service or method this node does not serve (see [`Policy::check`]).
    #[error(
        "rule for `{target}`: this node serves no such {what}; it serves {served}. Fix the name \
         or drop the rule (a misspelt rule would leave the service it meant open)"
    )]
    UnknownTarget {
        /// The rule's target.
        target: String,
        /// `service` or `method`.
        what: &'static str,
        /// What the node serves instead: its services, or the service's methods.
        served: String,
    },
}

impl Policy {
    /// A policy without rules: every member of the cluster may call everything.
    pub fn new() -> Policy {
        Policy::default()
    }

    /// Adds a rule: `callers` (node names, or `*` for any member) may call `target` (a service,
    /// `service.method`, or `*` for every service without a rule of its own). Allowing the same
    /// target again adds callers to its rule.
    pub fn allow<I, S>(mut self, target: &str, callers: I) -> Result<Policy, PolicyError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let callers: Vec<String> = callers
            .into_iter()
            .map(|caller| caller.as_ref().to_owned())
            .collect();
        let rule = format!("{target}={}", callers.join(","));
        check_target(target, &rule)?;
        let callers = parse_callers(&callers, target, &rule)?;
        let merged = match (self.rules.remove(target), callers) {
            (Some(Callers::Any), _) | (_, Callers::Any) => Callers::Any,
            (Some(Callers::Named(mut old)), Callers::Named(new)) => {
                old.extend(new);
                Callers::Named(old)
            }
            (None, callers) => callers,
        };
        self.rules.insert(target.to_owned(), merged);
        Ok(self)
    }

    /// Whether the policy has no rules (and so allows every member everything).
    pub fn is_open(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule that decides calls of `method`, as (target, callers): the method's, else its
    /// service's, else `*`'s (never for `meshrpc.node`). `None`: no rule, any member may call.
    pub fn rule_for(&self, method: &MethodSpec) -> Option<(&str, &Callers)> {
        if self.rules.is_empty() {
            // The common case costs no allocation.
            return None;
        }
        let qualified = format!("{}.{}", method.service, method.name);
        let wildcard = (method.service != NODE_SERVICE).then_some(EVERY_SERVICE);
        [Some(qualified.as_str()), Some(method.service), wildcard]
            .into_iter()
            .flatten()
            .find_map(|target| self.rules.get_key_value(target))
            .map(|(target, callers)| (target.as_str(), callers))
    }

    /// Decides whether `caller` may call `method`: `Ok(())`, or the refusal to answer with.
    pub fn decide(&self, caller: &Caller, method: &MethodSpec) -> Result<(), Refusal> {
        let Some((_, Callers::Named(names))) = self.rule_for(method) else {
            return Ok(());
        };
        match &caller.identity {
            Some(identity) if names.contains(&identity.name) => Ok(()),
            _ => Err(Refusal {
                caller: caller.clone(),
                service: method.service,
                method: method.name,
                allowed: names.iter().cloned().collect(),
            }),
        }
    }

    /// Checks that every rule names a service (or a method of a service) among `services`,
    /// which should be everything the node serves (`meshrpc.node` is always known). Call it
    /// when the node starts: a misspelt rule would otherwise leave the service it meant open.
    pub fn check<'a>(
        &self,
        services: impl IntoIterator<Item = &'a ServiceSpec>,
    ) -> Result<(), PolicyError> {
        let services: Vec<&ServiceSpec> = services
            .into_iter()
            .chain(std::iter::once(&crate::node_service::NODE_SPEC))
            .collect();
        for target in self.rules.keys() {
            if target == EVERY_SERVICE || services.iter().any(|spec| spec.name == *target) {
                continue;
            }
            let owner = services.iter().find(|spec| {
                target
                    .strip_prefix(spec.name)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some()
            });
            let error = match owner {
                Some(spec) => {
                    let method = &target[spec.name.len() + 1..];
                    if spec.methods.iter().any(|known| known.name == method) {
                        continue;
                    }
                    let methods: Vec<String> = spec
                        .methods
                        .iter()
                        .map(|known| format!("`{}.{}`", spec.name, known.name))
                        .collect();
                    PolicyError::UnknownTarget {
                        target: target.clone(),
                        what: "method",
                        served: methods.join(", "),
                    }
                }
                None => {
                    let names: Vec<String> = services
                        .iter()
                        .map(|spec| format!("`{}`", spec.name))
                        .collect();
                    PolicyError::UnknownTarget {
                        target: target.clone(),
                        what: "service",
                        served: names.join(", "),
                    }
                }
            };
            return Err(error);
        }
        Ok(())
    }
}

impl FromStr for Policy {
    type Err = PolicyError;

    /// Parses rules separated by `;`, each `<target>=<caller>[,<caller>...]`; blanks around
    /// names are ignored and an empty text is the open policy. Two rules for one target are an
    /// error (one of them is probably a typo).
    fn from_str(text: &str) -> Result<Policy, PolicyError> {
        let mut rules = BTreeMap::new();
        for rule in text
            .split(';')
            .map(str::trim)
            .filter(|rule| !rule.is_empty())
        {
            let (target, callers) =
                rule.split_once('=')
                    .ok_or_else(|| PolicyError::MissingEquals {
                        rule: rule.to_owned(),
                    })?;
            let target = target.trim();
            check_target(target, rule)?;
            let callers = parse_callers(callers.split(','), target, rule)?;
            if rules.insert(target.to_owned(), callers).is_some() {
                return Err(PolicyError::Duplicate {
                    target: target.to_owned(),
                });
            }
        }
        Ok(Policy { rules })
    }
}

impl fmt::Display for Policy {
    /// The policy in the syntax [`Policy::from_str`] reads (empty for the open policy).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules: Vec<String> = self
            .rules
            .iter()
            .map(|(target, callers)| format!("{target}={callers}"))
            .collect();
        f.write_str(&rules.join("; "))
    }
}

/// A call the policy refused: who called what, and who may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The refused caller.
    pub caller: Caller,
    /// The service called.
    pub service: &'static str,
    /// The method called.
    pub method: &'static str,
    /// The callers the deciding rule names.
    pub allowed: Vec<String>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let allowed = self.allowed.join(", ");
        match &self.caller.identity {
            Some(_) => write!(
                f,
                "{} may not call `{}.{}`; this node allows it for: {allowed}",
                self.caller, self.service, self.method
            ),
            None => write!(
                f,
                "{} may not call `{}.{}`; this node allows it for: {allowed}, and the caller's \
                 certificate lacks the URI `meshrpc://<cluster>/<name>` that proves its name",
                self.caller.addr, self.service, self.method
            ),
        }
    }
}

fn check_target(target: &str, rule: &str) -> Result<(), PolicyError> {
    let is_name = |segment: &str| {
        !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    if target == EVERY_SERVICE || target.split('.').all(is_name) {
        Ok(())
    } else {
        Err(PolicyError::BadTarget {
            rule: rule.to_owned(),
            target: target.to_owned(),
        })
    }
}

fn parse_callers<I, S>(callers: I, target: &str, rule: &str) -> Result<Callers, PolicyError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut names = BTreeSet::new();
    let mut any = false;
    for caller in callers {
        let caller = caller.as_ref().trim();
        if caller.is_empty() {
            continue;
        }
        if caller == "*" {
            any = true;
        } else if is_identity_name(caller) {
            names.insert(caller.to_owned());
        } else {
            return Err(PolicyError::BadCaller {
                rule: rule.to_owned(),
                caller: caller.to_owned(),
            });
        }
    }
    if any {
        Ok(Callers::Any)
    } else if names.is_empty() {
        Err(PolicyError::NoCallers {
            rule: rule.to_owned(),
            target: target.to_owned(),
        })
    } else {
        Ok(Callers::Named(names))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::server::PeerIdentity;
    use crate::spec::MethodKind;

    const fn method(service: &'static str, name: &'static str, index: usize) -> MethodSpec {
        MethodSpec {
            service,
            name,
            doc: "",
            idempotent: false,
            timeout: None,
            attempt_timeout: None,
            hedge_after: None,
            params: &[],
            result_field: "value",
            result_type: "u64",
            kind: MethodKind::Unary,
            index,
        }
    }

    static BILLING: ServiceSpec = ServiceSpec {
        name: "billing",
        doc: "",
        methods: &[
            method("billing", "charge", 0),
            method("billing", "refund", 1),
        ],
        schema_hash: 0,
        manifest: "",
        descriptor: "{}",
        use_schemas: &[],
    };
    static GREETER: ServiceSpec = ServiceSpec {
        name: "greeter",
        doc: "",
        methods: &[method("greeter", "greet", 0)],
        schema_hash: 0,
        manifest: "",
        descriptor: "{}",
        use_schemas: &[],
    };
    static PING: MethodSpec = method(NODE_SERVICE, "ping", 0);

    fn caller(name: Option<&str>) -> Caller {
        Caller {
            addr: SocketAddr::from(([127, 0, 0, 1], 4000)),
            identity: name.map(|name| {
                std::sync::Arc::new(PeerIdentity {
                    cluster: "test".to_owned(),
                    name: name.to_owned(),
                })
            }),
        }
    }

    fn parse(text: &str) -> Policy {
        text.parse()
            .unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    fn error(text: &str) -> String {
        text.parse::<Policy>().expect_err(text).to_string()
    }

    fn allowed(policy: &Policy, name: Option<&str>, method: &MethodSpec) -> bool {
        policy.decide(&caller(name), method).is_ok()
    }

    #[test]
    fn rules_parse_with_blanks_and_empty_rules_and_print_back() {
        let policy =
            parse(" greeter = concierge , mesh-api ;; billing.charge=payments; numbers=* ;");
        assert_eq!(
            policy.to_string(),
            "billing.charge=payments; greeter=concierge,mesh-api; numbers=*"
        );
        assert_eq!(parse(&policy.to_string()), policy);
        assert!(parse("").is_open());
        assert!(parse(" ; ").is_open());
        assert!(!policy.is_open());
    }

    #[test]
    fn the_builder_makes_the_same_policy_and_merges_callers() {
        let built = Policy::new()
            .allow("greeter", ["concierge"])
            .and_then(|policy| policy.allow("greeter", ["mesh-api"]))
            .and_then(|policy| policy.allow("numbers", ["*"]))
            .expect("valid rules");
        assert_eq!(built, parse("greeter=concierge,mesh-api; numbers=*"));
        let error = Policy::new()
            .allow("greeter", ["a b"])
            .expect_err("bad caller");
        assert_eq!(
            error.to_string(),
            "rule `greeter=a b`: `a b` is not a node name: write the caller's --name (1 to 128 \
             ASCII letters, digits, `-`, `_` and `.`), or `*` for any member of the cluster"
        );
    }

    #[test]
    fn a_rule_without_equals_says_how_to_write_one() {
        assert_eq!(
            error("greeter=concierge; billing payments"),
            "rule `billing payments` has no `=`: write `<service>[.<method>]=<caller>[,<caller>...]`, \
             e.g. `greeter=concierge,mesh-api`, and separate rules with `;`"
        );
    }

    #[test]
    fn a_bad_target_is_named_with_the_forms_a_target_takes() {
        for bad in [
            "greeter/greet=a",
            "=a",
            "greeter..greet=a",
            "greet er=a",
            "g*=a",
        ] {
            let message = error(bad);
            assert!(message.starts_with(&format!("rule `{bad}`: ")), "{message}");
            assert!(message.contains("is not a service or method: write a service (`greeter`), one of its methods (`greeter.greet`), or `*`"), "{message}");
        }
    }

    #[test]
    fn a_rule_without_callers_says_how_to_allow_everyone() {
        assert_eq!(
            error("billing= , "),
            "rule `billing= ,` names no caller: write `billing=<caller>[,<caller>...]` with the \
             callers' node names, or `billing=*` to allow any member of the cluster"
        );
    }

    #[test]
    fn a_caller_that_is_not_a_node_name_is_named() {
        assert_eq!(
            error("billing=payments,pay ments"),
            "rule `billing=payments,pay ments`: `pay ments` is not a node name: write the caller's \
             --name (1 to 128 ASCII letters, digits, `-`, `_` and `.`), or `*` for any member of \
             the cluster"
        );
        assert!(
            error("billing=meshrpc://test/payments")
                .contains("`meshrpc://test/payments` is not a node name")
        );
    }

    #[test]
    fn two_rules_for_one_target_must_be_merged() {
        assert_eq!(
            error("greeter=a; billing=b; greeter=c"),
            "there are two rules for `greeter`: merge them into one, e.g. `greeter=<caller>,<caller>`"
        );
    }

    #[test]
    fn without_rules_every_member_may_call_everything() {
        let policy = Policy::new();
        assert!(allowed(&policy, Some("anyone"), &BILLING.methods[0]));
        assert!(allowed(&policy, None, &BILLING.methods[0]));
    }

    #[test]
    fn a_service_rule_closes_that_service_only() {
        let policy = parse("billing=payments");
        assert!(allowed(&policy, Some("payments"), &BILLING.methods[0]));
        assert!(allowed(&policy, Some("payments"), &BILLING.methods[1]));
        assert!(!allowed(&policy, Some("concierge"), &BILLING.methods[0]));
        assert!(!allowed(&policy, None, &BILLING.methods[0]));
        assert!(allowed(&policy, Some("concierge"), &GREETER.methods[0]));
        assert!(allowed(&policy, None, &PING));
    }

    #[test]
    fn a_method_rule_wins_over_its_service_rule() {
        let policy = parse("billing=payments; billing.refund=support");
        assert!(allowed(&policy, Some("support"), &BILLING.methods[1]));
        assert!(!allowed(&policy, Some("payments"), &BILLING.methods[1]));
        assert!(allowed(&policy, Some("payments"), &BILLING.methods[0]));
        assert!(!allowed(&policy, Some("support"), &BILLING.methods[0]));
        let open_method = parse("billing=payments; billing.refund=*");
        assert!(allowed(&open_method, None, &BILLING.methods[1]));
    }

    #[test]
    fn the_wildcard_rule_covers_services_without_a_rule_but_not_the_node_service() {
        let policy = parse("*=mesh-api; billing=payments");
        assert!(allowed(&policy, Some("mesh-api"), &GREETER.methods[0]));
        assert!(!allowed(&policy, Some("payments"), &GREETER.methods[0]));
        assert!(allowed(&policy, Some("payments"), &BILLING.methods[0]));
        assert!(!allowed(&policy, Some("mesh-api"), &BILLING.methods[0]));
        assert!(allowed(&policy, Some("anyone"), &PING));
        assert!(allowed(&policy, None, &PING));
    }

    #[test]
    fn the_node_service_is_closed_only_by_a_rule_that_names_it() {
        let policy = parse("meshrpc.node=mesh-api");
        assert!(allowed(&policy, Some("mesh-api"), &PING));
        assert!(!allowed(&policy, Some("concierge"), &PING));
        let ping_only = parse("meshrpc.node.ping=mesh-api");
        assert!(!allowed(&ping_only, Some("concierge"), &PING));
    }

    #[test]
    fn a_refusal_names_the_caller_the_method_and_who_may_call_it() {
        let policy = parse("billing.charge=payments,ledger");
        let refusal = policy
            .decide(&caller(Some("concierge")), &BILLING.methods[0])
            .expect_err("refused");
        assert_eq!(
            refusal.to_string(),
            "concierge (127.0.0.1:4000) may not call `billing.charge`; this node allows it for: \
             ledger, payments"
        );
        let anonymous = policy
            .decide(&caller(None), &BILLING.methods[0])
            .expect_err("refused");
        assert_eq!(
            anonymous.to_string(),
            "127.0.0.1:4000 may not call `billing.charge`; this node allows it for: ledger, \
             payments, and the caller's certificate lacks the URI `meshrpc://<cluster>/<name>` \
             that proves its name"
        );
    }

    #[test]
    fn check_accepts_served_targets_and_names_what_is_served_instead_of_a_typo() {
        let served = [&BILLING, &GREETER];
        parse("*=a; billing=a; billing.refund=b; greeter.greet=c; meshrpc.node.stats=d")
            .check(served)
            .expect("all served");
        assert_eq!(
            parse("greter=a")
                .check(served)
                .expect_err("typo")
                .to_string(),
            "rule for `greter`: this node serves no such service; it serves `billing`, `greeter`, \
             `meshrpc.node`. Fix the name or drop the rule (a misspelt rule would leave the \
             service it meant open)"
        );
        assert_eq!(
            parse("billing.chrage=a")
                .check(served)
                .expect_err("typo")
                .to_string(),
            "rule for `billing.chrage`: this node serves no such method; it serves \
             `billing.charge`, `billing.refund`. Fix the name or drop the rule (a misspelt rule \
             would leave the service it meant open)"
        );
    }
}
