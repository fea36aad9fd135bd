//! Adaptive Card → Block Kit. The card's wording lives in the template; this
//! only maps element kinds, and escapes text for Slack's mrkdwn.

use serde_json::{json, Value};

/// Slack's limits: header text 150 characters, ten fields per section.
const HEADER_MAX: usize = 150;
const FIELDS_MAX: usize = 10;

pub fn to_blocks(card: &Value) -> Vec<Value> {
    let mut blocks = Vec::new();
    for element in card
        .get("body")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        element_blocks(element, &mut blocks);
    }
    let buttons = buttons(card.get("actions"));
    if !buttons.is_empty() {
        blocks.push(json!({"type": "actions", "elements": buttons}));
    }
    blocks
}

fn text_of(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Escapes what Slack treats as control characters and turns `**bold**` into `*bold*`.
pub fn mrkdwn(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace("**", "*")
}

fn element_blocks(element: &Value, blocks: &mut Vec<Value>) {
    match element.get("type").and_then(Value::as_str) {
        Some("TextBlock") => {
            let text = text_of(element, "text");
            if text.trim().is_empty() {
                return;
            }
            let size = text_of(element, "size");
            if size == "Large" || size == "ExtraLarge" {
                let header: String = text.chars().take(HEADER_MAX).collect();
                blocks.push(
                    json!({"type": "header", "text": {"type": "plain_text", "text": header}}),
                );
            } else if element.get("isSubtle").and_then(Value::as_bool) == Some(true) {
                blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": mrkdwn(&text)}]}));
            } else {
                blocks.push(
                    json!({"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn(&text)}}),
                );
            }
        }
        Some("FactSet") => {
            let fields: Vec<Value> = element
                .get("facts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|fact| !text_of(fact, "value").is_empty())
                .map(|fact| {
                    json!({"type": "mrkdwn", "text": format!("*{}*\n{}", mrkdwn(&text_of(fact, "title")), mrkdwn(&text_of(fact, "value")))})
                })
                .collect();
            for chunk in fields.chunks(FIELDS_MAX) {
                blocks.push(json!({"type": "section", "fields": chunk}));
            }
        }
        Some("Container") => {
            for item in element
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                element_blocks(item, blocks);
            }
        }
        Some("ColumnSet") => {
            for column in element
                .get("columns")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for item in column
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    element_blocks(item, blocks);
                }
            }
        }
        Some("ActionSet") => {
            let buttons = buttons(element.get("actions"));
            if !buttons.is_empty() {
                blocks.push(json!({"type": "actions", "elements": buttons}));
            }
        }
        _ => {}
    }
}

fn buttons(actions: Option<&Value>) -> Vec<Value> {
    actions
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(index, action)| {
            let title = text_of(action, "title");
            let mut button =
                json!({"type": "button", "text": {"type": "plain_text", "text": title}});
            match action.get("type").and_then(Value::as_str) {
                Some("Action.Submit") | Some("Action.Execute") => {
                    let data = action.get("data").cloned().unwrap_or(Value::Null);
                    let verb = data.get("verb").and_then(Value::as_str).map(str::to_string);
                    button["action_id"] = json!(verb.unwrap_or_else(|| format!("action_{index}")));
                    button["value"] = json!(data.to_string());
                }
                Some("Action.OpenUrl") => {
                    button["action_id"] = json!(format!("open_{index}"));
                    button["url"] = json!(text_of(action, "url"));
                }
                _ => return None,
            }
            match text_of(action, "style").as_str() {
                "positive" => button["style"] = json!("primary"),
                "destructive" => button["style"] = json!("danger"),
                _ => {}
            }
            Some(button)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_the_elements_we_use() {
        let card = json!({"body": [
            {"type": "TextBlock", "size": "Large", "text": "deploy x"},
            {"type": "FactSet", "facts": [{"title": "Stage", "value": "prod"}, {"title": "Empty", "value": ""}]},
            {"type": "TextBlock", "text": "a <b> & **c**"},
            {"type": "TextBlock", "isSubtle": true, "text": "small"}
        ], "actions": [
            {"type": "Action.Submit", "title": "Approve", "style": "positive", "data": {"verb": "approve", "requestId": "r1"}}
        ]});
        let blocks = to_blocks(&card);
        assert_eq!(
            blocks[0],
            json!({"type": "header", "text": {"type": "plain_text", "text": "deploy x"}})
        );
        assert_eq!(blocks[1]["fields"].as_array().unwrap().len(), 1);
        assert_eq!(blocks[2]["text"]["text"], "a &lt;b&gt; &amp; *c*");
        assert_eq!(blocks[3]["type"], "context");
        let button = &blocks[4]["elements"][0];
        assert_eq!(
            (button["action_id"].as_str(), button["style"].as_str()),
            (Some("approve"), Some("primary"))
        );
        let data: Value = serde_json::from_str(button["value"].as_str().unwrap()).unwrap();
        assert_eq!(data["requestId"], "r1");
    }

    #[test]
    fn translated_blocks_fit_slack_morphism_types() {
        let cards = crate::cards::Cards::load(None).unwrap();
        let card = cards
            .request_card(&crate::domain::request::sample_request("UBLOCKS"))
            .unwrap();
        let blocks = to_blocks(&card);
        let parsed: Vec<slack_morphism::prelude::SlackBlock> =
            serde_json::from_value(Value::Array(blocks.clone())).unwrap();
        assert_eq!(parsed.len(), blocks.len());
        assert_eq!(blocks.last().unwrap()["type"], "actions");
    }
}
