//! Configuration from the environment and the optional TOML file. The
//! environment is read through a lookup function, so tests pass a map and
//! never touch the process environment. Every problem is reported at once.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::backends::aws::{AwsSettings, ServiceEndpoints, StaticKeys};
use crate::domain::names::Stage;
use crate::domain::policy::{Policy, RuleFile};

const DEFAULT_FILE: &str = include_str!("../devops-bot.toml");
pub const DEFAULT_SLACK_API_URL: &str = "https://slack.com/api";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Aws(Box<AwsSettings>),
}

#[derive(Debug, Clone)]
pub struct SlackConfig {
    pub signing_secret: Option<String>,
    pub bot_token: Option<String>,
    pub api_url: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub backend: Backend,
    pub stage: Stage,
    pub data_dir: PathBuf,
    pub slack: SlackConfig,
    pub events_api_key: Option<String>,
    pub policy: Policy,
    pub embedded_stacks: Vec<String>,
    pub cards_dir: Option<PathBuf>,
    /// Where the file part came from, for the start-up summary.
    pub config_source: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    stage: Option<String>,
    #[serde(default)]
    policy: Vec<RuleFile>,
    #[serde(default)]
    embedded: EmbeddedFile,
    cards_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddedFile {
    #[serde(default)]
    stacks: Vec<String>,
}

/// Everything wrong with the configuration, one line per problem.
#[derive(Debug, thiserror::Error)]
#[error("the configuration has {} problem(s):\n  - {}", .0.len(), .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let var = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let mut problems = Vec::new();

        let (file_text, config_source) = match var("DEVOPSBOT_CONFIG") {
            Some(path) => match std::fs::read_to_string(&path) {
                Ok(text) => (text, path),
                Err(error) => {
                    problems.push(format!("DEVOPSBOT_CONFIG: cannot read {path}: {error}"));
                    (DEFAULT_FILE.to_string(), "built-in default".to_string())
                }
            },
            None => (
                DEFAULT_FILE.to_string(),
                "built-in default (devops-bot.toml)".to_string(),
            ),
        };
        let file = match toml::from_str::<FileConfig>(&file_text) {
            Ok(file) => Some(file),
            Err(error) => {
                problems.push(format!(
                    "DEVOPSBOT_CONFIG ({config_source}): {}",
                    error.message()
                ));
                None
            }
        };
        let (file_stage, rules, stacks, cards_dir) = match file {
            Some(file) => (
                file.stage,
                file.policy,
                file.embedded.stacks,
                file.cards_dir,
            ),
            None => (None, Vec::new(), Vec::new(), None),
        };
        let policy = Policy::from_rules(rules).unwrap_or_else(|rule_problems| {
            problems.extend(
                rule_problems
                    .into_iter()
                    .map(|p| format!("DEVOPSBOT_CONFIG ({config_source}): {p}")),
            );
            Policy::default()
        });

        let listen = var("DEVOPSBOT_LISTEN").unwrap_or_else(|| "0.0.0.0:3000".into());
        let listen = listen.parse().unwrap_or_else(|_| {
            problems.push(format!(
                "DEVOPSBOT_LISTEN: `{listen}` is not an address like 0.0.0.0:3000"
            ));
            SocketAddr::from(([0, 0, 0, 0], 3000))
        });

        let backend = match var("DEVOPSBOT_BACKEND").as_deref() {
            None | Some("embedded") => Backend::Embedded,
            Some("aws") => {
                if var("DEVOPSBOT_EVENTS_API_KEY").is_none() {
                    problems.push("DEVOPSBOT_EVENTS_API_KEY: required with DEVOPSBOT_BACKEND=aws, where EventBridge delivers devops.request and devops.completed to POST /events".into());
                }
                Backend::Aws(Box::new(aws_settings_into(&lookup, &mut problems)))
            }
            Some(other) => {
                problems.push(format!(
                    "DEVOPSBOT_BACKEND: `{other}` is unknown; use `embedded` or `aws`"
                ));
                Backend::Embedded
            }
        };

