//! Values parsed once at the edge, so the rest of the code never re-checks them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a name, stage or id given by a person or an agent was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("secret name `{0}` is outside `/contentcraft/`: secrets must be named /contentcraft/<service>/<key>")]
    SecretOutsideNamespace(String),
    #[error("secret name `{0}` is not valid: use letters, digits and /_+=.@- after /contentcraft/ (at most 512 characters)")]
    SecretInvalid(String),
    #[error("stack name `{0}` is not valid: use letters, digits and hyphens, starting with a letter (at most 120 characters), without the stage suffix")]
    StackInvalid(String),
    #[error("stage `{0}` is not valid: use dev or prod")]
    StageInvalid(String),
    #[error("request id `{0}` is not valid: request ids are UUIDs")]
    RequestIdInvalid(String),
}

pub const SECRET_NAMESPACE: &str = "/contentcraft/";

/// A Secrets Manager name inside the `/contentcraft/` namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretName(String);

impl SecretName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let Some(rest) = raw.strip_prefix(SECRET_NAMESPACE) else {
            return Err(NameError::SecretOutsideNamespace(raw.to_string()));
        };
        let allowed = |c: char| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c);
        if rest.is_empty() || raw.len() > 512 || !rest.chars().all(allowed) || rest.contains("//") {
            return Err(NameError::SecretInvalid(raw.to_string()));
        }
        Ok(Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A CloudFormation stack name without its `-<stage>` suffix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StackName(String);

impl StackName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let mut chars = raw.chars();
        let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
        let valid = starts_with_letter
            && raw.len() <= 120
            && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if valid {
            Ok(Self(raw.to_string()))
        } else {
            Err(NameError::StackInvalid(raw.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of the deployed stack, `<stackName>-<stage>`.
    pub fn for_stage(&self, stage: Stage) -> String {
        format!("{}-{}", self.0, stage)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Dev,
    Prod,
}

impl Stage {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        match raw {
            "dev" => Ok(Stage::Dev),
            "prod" => Ok(Stage::Prod),
            other => Err(NameError::StageInvalid(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Dev => "dev",
            Stage::Prod => "prod",
        }
    }
}

/// A `devops.request` id: a UUID (v4 when the bot makes one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(uuid::Uuid);

impl RequestId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    pub fn parse(raw: &str) -> Result<Self, NameError> {
        uuid::Uuid::parse_str(raw.trim())
            .map(Self)
            .map_err(|_| NameError::RequestIdInvalid(raw.to_string()))
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

macro_rules! string_conversions {
    ($($ty:ty),*) => {$(
        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(&raw)
            }
        }
        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.to_string()
            }
        }
    )*};
}
string_conversions!(SecretName, StackName, RequestId);

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for StackName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Who did something, on which platform: `slack:U0123ABC`, `api:<token>`, ….
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Person {
    pub platform: String,
    pub team_id: String,
    pub user_id: String,
    pub user_name: String,
}

impl Person {
    /// The identity used by policy rules, e.g. `slack:U0123ABC`.
    pub fn identity(&self) -> String {
        format!("{}:{}", self.platform, self.user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn secret_names_must_live_under_contentcraft() {
        assert!(SecretName::parse("/contentcraft/svc/api_key").is_ok());
        assert_eq!(
            SecretName::parse("/other/x"),
            Err(NameError::SecretOutsideNamespace("/other/x".into()))
        );
        assert!(matches!(
            SecretName::parse("/contentcraft/"),
            Err(NameError::SecretInvalid(_))
        ));
        assert!(matches!(
            SecretName::parse("/contentcraft/a b"),
            Err(NameError::SecretInvalid(_))
        ));
    }

    #[test]
    fn stack_names_get_the_stage_suffix() {
        let stack = StackName::parse("cc-agent-doc-registry").unwrap();
        assert_eq!(stack.for_stage(Stage::Prod), "cc-agent-doc-registry-prod");
        assert!(StackName::parse("1abc").is_err());
        assert!(StackName::parse("a_b").is_err());
        assert!(StackName::parse("").is_err());
    }

    #[test]
    fn stages_and_request_ids_parse_strictly() {
        assert_eq!(Stage::parse("prod"), Ok(Stage::Prod));
        assert!(Stage::parse("Prod").is_err());
        assert!(RequestId::parse("not-a-uuid").is_err());
        let id = RequestId::new();
        assert_eq!(RequestId::parse(&id.to_string()), Ok(id));
    }

    /// Names as people type them and as forgers try them.
    fn raw_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,40}",
            "/contentcraft/[a-zA-Z0-9/_+=.@ <>*-]{0,40}",
            "[a-zA-Z0-9_ -]{0,130}",
            "/contentcraft/[a-z]{500,520}",
            Just("/contentcraft/../etc/passwd".to_string()),
            Just("/ContentCraft/x".to_string()),
            Just(" /contentcraft/x".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn accepted_names_keep_their_promises(raw in raw_name()) {
            if let Ok(name) = SecretName::parse(&raw) {
                let rest = name.as_str().strip_prefix(SECRET_NAMESPACE).unwrap();
                prop_assert!(!rest.is_empty() && name.as_str().len() <= 512);
                prop_assert!(rest.chars().all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c)));
                prop_assert!(!rest.contains("//"));
            }
            if let Ok(stack) = StackName::parse(&raw) {
                prop_assert!(stack.as_str().len() <= 120);
                prop_assert!(stack.as_str().starts_with(|c: char| c.is_ascii_alphabetic()));
                prop_assert!(stack.as_str().chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
            }
            if let Ok(stage) = Stage::parse(&raw) {
                prop_assert_eq!(stage.as_str(), raw.as_str());
            }
            if let Ok(id) = RequestId::parse(&raw) {
                prop_assert_eq!(RequestId::parse(&id.to_string()), Ok(id));
            }
        }

        /// Stored requests and events are read through the same parsers, so
        /// no name the edge refuses gets in through JSON.
        #[test]
        fn json_is_held_to_the_same_rules(raw in raw_name()) {
            let value = serde_json::Value::String(raw.clone());
            prop_assert_eq!(serde_json::from_value::<SecretName>(value.clone()).is_ok(), SecretName::parse(&raw).is_ok());
            prop_assert_eq!(serde_json::from_value::<StackName>(value.clone()).is_ok(), StackName::parse(&raw).is_ok());
            prop_assert_eq!(serde_json::from_value::<Stage>(value.clone()).is_ok(), Stage::parse(&raw).is_ok());
            prop_assert_eq!(serde_json::from_value::<RequestId>(value).is_ok(), RequestId::parse(&raw).is_ok());
        }
    }
}
