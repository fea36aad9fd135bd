//! A request and its state machine (SPEC.md §4):
//! `pending → approved → published → succeeded | failed`, or
//! `pending → rejected | expired | cancelled`. The methods here only decide;
//! the store makes each transition a conditional write on `version`.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::names::{Person, RequestId, SecretName, StackName, Stage};
use super::policy::Decision;
use super::secret::Sealed;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionKind {
    #[serde(rename = "putSecret")]
    PutSecret,
    #[serde(rename = "deployLambda")]
    DeployLambda,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::PutSecret => "putSecret",
            ActionKind::DeployLambda => "deployLambda",
        }
    }
}

/// What is asked for. The secret value is sealed, and dropped once published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Action {
    #[serde(rename = "putSecret", rename_all = "camelCase")]
    PutSecret {
        name: SecretName,
        kms_key: Option<String>,
        sealed_value: Option<Sealed>,
    },
    #[serde(rename = "deployLambda", rename_all = "camelCase")]
    DeployLambda { stack: StackName },
}

impl Action {
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::PutSecret { .. } => ActionKind::PutSecret,
            Action::DeployLambda { .. } => ActionKind::DeployLambda,
        }
    }

    /// What the action is applied to, as people read it.
    pub fn target(&self, stage: Stage) -> String {
        match self {
            Action::PutSecret { name, .. } => name.to_string(),
            Action::DeployLambda { stack } => stack.for_stage(stage),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Approved,
    Published,
    Succeeded,
    Failed,
    Rejected,
    Expired,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Pending,
        Status::Approved,
        Status::Published,
        Status::Succeeded,
        Status::Failed,
        Status::Rejected,
        Status::Expired,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Published => "published",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Rejected => "rejected",
            Status::Expired => "expired",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Succeeded
                | Status::Failed
                | Status::Rejected
                | Status::Expired
                | Status::Cancelled
        )
    }
}

/// Where the request came from in chat, so replies go back there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Origin {
    pub platform: String,
    pub channel: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub platform: String,
    pub user_id: String,
    pub user_name: String,
    pub at: DateTime<Utc>,
}

/// One line of the audit trail: who moved the request where, when, from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub to: Status,
    pub by: String,
    pub platform: String,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The executor's answer, as shown on the card and in the thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub summary: String,
    pub latency_ms: u64,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub id: RequestId,
    pub action: Action,
    pub stage: Stage,
    pub requester: Person,
    pub origin: Origin,
    pub policy: Decision,
    pub status: Status,
    pub approvals: Vec<Approval>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub history: Vec<Transition>,
    pub outcome: Option<Outcome>,
    /// Bumped by every write; a write succeeds only if it saw the latest version.
    pub version: u64,
}

/// Why a click changed nothing; told to the clicker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    NotAllowed(String),
    #[error("this request is already {0}")]
    NotPending(&'static str),
    #[error("this request expired at {0}; ask for it again")]
    Expired(String),
    #[error("you already approved this request; it needs another approver")]
    AlreadyApproved,
}

impl Request {
    pub fn new(
        action: Action,
        stage: Stage,
        requester: Person,
        origin: Origin,
        policy: Decision,
        now: DateTime<Utc>,
    ) -> Request {
        let expires_in =
            Duration::seconds(i64::try_from(policy.expires_in_secs).unwrap_or(i64::MAX / 1000));
        let mut request = Request {
            id: RequestId::new(),
            action,
            stage,
            history: vec![Transition {
                to: Status::Pending,
                by: requester.identity(),
                platform: requester.platform.clone(),
                at: now,
                note: None,
            }],
            requester,
            origin,
            status: Status::Pending,
            approvals: Vec::new(),
            created_at: now,
            expires_at: now + expires_in,
            outcome: None,
            version: 0,
            policy,
        };
        if request.policy.approvals_needed == 0 {
            request.move_to(
                Status::Approved,
                "policy",
                "devops-bot",
                now,
                Some("no approval needed".into()),
            );
        }
        request
    }

    fn move_to(
        &mut self,
        to: Status,
        by: &str,
        platform: &str,
        at: DateTime<Utc>,
        note: Option<String>,
    ) {
        self.status = to;
        self.history.push(Transition {
            to,
            by: by.to_string(),
            platform: platform.to_string(),
            at,
            note,
        });
        if to != Status::Pending && to != Status::Approved {
            // The value is needed only until the request is published or abandoned.
            if let Action::PutSecret { sealed_value, .. } = &mut self.action {
                *sealed_value = None;
            }
        }
    }

    fn check_pending(&self, now: DateTime<Utc>) -> Result<(), Refusal> {
        if self.status != Status::Pending {
            return Err(Refusal::NotPending(self.status.as_str()));
        }
        if now >= self.expires_at {
            return Err(Refusal::Expired(super::events::rfc3339(self.expires_at)));
        }
        Ok(())
    }

