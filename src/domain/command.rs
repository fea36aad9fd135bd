//! The chat grammar. The enum below is the single definition: its doc comments
//! are the help text and clap parses against it, so help and parser cannot drift.

use clap::{FromArgMatches, Subcommand};

use super::names::{RequestId, SecretName, StackName, Stage};

/// A `/devops …` command, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// List every command with one line each.
    Help,
    /// Store a secret under /contentcraft/; its value is asked in a private form, never typed here.
    PutSecret {
        #[arg(value_name = "name", value_parser = SecretName::parse)]
        name: SecretName,
        #[arg(long, value_name = "dev|prod", value_parser = Stage::parse)]
        stage: Option<Stage>,
        #[arg(long = "kms-key", value_name = "id")]
        kms_key: Option<String>,
    },
    /// Deploy a stack (its name without the stage suffix).
    Deploy {
        #[arg(value_name = "stackName", value_parser = StackName::parse)]
        stack: StackName,
        #[arg(long, value_name = "dev|prod", value_parser = Stage::parse)]
        stage: Option<Stage>,
    },
    /// Show one request, or your recent ones.
    Status {
        #[arg(value_name = "requestId", value_parser = RequestId::parse)]
        request_id: Option<RequestId>,
    },
    /// Show what is waiting for approval, and for whom.
    Approvals,
}

/// A command that could not be parsed: what was wrong, and the right usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub problem: String,
    pub usage: String,
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\nUsage: `{}`", self.problem, self.usage)
    }
}

const PREFIX: &str = "/devops";

fn grammar() -> clap::Command {
    let root = clap::Command::new(PREFIX)
        .no_binary_name(true)
        .disable_help_subcommand(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .subcommand_required(true)
        .color(clap::ColorChoice::Never);
    Command::augment_subcommands(root).mut_subcommands(|sub| sub.disable_help_flag(true))
}

impl Command {
    /// Parses the text after `/devops`. Empty text means `help`.
    pub fn parse(text: &str) -> Result<Command, CommandError> {
        let words = split_words(text).map_err(|problem| CommandError {
            problem,
            usage: format!("{PREFIX} help"),
        })?;
        if words.is_empty() {
            return Ok(Command::Help);
        }
        // Building clap's grammar costs more than parsing with it: each thread keeps one.
        thread_local! {
            static GRAMMAR: std::cell::RefCell<clap::Command> = std::cell::RefCell::new(grammar());
        }
        let mut matches = GRAMMAR
            .with_borrow_mut(|grammar| grammar.try_get_matches_from_mut(&words))
            .map_err(|error| command_error(&words[0], &error))?;
        Command::from_arg_matches_mut(&mut matches)
            .map_err(|error| command_error(&words[0], &error))
    }

    /// One line per command, from the definitions the parser uses.
    pub fn help() -> &'static str {
        static HELP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let mut lines = vec!["*devops-bot commands*".to_string()];
            for sub in grammar().get_subcommands() {
                let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
                lines.push(format!("• `{}` — {}", usage_of(sub), about));
            }
            lines.join("\n")
        });
        &HELP
    }
}

fn command_error(first_word: &str, error: &clap::Error) -> CommandError {
    // clap's message runs until the blank line before its tips and usage.
    let rendered = error.to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let joined = message.join(" ");
    let problem = joined
        .strip_prefix("error: ")
        .unwrap_or(&joined)
        .replace('\'', "`");
    let grammar = grammar();
    let usage = match grammar.find_subcommand(first_word) {
        Some(sub) => usage_of(sub),
        None => format!("{PREFIX} help"),
    };
    let problem = match error.kind() {
        clap::error::ErrorKind::InvalidSubcommand => {
            format!("`{first_word}` is not a command; `{PREFIX} help` lists them")
        }
        _ => problem,
    };
    CommandError { problem, usage }
}

fn usage_of(sub: &clap::Command) -> String {
    let mut usage = format!("{PREFIX} {}", sub.get_name());
    for arg in sub.get_arguments() {
        let value = arg
            .get_value_names()
            .and_then(|names| names.first())
            .map(|name| name.to_string())
            .unwrap_or_else(|| arg.get_id().to_string());
        let part = match arg.get_long() {
            Some(long) => format!("[--{long} {value}]"),
            None if arg.is_required_set() => format!("<{value}>"),
            None => format!("[<{value}>]"),
        };
        usage.push(' ');
        usage.push_str(&part);
    }
    usage
}

