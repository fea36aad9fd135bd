//! Who may request and approve what (SPEC.md §3 and §4). Rules are tried in
//! order and the first that matches wins; no match means the request is refused.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::names::Stage;
use super::request::ActionKind;

const DEFAULT_EXPIRY: Duration = Duration::from_secs(3600);
const MAX_DURATION_SECS: u64 = 366 * 86_400;

/// One `[[policy]]` table of the configuration file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub actions: Vec<String>,
    pub stages: Vec<String>,
    pub requesters: Vec<String>,
    #[serde(default)]
    pub approvers: Vec<String>,
    #[serde(default = "one")]
    pub approvals: u32,
    #[serde(default)]
    pub self_approval: bool,
    #[serde(default)]
    pub expires_in: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone)]
struct Rule {
    actions: Vec<String>,
    stages: Vec<String>,
    requesters: Vec<String>,
    approvers: Vec<String>,
    approvals: u32,
    self_approval: bool,
    expires_in: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

/// What policy says about one request: how many approvals, by whom, until when.
/// It is stored with the request so a policy change does not alter requests in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub approvals_needed: u32,
    pub approvers: Vec<String>,
    pub self_approval: bool,
    pub expires_in_secs: u64,
}

impl Policy {
    /// Builds the policy from the file's rules, naming every problem found.
    pub fn from_rules(rules: Vec<RuleFile>) -> Result<Policy, Vec<String>> {
        let mut problems = Vec::new();
        let mut built = Vec::new();
        for (index, rule) in rules.into_iter().enumerate() {
            let at = format!("policy rule {}", index + 1);
            for action in &rule.actions {
                if !["putSecret", "deployLambda", "rollback", "*"].contains(&action.as_str()) {
                    problems.push(format!(
                        "{at}: action `{action}` is unknown (use putSecret, deployLambda, rollback or *)"
                    ));
                }
            }
            for stage in &rule.stages {
                if stage != "*" && Stage::parse(stage).is_err() {
                    problems.push(format!(
                        "{at}: stage `{stage}` is unknown (use dev, prod or *)"
                    ));
                }
            }
            for who in rule.requesters.iter().chain(&rule.approvers) {
                if who != "*" && !who.contains(':') {
                    problems.push(format!(
                        "{at}: identity `{who}` needs a platform prefix, like slack:U0123ABC"
                    ));
                }
            }
            let expires_in = match rule.expires_in.as_deref().map(parse_duration) {
                None => DEFAULT_EXPIRY,
                Some(Ok(duration)) => duration,
                Some(Err(problem)) => {
                    problems.push(format!("{at}: expires_in {problem}"));
                    DEFAULT_EXPIRY
                }
            };
            if rule.approvals > 0 && rule.approvers.is_empty() {
                problems.push(format!(
                    "{at}: approvals = {} but no approvers are named",
                    rule.approvals
                ));
            }
            built.push(Rule {
                actions: rule.actions,
                stages: rule.stages,
                requesters: rule.requesters,
                approvers: rule.approvers,
                approvals: rule.approvals,
                self_approval: rule.self_approval,
                expires_in,
            });
        }
        if problems.is_empty() {
            Ok(Policy { rules: built })
        } else {
            Err(problems)
        }
    }

    /// What policy says about `requester` asking for `action` on `stage`, or why not.
    pub fn decide(
        &self,
        action: ActionKind,
        stage: Stage,
        requester: &str,
    ) -> Result<Decision, String> {
        let rule = self.rules.iter().find(|rule| {
            matches_any(&rule.actions, action.as_str())
                && matches_any(&rule.stages, stage.as_str())
                && matches_any(&rule.requesters, requester)
        });
        let Some(rule) = rule else {
            return Err(format!(
                "no policy rule lets {requester} request {} on {stage}; ask an operator to add one to the policy file",
                action.as_str()
            ));
        };
        Ok(Decision {
            approvals_needed: rule.approvals,
            approvers: rule.approvers.clone(),
            // Never for prod, whatever the file says.
            self_approval: rule.self_approval && stage != Stage::Prod,
            expires_in_secs: rule.expires_in.as_secs(),
        })
    }
}