    /// Records `approver`'s approval; returns whether the request is now approved.
    pub fn approve(&mut self, approver: &Person, now: DateTime<Utc>) -> Result<bool, Refusal> {
        self.check_pending(now)?;
        self.policy
            .may_approve(&approver.identity(), &self.requester.identity())
            .map_err(Refusal::NotAllowed)?;
        if self
            .approvals
            .iter()
            .any(|a| a.platform == approver.platform && a.user_id == approver.user_id)
        {
            return Err(Refusal::AlreadyApproved);
        }
        self.approvals.push(Approval {
            platform: approver.platform.clone(),
            user_id: approver.user_id.clone(),
            user_name: approver.user_name.clone(),
            at: now,
        });
        let done = self.approvals.len() >= self.policy.approvals_needed as usize;
        if done {
            self.move_to(
                Status::Approved,
                &approver.identity(),
                &approver.platform,
                now,
                None,
            );
        }
        Ok(done)
    }

    pub fn reject(&mut self, approver: &Person, now: DateTime<Utc>) -> Result<(), Refusal> {
        self.check_pending(now)?;
        // The requester may always withdraw their own request.
        if approver.identity() == self.requester.identity() {
            self.move_to(
                Status::Cancelled,
                &approver.identity(),
                &approver.platform,
                now,
                None,
            );
            return Ok(());
        }
        self.policy
            .may_approve(&approver.identity(), &self.requester.identity())
            .map_err(Refusal::NotAllowed)?;
        self.move_to(
            Status::Rejected,
            &approver.identity(),
            &approver.platform,
            now,
            None,
        );
        Ok(())
    }

    /// Expires a pending request whose time is up; false if there is nothing to do.
    pub fn expire(&mut self, now: DateTime<Utc>) -> bool {
        if self.status != Status::Pending || now < self.expires_at {
            return false;
        }
        self.move_to(Status::Expired, "clock", "devops-bot", now, None);
        true
    }

    pub fn mark_published(&mut self, now: DateTime<Utc>) -> bool {
        if self.status != Status::Approved {
            return false;
        }
        self.move_to(Status::Published, "devops-bot", "eventbridge", now, None);
        true
    }

    /// Applies the executor's answer. The completion can overtake the
    /// `published` mark, so an approved request may complete directly.
    pub fn complete(&mut self, succeeded: bool, outcome: Outcome) -> bool {
        if !matches!(self.status, Status::Approved | Status::Published) {
            return false;
        }
        let to = if succeeded {
            Status::Succeeded
        } else {
            Status::Failed
        };
        self.move_to(to, "executor", "eventbridge", outcome.at, None);
        self.outcome = Some(outcome);
        true
    }

    /// Who moved it last to its current state (the approver, rejecter, …).
    pub fn last_transition(&self) -> Option<&Transition> {
        self.history.last()
    }
}

/// A pending prod-less deploy request by `user`, for tests across the crate.
#[cfg(test)]
pub fn sample_request(user: &str) -> Request {
    Request::new(
        Action::DeployLambda {
            stack: StackName::parse("cc-contract").unwrap(),
        },
        Stage::Dev,
        Person {
            platform: "slack".into(),
            team_id: "T1".into(),
            user_id: user.into(),
            user_name: user.into(),
        },
        Origin {
            platform: "slack".into(),
            channel: "C1".into(),
        },
        Decision {
            approvals_needed: 1,
            approvers: vec!["*".into()],
            self_approval: false,
            expires_in_secs: 3600,
        },
        Utc::now(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(id: &str) -> Person {
        Person {
            platform: "slack".into(),
            team_id: "T1".into(),
            user_id: id.into(),
            user_name: id.to_lowercase(),
        }
    }

    fn request(approvals: u32, self_approval: bool) -> Request {
        Request::new(
            Action::DeployLambda {
                stack: StackName::parse("cc-x").unwrap(),
            },
            Stage::Prod,
            person("UREQ"),
            Origin {
                platform: "slack".into(),
                channel: "C1".into(),
            },
            Decision {
                approvals_needed: approvals,
                approvers: vec!["*".into()],
                self_approval,
                expires_in_secs: 60,
            },
            Utc::now(),
        )
    }

    #[test]
    fn needs_the_configured_number_of_distinct_approvers() {
        let mut req = request(2, false);
        let now = Utc::now();
        assert_eq!(req.approve(&person("UA"), now), Ok(false));
        assert_eq!(
            req.approve(&person("UA"), now),
            Err(Refusal::AlreadyApproved)
        );
        assert!(matches!(
            req.approve(&person("UREQ"), now),
            Err(Refusal::NotAllowed(_))
        ));
        assert_eq!(req.approve(&person("UB"), now), Ok(true));
        assert_eq!(req.status, Status::Approved);
        assert_eq!(
            req.approve(&person("UC"), now),
            Err(Refusal::NotPending("approved"))
        );
    }

    #[test]
    fn no_approval_needed_means_approved_at_once() {
        assert_eq!(request(0, false).status, Status::Approved);
    }

    #[test]
    fn expired_requests_cannot_be_approved() {
        let mut req = request(1, false);
        let later = req.expires_at + Duration::seconds(1);
        assert!(matches!(
            req.approve(&person("UA"), later),
            Err(Refusal::Expired(_))
        ));
        assert!(req.expire(later));
        assert_eq!(req.status, Status::Expired);
        assert!(!req.expire(later));
    }

    #[test]
    fn completion_applies_once() {
        let mut req = request(0, false);
        let outcome = Outcome {
            summary: "ok".into(),
            latency_ms: 5,
            at: Utc::now(),
        };
        assert!(req.complete(true, outcome.clone()));
        assert!(!req.complete(true, outcome));
        assert_eq!(req.status, Status::Succeeded);
    }
}