/// Splits like a shell would for our needs: whitespace separates words, double
/// quotes (straight or the curly ones Slack's editor inserts) group them.
fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut has_word = false;
    for c in text.chars() {
        match c {
            '"' | '“' | '”' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_word {
                    words.push(std::mem::take(&mut current));
                    has_word = false;
                }
            }
            c => {
                current.push(c);
                has_word = true;
            }
        }
    }
    if in_quotes {
        return Err("a quote is not closed".to_string());
    }
    if has_word {
        words.push(current);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_grammar_a_thread_keeps_answers_alike_every_time() {
        let texts = [
            "deploy x --force",
            "deploy cc-agent-doc-registry --stage prod",
            "put-secret",
            "nuke",
        ];
        let first: Vec<String> = texts
            .iter()
            .map(|text| format!("{:?}", Command::parse(text)))
            .collect();
        for _ in 0..3 {
            for (text, expected) in texts.iter().zip(&first) {
                assert_eq!(&format!("{:?}", Command::parse(text)), expected);
            }
        }
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(Command::parse(""), Ok(Command::Help));
        assert_eq!(Command::parse("help"), Ok(Command::Help));
        assert_eq!(
            Command::parse("deploy cc-agent-doc-registry --stage prod"),
            Ok(Command::Deploy {
                stack: StackName::parse("cc-agent-doc-registry").unwrap(),
                stage: Some(Stage::Prod),
            })
        );
        assert_eq!(
            Command::parse("put-secret /contentcraft/a/b --kms-key alias/x --stage=dev"),
            Ok(Command::PutSecret {
                name: SecretName::parse("/contentcraft/a/b").unwrap(),
                stage: Some(Stage::Dev),
                kms_key: Some("alias/x".into()),
            })
        );
        assert_eq!(
            Command::parse("status"),
            Ok(Command::Status { request_id: None })
        );
        assert_eq!(Command::parse("  approvals "), Ok(Command::Approvals));
    }

    #[test]
    fn bad_input_says_what_is_wrong_and_shows_usage() {
        let err = Command::parse("frobnicate").unwrap_err();
        assert!(
            err.problem.contains("`frobnicate` is not a command"),
            "{err}"
        );

        let err = Command::parse("put-secret").unwrap_err();
        assert!(err.problem.contains("<name>"), "{err}");
        assert_eq!(
            err.usage,
            "/devops put-secret <name> [--stage dev|prod] [--kms-key id]"
        );

        let err = Command::parse("put-secret /etc/passwd").unwrap_err();
        assert!(err.problem.contains("outside `/contentcraft/`"), "{err}");

        let err = Command::parse("deploy x --stage qa").unwrap_err();
        assert!(err.problem.contains("use dev or prod"), "{err}");
        assert_eq!(err.usage, "/devops deploy <stackName> [--stage dev|prod]");

        let err = Command::parse("deploy x --force").unwrap_err();
        assert!(err.problem.contains("--force"), "{err}");

        let err = Command::parse("status 123").unwrap_err();
        assert!(err.problem.contains("UUID"), "{err}");

        assert!(Command::parse("deploy \"x").is_err());
    }

    #[test]
    fn help_lists_every_command_once() {
        let help = Command::help();
        for name in ["help", "put-secret", "deploy", "status", "approvals"] {
            assert_eq!(
                help.matches(&format!("`/devops {name}")).count(),
                1,
                "{help}"
            );
        }
        assert!(help.contains("/devops deploy <stackName> [--stage dev|prod]"));
    }

    proptest! {
        #[test]
        fn never_panics_on_any_text(text in "\\PC{0,80}") {
            let _ = Command::parse(&text);
        }

        #[test]
        fn never_panics_on_command_like_text(
            words in proptest::collection::vec(
                prop_oneof![
                    Just("deploy".to_string()), Just("put-secret".to_string()),
                    Just("--stage".to_string()), Just("--kms-key".to_string()),
                    Just("status".to_string()), Just("\"".to_string()), "[ -~]{0,12}"
                ],
                0..6,
            )
        ) {
            let _ = Command::parse(&words.join(" "));
        }
    }
}