        let (stage_source, stage_text) = match var("DEVOPSBOT_STAGE") {
            Some(stage) => ("DEVOPSBOT_STAGE", stage),
            None => (
                "stage in the configuration file",
                file_stage.unwrap_or_else(|| "dev".into()),
            ),
        };
        let stage = Stage::parse(&stage_text).unwrap_or_else(|error| {
            problems.push(format!("{stage_source}: {error}"));
            Stage::Dev
        });

        let api_url = var("SLACK_API_URL").unwrap_or_else(|| DEFAULT_SLACK_API_URL.into());
        if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
            problems.push(format!(
                "SLACK_API_URL: `{api_url}` must be an http(s) URL ending in /api"
            ));
        }
        let bot_token = var("SLACK_BOT_TOKEN");
        if bot_token
            .as_deref()
            .is_some_and(|token| !token.starts_with("xoxb-"))
        {
            problems.push("SLACK_BOT_TOKEN: a bot token starts with `xoxb-`".into());
        }
        let events_api_key = var("DEVOPSBOT_EVENTS_API_KEY");
        if events_api_key.as_deref().is_some_and(|key| key.len() < 16) {
            problems.push("DEVOPSBOT_EVENTS_API_KEY: use at least 16 characters".into());
        }

        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(Config {
            listen,
            backend,
            stage,
            data_dir: var("DEVOPSBOT_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("data")),
            slack: SlackConfig {
                signing_secret: var("SLACK_SIGNING_SECRET"),
                bot_token,
                api_url,
            },
            events_api_key,
            policy,
            embedded_stacks: stacks,
            cards_dir: cards_dir.or_else(|| Some(PathBuf::from("cards"))),
            config_source,
        })
    }

    /// The `aws` backend's settings alone, for `devops-bot init-aws`.
    pub fn aws_from_env(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<AwsSettings, ConfigError> {
        let mut problems = Vec::new();
        let settings = aws_settings_into(&lookup, &mut problems);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError(problems))
        }
    }

    /// What is not configured yet, and what that means, for the start-up summary.
    pub fn unconfigured(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.slack.signing_secret.is_none() {
            missing.push("SLACK_SIGNING_SECRET (Slack routes answer 503)");
        }
        if self.slack.bot_token.is_none() {
            missing.push("SLACK_BOT_TOKEN (cards and replies wait in the outbox)");
        }
        if self.events_api_key.is_none() {
            missing.push("DEVOPSBOT_EVENTS_API_KEY (POST /events answers 503)");
        }
        missing
    }
}

