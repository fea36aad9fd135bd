//! Cards are data: Adaptive Card templates from `cards/` with `${…}` binding
//! and `$when`. Teams renders the bound card as it is; the Slack adapter
//! translates it to Block Kit. Editing a template needs no rebuild.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{json, Map, Value};

use crate::domain::events::rfc3339;
use crate::domain::request::{Request, Status};

/// Built-in copies, used when the cards directory has no such file.
const BUILT_IN: &[(&str, &str)] = &[("request", include_str!("../cards/request.json"))];

#[derive(Debug, Clone)]
pub struct Cards {
    dir: Option<PathBuf>,
    /// Parsed templates by name, with the modification time of the file they
    /// came from (None: built in): an edited file is read again, an unchanged
    /// one is not read for every card.
    parsed: Arc<Mutex<HashMap<String, Parsed>>>,
}

/// A template as parsed, and the modification time of its file (None: built in).
type Parsed = (Option<SystemTime>, Arc<Value>);

#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error("card template {0} is not valid JSON: {1}")]
    Invalid(String, String),
    #[error("no card template named {0}")]
    Unknown(String),
}

impl Cards {
    /// Checks every template now, so a broken edit stops start-up rather than a card.
    pub fn load(dir: Option<&Path>) -> Result<Cards, CardError> {
        let cards = Cards {
            dir: dir.map(Path::to_path_buf),
            parsed: Arc::default(),
        };
        for (name, _) in BUILT_IN {
            cards.template(name)?;
        }
        Ok(cards)
    }

    fn template(&self, name: &str) -> Result<Arc<Value>, CardError> {
        let from_dir = self
            .dir
            .as_ref()
            .map(|dir| dir.join(format!("{name}.json")))
            .and_then(|path| {
                let metadata = std::fs::metadata(&path).ok().filter(|m| m.is_file())?;
                Some((path, metadata.modified().ok()))
            });
        let modified = from_dir.as_ref().and_then(|(_, modified)| *modified);
        let mut parsed = self
            .parsed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((seen, template)) = parsed.get(name) {
            if *seen == modified && (modified.is_some() || from_dir.is_none()) {
                return Ok(template.clone());
            }
        }
        let (origin, text) = match from_dir.map(|(path, _)| path) {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| CardError::Invalid(path.display().to_string(), e.to_string()))?;
                (path.display().to_string(), text)
            }
            None => {
                let (_, text) = BUILT_IN
                    .iter()
                    .find(|(known, _)| *known == name)
                    .ok_or_else(|| CardError::Unknown(name.to_string()))?;
                (format!("built-in {name}.json"), text.to_string())
            }
        };
        let template: Arc<Value> = Arc::new(
            serde_json::from_str(&text).map_err(|e| CardError::Invalid(origin, e.to_string()))?,
        );
        parsed.insert(name.to_string(), (modified, template.clone()));
        Ok(template)
    }

    /// The request card, bound to the request's current state.
    pub fn request_card(&self, request: &Request) -> Result<Value, CardError> {
        Ok(bind(&*self.template("request")?, &request_data(request)))
    }
}