impl Decision {
    /// Whether `approver` may approve (or reject) a request made by `requester`.
    pub fn may_approve(&self, approver: &str, requester: &str) -> Result<(), String> {
        if !matches_any(&self.approvers, approver) {
            return Err("you are not one of the approvers for this request".to_string());
        }
        if approver == requester && !self.self_approval {
            return Err(
                "you cannot approve your own request here; another approver must".to_string(),
            );
        }
        Ok(())
    }
}

fn matches_any(patterns: &[String], value: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| pattern == "*" || pattern == value)
}

/// Parses durations like `90s`, `30m`, `1h`, `2h30m`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("`{text}` is not a duration (use e.g. 30m, 1h, 2h30m, 1d)");
    let mut total = 0u64;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(invalid()),
        };
        let amount: u64 = digits.parse().map_err(|_| invalid())?;
        total = amount
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(invalid)?;
        digits.clear();
    }
    if !digits.is_empty() || total == 0 {
        return Err(invalid());
    }
    if total > MAX_DURATION_SECS {
        return Err(format!("`{text}` is longer than a year"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(actions: &[&str], stages: &[&str], approvals: u32, self_approval: bool) -> RuleFile {
        RuleFile {
            actions: actions.iter().map(|s| s.to_string()).collect(),
            stages: stages.iter().map(|s| s.to_string()).collect(),
            requesters: vec!["*".into()],
            approvers: vec!["slack:UBOSS".into(), "slack:UALICE".into()],
            approvals,
            self_approval,
            expires_in: Some("30m".into()),
        }
    }

    #[test]
    fn first_matching_rule_wins_and_prod_never_allows_self_approval() {
        let policy = Policy::from_rules(vec![
            rule(&["deployLambda"], &["dev"], 0, false),
            rule(&["*"], &["*"], 1, true),
        ])
        .unwrap();
        let dev = policy
            .decide(ActionKind::DeployLambda, Stage::Dev, "slack:UALICE")
            .unwrap();
        assert_eq!(dev.approvals_needed, 0);
        let prod = policy
            .decide(ActionKind::DeployLambda, Stage::Prod, "slack:UALICE")
            .unwrap();
        assert_eq!(prod.approvals_needed, 1);
        assert!(!prod.self_approval);
        assert_eq!(prod.expires_in_secs, 1800);
        assert!(prod.may_approve("slack:UALICE", "slack:UALICE").is_err());
        assert!(prod.may_approve("slack:UBOSS", "slack:UALICE").is_ok());
        assert!(prod.may_approve("slack:UMALLORY", "slack:UALICE").is_err());
        let dev_secret = policy
            .decide(ActionKind::PutSecret, Stage::Dev, "slack:UALICE")
            .unwrap();
        assert!(dev_secret
            .may_approve("slack:UALICE", "slack:UALICE")
            .is_ok());
    }

    #[test]
    fn unmatched_requests_are_refused_with_the_reason() {
        let policy = Policy::from_rules(vec![rule(&["deployLambda"], &["dev"], 0, false)]).unwrap();
        let refusal = policy
            .decide(ActionKind::PutSecret, Stage::Prod, "slack:UX")
            .unwrap_err();
        assert!(refusal.contains("no policy rule lets slack:UX request putSecret on prod"));
    }

    #[test]
    fn bad_rules_are_all_reported() {
        let mut bad = rule(&["nuke"], &["qa"], 1, false);
        bad.approvers.clear();
        bad.expires_in = Some("soon".into());
        let problems = Policy::from_rules(vec![bad]).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("2h30m"), Ok(Duration::from_secs(9000)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("999999999999d").is_err());
    }
}
