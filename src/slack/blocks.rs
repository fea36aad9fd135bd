//! Adaptive Card → Block Kit. The card's wording lives in the template; this
//! only maps element kinds, escapes text for Slack's mrkdwn and keeps every
//! text within Slack's limits, since one oversized text makes Slack refuse
//! the whole message.

use serde_json::{json, Value};

// Slack's Block Kit limits, in characters.
const HEADER_MAX: usize = 150;
const TEXT_MAX: usize = 3000;
const FIELD_MAX: usize = 2000;
const FIELDS_MAX: usize = 10;
const BUTTON_TEXT_MAX: usize = 75;
const BUTTON_VALUE_MAX: usize = 2000;
const ACTION_ID_MAX: usize = 255;
const URL_MAX: usize = 3000;
const BUTTONS_MAX: usize = 25;
const BLOCKS_MAX: usize = 50;

const ELLIPSIS: char = '…';

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
    // The card's own buttons come last and must survive the cut.
    let room = BLOCKS_MAX - usize::from(!buttons.is_empty());
    blocks.truncate(room);
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

/// Escapes what Slack treats as control characters (`<!channel>`, `<@U…>`, links).
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Escapes like [`escape`] and turns the card templates' `**bold**` into `*bold*`.
pub fn mrkdwn(text: &str) -> String {
    escape(text).replace("**", "*")
}

/// Slack's limit for a section block's text, and for a `block_id`.
pub const SECTION_TEXT_MAX: usize = 3000;
pub const BLOCK_ID_MAX: usize = 255;

/// A plain message as one section block that carries `key` as its `block_id`:
/// Slack returns blocks with every message it reads back, metadata only when
/// asked, so the key is found in a thread whatever Slack does to the text.
pub fn keyed_text_block(escaped: &str, key: &str) -> Value {
    json!({
        "type": "section",
        "block_id": prefix_within(key, BLOCK_ID_MAX),
        "text": mrkdwn_object(escaped, SECTION_TEXT_MAX),
    })
}

/// A message's `text`, escaped and cut to what a section shows.
pub fn plain_text(text: &str) -> String {
    shorten_escaped(&escape(text), SECTION_TEXT_MAX)
}

/// Length as Slack may count it. UTF-16 units are never fewer than characters,
/// so a text that fits by this count fits whichever way Slack counts.
fn slack_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// The longest prefix of `text` within `budget`, on a character boundary.
fn prefix_within(text: &str, budget: usize) -> &str {
    let mut used = 0;
    for (at, c) in text.char_indices() {
        used += c.len_utf16();
        if used > budget {
            return &text[..at];
        }
    }
    text
}

/// `text` cut to `max` with an ellipsis.
fn shorten(text: &str, max: usize) -> String {
    if slack_len(text) <= max {
        return text.to_string();
    }
    format!("{}{ELLIPSIS}", prefix_within(text, max - 1))
}

/// Like `shorten`, for text already escaped by `mrkdwn`: an entity cut in
/// half would show as stray characters, so it goes whole.
fn shorten_escaped(escaped: &str, max: usize) -> String {
    if slack_len(escaped) <= max {
        return escaped.to_string();
    }
    let kept = prefix_within(escaped, max - 1);
    let kept = match kept.rfind('&') {
        Some(entity) if !kept[entity..].contains(';') => &kept[..entity],
        _ => kept,
    };
    format!("{kept}{ELLIPSIS}")
}