fn request_data(request: &Request) -> Map<String, Value> {
    let action = request.action.kind().as_str();
    let target = request.action.target(request.stage);
    let approvers: Vec<String> = request
        .approvals
        .iter()
        .map(|a| format!("{} at {}", a.user_name, a.at.format("%H:%M UTC")))
        .collect();
    let approvals_line = format!(
        "{}/{}{}",
        request.approvals.len(),
        request.policy.approvals_needed,
        if approvers.is_empty() {
            String::new()
        } else {
            format!(" ({})", approvers.join(", "))
        }
    );
    let last = request.last_transition();
    let by = last.map(|t| t.by.clone()).unwrap_or_default();
    let at = last
        .map(|t| t.at.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    let outcome = request.outcome.as_ref();
    let data = json!({
        "title": format!("{action} {target}"),
        "requestId": request.id,
        "action": action,
        "target": target,
        "stage": request.stage,
        "requester": request.requester.user_name,
        "approvalsLine": approvals_line,
        "expiresAt": rfc3339(request.expires_at),
        "status": request.status.as_str(),
        "approvers": request.policy.approvers.join(", ").replace('*', "any approver"),
        "decidedBy": by,
        "decidedAt": at,
        "latencyMs": outcome.map(|o| o.latency_ms).unwrap_or_default(),
        "outcome": outcome.map(|o| o.summary.clone()).unwrap_or_default(),
        "awaitingApproval": request.status == Status::Pending,
    });
    match data {
        Value::Object(mut map) => {
            // One flag per state, so the template words each state (`"$when": "${isRejected}"`).
            for status in Status::ALL {
                let flag = format!(
                    "is{}{}",
                    status.as_str()[..1].to_uppercase(),
                    &status.as_str()[1..]
                );
                map.insert(flag, Value::Bool(request.status == status));
            }
            map
        }
        _ => Map::new(),
    }
}

/// Adaptive Card Templating, the part we use: `${name}` inside strings and
/// `"$when": "${name}"` / `"${!name}"` on objects.
pub fn bind(template: &Value, data: &Map<String, Value>) -> Value {
    match template {
        Value::String(text) => Value::String(substitute(text, data)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|item| when_holds(item, data))
                .map(|item| bind(item, data))
                .collect(),
        ),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .filter(|(key, _)| key.as_str() != "$when")
                .map(|(key, value)| (key.clone(), bind(value, data)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn when_holds(item: &Value, data: &Map<String, Value>) -> bool {
    let Some(condition) = item.get("$when").and_then(Value::as_str) else {
        return true;
    };
    let expression = condition
        .trim()
        .trim_start_matches("${")
        .trim_end_matches('}')
        .trim();
    let (negate, name) = match expression.strip_prefix('!') {
        Some(name) => (true, name.trim()),
        None => (false, expression),
    };
    let truthy = match data.get(name) {
        Some(Value::Bool(flag)) => *flag,
        Some(Value::Null) | None => false,
        Some(Value::String(text)) => !text.is_empty(),
        Some(_) => true,
    };
    truthy != negate
}

fn substitute(text: &str, data: &Map<String, Value>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                match data.get(after[..end].trim()) {
                    Some(Value::String(value)) => out.push_str(value),
                    Some(Value::Null) | None => {}
                    Some(value) => out.push_str(&value.to_string()),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn binds_strings_and_drops_elements_whose_when_is_false() {
        let template = json!({"text": "Hi ${name}, ${missing}!", "items": [
            {"$when": "${show}", "a": 1}, {"$when": "${!show}", "b": 2}, {"c": "${n}"}
        ]});
        let data = json!({"name": "Ada", "show": true, "n": 3});
        let bound = bind(&template, data.as_object().unwrap());
        assert_eq!(
            bound,
            json!({"text": "Hi Ada, !", "items": [{"a": 1}, {"c": "3"}]})
        );
    }

    #[test]
    fn unterminated_binding_is_left_as_text() {
        assert_eq!(substitute("cost ${x", &Map::new()), "cost ${x");
    }

    #[test]
    fn template_in_the_cards_directory_wins_over_the_built_in() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("request.json"),
            r#"{"body":[{"type":"TextBlock","text":"custom ${action}"}]}"#,
        )
        .unwrap();
        let cards = Cards::load(Some(dir.path())).unwrap();
        assert_eq!(
            cards.template("request").unwrap()["body"][0]["text"],
            "custom ${action}"
        );
        std::fs::write(dir.path().join("request.json"), "{broken").unwrap();
        assert!(matches!(
            Cards::load(Some(dir.path())),
            Err(CardError::Invalid(_, _))
        ));
    }

    #[test]
    fn an_edited_template_is_read_again_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("request.json");
        let write = |wording: &str, modified_secs: u64| {
            std::fs::write(
                &path,
                format!(r#"{{"body":[{{"type":"TextBlock","text":"{wording}"}}]}}"#),
            )
            .unwrap();
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(modified_secs);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(at)
                .unwrap();
        };
        write("first wording", 1_000);
        let cards = Cards::load(Some(dir.path())).unwrap();
        assert_eq!(
            cards.template("request").unwrap()["body"][0]["text"],
            "first wording"
        );
        write("second wording", 2_000);
        assert_eq!(
            cards.template("request").unwrap()["body"][0]["text"],
            "second wording"
        );
        std::fs::remove_file(&path).unwrap();
        assert_ne!(
            cards.template("request").unwrap()["body"][0]["text"],
            "second wording",
            "back to the built-in card"
        );
    }

    proptest! {
        /// Values are inserted once and never scanned again: data that looks
        /// like `${…}` stays text, whatever the template around it.
        #[test]
        fn bound_data_is_never_read_as_template(
            pieces in proptest::collection::vec(
                ("\\PC{0,10}".prop_filter("template syntax in literal text", |text: &String| !text.contains("${")), 0..3usize),
                0..6,
            ),
            tail in "\\PC{0,10}".prop_filter("template syntax in literal text", |text: &String| !text.contains("${")),
            values in proptest::collection::vec(
                prop_oneof![
                    Just("${a}".to_string()),
                    Just("${b} and ${c}".to_string()),
                    Just("${".to_string()),
                    Just("}".to_string()),
                    "\\PC{0,20}",
                    proptest::collection::vec(prop_oneof![Just("${"), Just("}"), Just("a"), Just("$")], 0..12).prop_map(|parts| parts.concat()),
                ],
                3,
            ),
        ) {
            let keys = ["a", "b", "c"];
            let data: Map<String, Value> = keys
                .iter()
                .zip(&values)
                .map(|(key, value)| (key.to_string(), Value::String(value.clone())))
                .collect();
            let mut template = String::new();
            let mut expected = String::new();
            for (literal, key) in &pieces {
                template.push_str(&format!("{literal}${{{}}}", keys[*key]));
                expected.push_str(literal);
                expected.push_str(&values[*key]);
            }
            template.push_str(&tail);
            expected.push_str(&tail);
            let bound = bind(&json!({"text": template, "items": [{"$when": "${a}", "x": "${b}"}]}), &data);
            prop_assert_eq!(&bound["text"], &json!(expected));
            let shown = if values[0].is_empty() { json!([]) } else { json!([{"x": values[1]}]) };
            prop_assert_eq!(&bound["items"], &shown);
        }
    }
}