/// Reads the AWS SDK's own variables and the bot's table, bus and key names.
fn aws_settings_into(
    lookup: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> AwsSettings {
    let var = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
    let static_keys = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key_id), Some(secret_access_key)) => Some(StaticKeys {
            access_key_id,
            secret_access_key,
            session_token: var("AWS_SESSION_TOKEN"),
        }),
        (None, None) => None,
        (Some(_), None) => {
            problems.push("AWS_SECRET_ACCESS_KEY: required when AWS_ACCESS_KEY_ID is set".into());
            None
        }
        (None, Some(_)) => {
            problems.push("AWS_ACCESS_KEY_ID: required when AWS_SECRET_ACCESS_KEY is set".into());
            None
        }
    };
    let mut endpoint = |name: &str| {
        let url = var(name)?;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            problems.push(format!("{name}: `{url}` must be an http(s) URL"));
        }
        Some(url)
    };
    let endpoint_url = endpoint("AWS_ENDPOINT_URL");
    let service_endpoints = ServiceEndpoints {
        dynamodb: endpoint("AWS_ENDPOINT_URL_DYNAMODB"),
        eventbridge: endpoint("AWS_ENDPOINT_URL_EVENTBRIDGE"),
        secrets_manager: endpoint("AWS_ENDPOINT_URL_SECRETS_MANAGER"),
        cloudformation: endpoint("AWS_ENDPOINT_URL_CLOUDFORMATION"),
    };
    let table = var("DEVOPSBOT_TABLE").unwrap_or_else(|| "devops-bot".into());
    let valid_table = (3..=255).contains(&table.len())
        && table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid_table {
        problems.push(format!(
            "DEVOPSBOT_TABLE: `{table}` is not a DynamoDB table name (3-255 of a-z, A-Z, 0-9, _ - .)"
        ));
    }
    AwsSettings {
        region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
        endpoint_url,
        service_endpoints,
        static_keys,
        profile: var("AWS_PROFILE"),
        table,
        event_bus: var("DEVOPSBOT_EVENT_BUS").unwrap_or_else(|| "default".into()),
        sealing_key_secret: var("DEVOPSBOT_SEALING_KEY_SECRET")
            .unwrap_or_else(|| "devops-bot/sealing-key".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_env(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_start_the_embedded_bot_with_the_shipped_policy() {
        let config = from(&[]).unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:3000");
        assert_eq!(config.backend, Backend::Embedded);
        assert_eq!(config.stage, Stage::Dev);
        assert_eq!(config.embedded_stacks.len(), 2);
        assert_eq!(config.unconfigured().len(), 3);
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let error = from(&[
            ("DEVOPSBOT_LISTEN", "nowhere"),
            ("DEVOPSBOT_BACKEND", "cloud"),
            ("DEVOPSBOT_STAGE", "qa"),
            ("SLACK_BOT_TOKEN", "abc"),
            ("SLACK_API_URL", "slack.com"),
            ("DEVOPSBOT_EVENTS_API_KEY", "short"),
            ("DEVOPSBOT_CONFIG", "/nonexistent/devops-bot.toml"),
        ])
        .unwrap_err();
        let text = error.to_string();
        for name in [
            "DEVOPSBOT_LISTEN",
            "DEVOPSBOT_BACKEND",
            "DEVOPSBOT_STAGE",
            "SLACK_BOT_TOKEN",
            "SLACK_API_URL",
            "DEVOPSBOT_EVENTS_API_KEY",
            "DEVOPSBOT_CONFIG",
        ] {
            assert!(text.contains(name), "{name} missing from: {text}");
        }
        assert_eq!(error.0.len(), 7);
    }

    #[test]
    fn the_aws_backend_reads_the_sdk_variables_and_needs_the_events_key() {
        let error = from(&[
            ("DEVOPSBOT_BACKEND", "aws"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("DEVOPSBOT_TABLE", "no spaces"),
            ("AWS_ENDPOINT_URL_DYNAMODB", "localhost:8000"),
        ])
        .unwrap_err();
        let text = error.to_string();
        for name in [
            "DEVOPSBOT_EVENTS_API_KEY",
            "AWS_SECRET_ACCESS_KEY",
            "DEVOPSBOT_TABLE",
            "AWS_ENDPOINT_URL_DYNAMODB",
        ] {
            assert!(text.contains(name), "{name} missing from: {text}");
        }
        let config = from(&[
            ("DEVOPSBOT_BACKEND", "aws"),
            ("DEVOPSBOT_EVENTS_API_KEY", "0123456789abcdef"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
            ("AWS_ENDPOINT_URL_EVENTBRIDGE", "http://127.0.0.1:5001"),
        ])
        .unwrap();
        let Backend::Aws(settings) = config.backend else {
            panic!("expected the aws backend");
        };
        assert_eq!(settings.region.as_deref(), Some("eu-west-1"));
        assert_eq!(settings.table, "devops-bot");
        assert_eq!(settings.event_bus, "default");
        assert!(settings.static_keys.is_none());
        assert_eq!(
            settings.service_endpoints.eventbridge.as_deref(),
            Some("http://127.0.0.1:5001")
        );
        assert_eq!(settings.service_endpoints.dynamodb, None);
    }

    #[test]
    fn bad_policy_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bot.toml");
        std::fs::write(&path, "[[policy]]\nactions = [\"nuke\"]\nstages = [\"*\"]\nrequesters = [\"*\"]\napprovals = 0\n").unwrap();
        let error = from(&[("DEVOPSBOT_CONFIG", path.to_str().unwrap())]).unwrap_err();
        assert!(
            error.to_string().contains("action `nuke` is unknown"),
            "{error}"
        );
        std::fs::write(&path, "colour = \"blue\"\n").unwrap();
        let error = from(&[("DEVOPSBOT_CONFIG", path.to_str().unwrap())]).unwrap_err();
        assert!(error.to_string().contains("colour"), "{error}");
    }
}