/// A mrkdwn text object for card text. `verbatim` stops Slack from turning
/// bare URLs, channel names and `@here`-like words in data into links or mentions.
fn mrkdwn_object(escaped: &str, max: usize) -> Value {
    json!({"type": "mrkdwn", "text": shorten_escaped(escaped, max), "verbatim": true})
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
                blocks.push(json!({"type": "header", "text": {"type": "plain_text", "text": shorten(&text, HEADER_MAX)}}));
            } else if element.get("isSubtle").and_then(Value::as_bool) == Some(true) {
                blocks.push(json!({"type": "context", "elements": [mrkdwn_object(&mrkdwn(&text), TEXT_MAX)]}));
            } else {
                blocks.push(
                    json!({"type": "section", "text": mrkdwn_object(&mrkdwn(&text), TEXT_MAX)}),
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
                    let escaped = format!(
                        "*{}*\n{}",
                        mrkdwn(&text_of(fact, "title")),
                        mrkdwn(&text_of(fact, "value"))
                    );
                    mrkdwn_object(&escaped, FIELD_MAX)
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
            // Slack refuses a button without a label.
            if title.trim().is_empty() {
                return None;
            }
            let mut button = json!({"type": "button", "text": {"type": "plain_text", "text": shorten(&title, BUTTON_TEXT_MAX)}});
            match action.get("type").and_then(Value::as_str) {
                Some("Action.Submit") | Some("Action.Execute") => {
                    let data = action.get("data").cloned().unwrap_or(Value::Null);
                    let action_id = match data.get("verb").and_then(Value::as_str) {
                        Some(verb) if !verb.is_empty() => verb.to_string(),
                        _ => format!("action_{index}"),
                    };
                    button["action_id"] = json!(shorten(&action_id, ACTION_ID_MAX));
                    button["value"] = json!(shorten(&data.to_string(), BUTTON_VALUE_MAX));
                }
                Some("Action.OpenUrl") => {
                    // Slack refuses a whole message for a link it cannot parse; written out
                    // again, spaces and other characters a URL may not hold are escaped.
                    let Ok(url) = url::Url::parse(&text_of(action, "url")) else {
                        return None;
                    };
                    let url = url.to_string();
                    // A shortened URL would lead somewhere else.
                    if slack_len(&url) > URL_MAX {
                        return None;
                    }
                    button["action_id"] = json!(format!("open_{index}"));
                    button["url"] = json!(url);
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
        .take(BUTTONS_MAX)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use proptest::prelude::*;
    use slack_morphism::prelude::SlackBlock;

    use crate::domain::request::{sample_request, Approval, Outcome, Request, Status, Transition};

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

    #[test]
    fn a_long_agent_error_is_shortened_so_the_card_still_posts() {
        let cards = crate::cards::Cards::load(None).unwrap();
        let mut request = sample_request("UREQ");
        request.status = Status::Failed;
        let error = "stack update failed: ".to_string() + &"é<".repeat(5_000);
        request.outcome = Some(Outcome {
            summary: error,
            latency_ms: 1234,
            at: Utc::now(),
        });
        let blocks = to_blocks(&cards.request_card(&request).unwrap());
        let failed = blocks
            .iter()
            .filter_map(|block| block["text"]["text"].as_str())
            .find(|text| text.starts_with("❌ Failed after 1234 ms: stack update failed: é&lt;"))
            .expect("the failure is on the card");
        // Cut at the limit, or just before it when the limit fell inside an entity.
        assert!(slack_len(failed) <= TEXT_MAX, "{}", slack_len(failed));
        assert!(
            slack_len(failed) > TEXT_MAX - "&lt;".len(),
            "{}",
            slack_len(failed)
        );
        assert!(
            failed.ends_with("&lt;…") || failed.ends_with("é…"),
            "{failed}"
        );
        slack_accepts(&blocks).unwrap();
    }

    #[test]
    fn a_card_longer_than_slack_allows_keeps_its_buttons() {
        let lines: Vec<Value> = (0..80)
            .map(|n| json!({"type": "TextBlock", "text": format!("line {n}")}))
            .collect();
        let card = json!({"body": lines, "actions": [
            {"type": "Action.Submit", "title": "Approve", "data": {"verb": "approve"}}
        ]});
        let blocks = to_blocks(&card);
        assert_eq!(blocks.len(), BLOCKS_MAX);
        assert_eq!(blocks[BLOCKS_MAX - 2]["text"]["text"], "line 48");
        assert_eq!(
            blocks[BLOCKS_MAX - 1]["elements"][0]["action_id"],
            "approve"
        );
    }

    #[test]
    fn buttons_slack_would_refuse_are_mended_or_left_out() {
        let card = json!({"actions": [
            {"type": "Action.Submit", "title": "Go", "data": {"verb": ""}},
            {"type": "Action.Submit", "title": " ", "data": {"verb": "approve"}},
            {"type": "Action.OpenUrl", "title": "Far", "url": format!("https://example.com/{}", "a".repeat(URL_MAX))},
            {"type": "Action.OpenUrl", "title": "Nowhere", "url": "not a link"},
            {"type": "Action.OpenUrl", "title": "Logs", "url": "https://logs.example.com/stack name/é"}
        ]});
        let blocks = to_blocks(&card);
        let buttons = blocks[0]["elements"].as_array().unwrap();
        assert_eq!(buttons.len(), 2, "{buttons:?}");
        assert_eq!(buttons[0]["action_id"], "action_0");
        assert_eq!(
            buttons[1]["url"],
            "https://logs.example.com/stack%20name/%C3%A9"
        );
    }

    #[test]
    fn shortening_keeps_whole_characters_and_entities() {
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abcd", 4), "abcd");
        // 😀 is two UTF-16 units: it does not fit in the last unit before the ellipsis.
        assert_eq!(shorten("ab😀cd", 4), "ab…");
        assert_eq!(shorten_escaped(&mrkdwn("ab<cd"), 6), "ab…");
        assert_eq!(shorten_escaped(&mrkdwn("ab<cd"), 7), "ab&lt;…");
    }

    /// What people and agents can put into a card: Slack markup, template
    /// syntax, unicode, and strings far beyond any limit.
    fn hostile_text() -> impl Strategy<Value = String> {
        hostile_text_huge_one_in(5)
    }

    /// `hostile_text`, with a huge string one time in `odds`.
    fn hostile_text_huge_one_in(odds: u32) -> impl Strategy<Value = String> {
        let markup = prop_oneof![
            Just("<!channel>"),
            Just("<!here>"),
            Just("<@U0ADMIN>"),
            Just("<#C0GENERAL>"),
            Just("<https://evil.example|click me>"),
            Just("https://evil.example/login"),
            Just("@channel"),
            Just("*bold*"),
            Just("**strong**"),
            Just("`code`"),
            Just("```block```"),
            Just("_i_ ~s~"),
            Just("&amp; &lt;"),
            Just("${requestId}"),
            Just("${!isPending}"),
            Just("${"),
            Just("}"),
            Just("\n> quote"),
            Just("😀"),
            Just("é"),
        ]
        .prop_map(str::to_string);
        prop_oneof![
            odds - 1 => proptest::collection::vec(prop_oneof![markup.clone(), "\\PC{0,12}"], 0..8)
                .prop_map(|parts| parts.concat()),
            1 => (prop_oneof![markup, "\\PC{1,4}"], 1_000usize..=100_000)
                .prop_map(|(unit, chars)| unit.chars().cycle().take(chars).collect()),
        ]
    }

    /// A request in any state whose people, approvers and outcome are hostile.
    fn hostile_request() -> impl Strategy<Value = Request> {
        (
            (hostile_text(), hostile_text(), hostile_text()),
            proptest::collection::vec(hostile_text(), 0..3),
            proptest::collection::vec(hostile_text(), 0..3),
            hostile_text(),
            0..Status::ALL.len(),
            any::<u64>(),
        )
            .prop_map(
                |((name, id, decided_by), approvers, approver_names, outcome, status, latency)| {
                    let mut request = sample_request("UREQ");
                    request.requester.user_name = name;
                    request.requester.user_id = id;
                    request.policy.approvers = approvers;
                    request.approvals = approver_names
                        .into_iter()
                        .map(|user_name| Approval {
                            platform: "slack".into(),
                            user_id: "UAPP".into(),
                            user_name,
                            at: Utc::now(),
                        })
                        .collect();
                    request.status = Status::ALL[status];
                    request.history.push(Transition {
                        to: request.status,
                        by: decided_by,
                        platform: "slack".into(),
                        at: Utc::now(),
                        note: None,
                    });
                    request.outcome = Some(Outcome {
                        summary: outcome,
                        latency_ms: latency,
                        at: Utc::now(),
                    });
                    request
                },
            )
    }

    /// Checks a text object against Slack's limits; mrkdwn must carry no live
    /// markup: no `<…>` (mentions, links) and only our own entities.
    fn text_fits(text: &Value, max: usize) -> Result<(), TestCaseError> {
        let body = text["text"].as_str().unwrap_or_default();
        prop_assert!(!body.trim().is_empty(), "empty text in {}", text);
        prop_assert!(
            slack_len(body) <= max,
            "{} > {max} characters",
            slack_len(body)
        );
        match text["type"].as_str() {
            Some("mrkdwn") => {
                prop_assert_eq!(&text["verbatim"], &json!(true));
                prop_assert!(!body.contains(['<', '>']), "live markup in {:.300}", body);
                for (at, _) in body.match_indices('&') {
                    let entity = &body[at..];
                    prop_assert!(
                        ["&amp;", "&lt;", "&gt;"]
                            .iter()
                            .any(|e| entity.starts_with(e)),
                        "bare & in {:.300}",
                        body
                    );
                }
            }
            Some("plain_text") => {}
            other => prop_assert!(false, "text type {other:?}"),
        }
        Ok(())
    }

    /// What Slack would refuse: over its limits, or not a block slack-morphism knows.
    fn slack_accepts(blocks: &[Value]) -> Result<(), TestCaseError> {
        prop_assert!(blocks.len() <= BLOCKS_MAX, "{} blocks", blocks.len());
        let typed: Vec<SlackBlock> = serde_json::from_value(Value::Array(blocks.to_vec()))
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        for (block, json) in typed.iter().zip(blocks) {
            prop_assert!(
                !matches!(block, SlackBlock::Unknown(_)),
                "not a block: {:.300}",
                json
            );
        }
        prop_assert_eq!(
            &serde_json::to_value(&typed).unwrap(),
            &Value::Array(blocks.to_vec())
        );
        for block in blocks {
            match block["type"].as_str() {
                Some("header") => {
                    prop_assert_eq!(&block["text"]["type"], "plain_text");
                    text_fits(&block["text"], HEADER_MAX)?;
                }
                Some("section") => {
                    if let Some(fields) = block["fields"].as_array() {
                        prop_assert!(fields.len() <= FIELDS_MAX);
                        for field in fields {
                            text_fits(field, FIELD_MAX)?;
                        }
                    } else {
                        text_fits(&block["text"], TEXT_MAX)?;
                    }
                }
                Some("context") => {
                    let elements = block["elements"].as_array().unwrap();
                    prop_assert!(elements.len() <= 10);
                    for element in elements {
                        text_fits(element, TEXT_MAX)?;
                    }
                }
                Some("actions") => {
                    let buttons = block["elements"].as_array().unwrap();
                    prop_assert!(!buttons.is_empty() && buttons.len() <= BUTTONS_MAX);
                    for button in buttons {
                        text_fits(&button["text"], BUTTON_TEXT_MAX)?;
                        let value = button["value"].as_str().unwrap_or_default();
                        prop_assert!(slack_len(value) <= BUTTON_VALUE_MAX);
                        let action_id = button["action_id"].as_str().unwrap_or_default();
                        prop_assert!(
                            !action_id.is_empty() && slack_len(action_id) <= ACTION_ID_MAX
                        );
                        let url = button["url"].as_str().unwrap_or_default();
                        prop_assert!(slack_len(url) <= URL_MAX);
                    }
                }
                other => prop_assert!(false, "block type {other:?}"),
            }
        }
        Ok(())
    }

    /// Where data shows on the request card, escaped as `mrkdwn` escapes it.
    fn shown_literally(
        blocks: &[Value],
        value: &str,
        request: &Request,
    ) -> Result<(), TestCaseError> {
        let id = request.id.to_string();
        let texts: Vec<&str> = blocks
            .iter()
            .flat_map(|block| {
                let fields = block["fields"].as_array().into_iter().flatten();
                fields.chain(std::iter::once(&block["text"]))
            })
            .filter_map(|text| text["text"].as_str())
            .collect();
        prop_assert!(
            texts.iter().any(|text| text.contains(&mrkdwn(value))),
            "{:?} not on the card: {:?}",
            value,
            texts
        );
        if !value.contains(&id) {
            let id_shown = texts.iter().filter(|text| text.contains(&id)).count();
            prop_assert_eq!(id_shown, 0, "data was read as a template: {:?}", texts);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn request_card_with_hostile_data_is_literal_escaped_and_within_slack_limits(
            request in hostile_request()
        ) {
            let cards = crate::cards::Cards::load(None).unwrap();
            let blocks = to_blocks(&cards.request_card(&request).unwrap());
            slack_accepts(&blocks)?;

            let short = |text: &str| !text.trim().is_empty() && slack_len(&mrkdwn(text)) < 1_000;
            if short(&request.requester.user_name) {
                shown_literally(&blocks, &request.requester.user_name, &request)?;
            }
            let outcome = &request.outcome.as_ref().unwrap().summary;
            if matches!(request.status, Status::Succeeded | Status::Failed) && short(outcome) {
                shown_literally(&blocks, outcome, &request)?;
            }
            let buttons = blocks.iter().filter(|block| block["type"] == "actions").count();
            prop_assert_eq!(buttons, usize::from(request.status == Status::Pending));
            if let Some(actions) = blocks.iter().find(|block| block["type"] == "actions") {
                for button in actions["elements"].as_array().unwrap() {
                    let data: Value = serde_json::from_str(button["value"].as_str().unwrap()).unwrap();
                    prop_assert_eq!(&data["requestId"], &json!(request.id.to_string()));
                }
            }
        }
    }

    /// Any Adaptive-Card-shaped JSON: the elements we translate, nested, with
    /// hostile texts and data, and things we do not translate.
    fn card_element() -> impl Strategy<Value = Value> {
        let size = prop_oneof![Just(""), Just("Large"), Just("ExtraLarge"), Just("Small")];
        let text_block = (hostile_text_huge_one_in(40), size, any::<bool>()).prop_map(|(text, size, subtle)| {
            json!({"type": "TextBlock", "text": text, "size": size, "isSubtle": subtle})
        });
        let fact_set = proptest::collection::vec(
            (hostile_text_huge_one_in(40), hostile_text_huge_one_in(40)),
            0..15,
        )
        .prop_map(|facts| {
            let facts: Vec<Value> = facts
                .into_iter()
                .map(|(title, value)| json!({"title": title, "value": value}))
                .collect();
            json!({"type": "FactSet", "facts": facts})
        });
        let action_set = proptest::collection::vec(card_action(), 0..30)
            .prop_map(|actions| json!({"type": "ActionSet", "actions": actions}));
        let leaf = prop_oneof![
            3 => text_block,
            2 => fact_set,
            1 => action_set,
            1 => any::<i64>().prop_map(|n| json!({"type": n})),
            1 => "\\PC{0,10}".prop_map(|kind| json!({"type": kind, "text": "x"})),
        ];
        leaf.prop_recursive(2, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6)
                    .prop_map(|items| json!({"type": "Container", "items": items})),
                proptest::collection::vec(proptest::collection::vec(inner, 0..3), 0..3).prop_map(
                    |columns| {
                        let columns: Vec<Value> = columns
                            .into_iter()
                            .map(|items| json!({"items": items}))
                            .collect();
                        json!({"type": "ColumnSet", "columns": columns})
                    }
                ),
            ]
        })
    }

    fn card_action() -> impl Strategy<Value = Value> {
        let kind = prop_oneof![
            Just("Action.Submit"),
            Just("Action.Execute"),
            Just("Action.OpenUrl"),
            Just("Action.ShowCard"),
        ];
        // Valid URLs only: a malformed one is a template bug slack-morphism already reports.
        let url = prop_oneof![
            Just(String::new()),
            "[a-z0-9/]{0,40}".prop_map(|path| format!("https://example.com/{path}")),
            Just(format!("https://example.com/{}", "a".repeat(3_000))),
        ];
        let data = prop_oneof![
            (hostile_text_huge_one_in(40), hostile_text_huge_one_in(40))
                .prop_map(|(verb, id)| json!({"verb": verb, "requestId": id})),
            hostile_text_huge_one_in(40).prop_map(Value::String),
            Just(Value::Null),
        ];
        let style = prop_oneof![Just("positive"), Just("destructive"), Just("default")];
        (kind, hostile_text_huge_one_in(40), url, data, style).prop_map(|(kind, title, url, data, style)| {
            json!({"type": kind, "title": title, "url": url, "data": data, "style": style})
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_card_translates_to_blocks_slack_accepts(
            body in proptest::collection::vec(card_element(), 0..30),
            actions in proptest::collection::vec(card_action(), 0..30),
        ) {
            let blocks = to_blocks(&json!({"body": body, "actions": actions}));
            slack_accepts(&blocks)?;
        }
    }
}
