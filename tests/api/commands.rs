//! The chat grammar as Slack users meet it.

use std::time::Duration;

use crate::helpers::TestApp;

#[tokio::test]
async fn help_lists_every_command() {
    let app = TestApp::spawn().await;
    let help = app.command_text("U1", "help").await;
    for usage in [
        "/devops help",
        "/devops put-secret <name> [--stage dev|prod] [--kms-key id]",
        "/devops deploy <stackName> [--stage dev|prod]",
        "/devops status [<requestId>]",
        "/devops approvals",
    ] {
        assert!(help.contains(usage), "{usage} missing: {help}");
    }
}

#[tokio::test]
async fn bad_input_gets_a_specific_message_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let cases = [
        ("frobnicate", "`frobnicate` is not a command"),
        ("put-secret", "<name>"),
        ("put-secret /etc/shadow", "outside `/contentcraft/`"),
        ("deploy cc-agent-doc-registry --stage qa", "use dev or prod"),
        ("deploy cc-agent-doc-registry --force", "--force"),
        ("status not-a-uuid", "UUID"),
    ];
    for (text, expected) in cases {
        let answer = app.command_text("U1", text).await;
        assert!(answer.contains(expected), "`{text}` answered: {answer}");
        assert!(
            answer.contains("Usage: `/devops"),
            "`{text}` shows usage: {answer}"
        );
    }
    // A requester the policy does not list for dev secrets is refused before the modal.
    let refused = app
        .command_text("UBOB", "put-secret /contentcraft/a/b")
        .await;
    assert!(
        refused.contains("no policy rule lets slack:UBOB request putSecret on dev"),
        "{refused}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.slack.calls().is_empty());
    assert_eq!(
        app.command_text("U1", "status").await,
        "You have no requests yet."
    );
    assert_eq!(
        app.command_text("U1", "approvals").await,
        "Nothing is waiting for approval."
    );
}

#[tokio::test]
async fn status_and_approvals_answer_from_the_store() {
    let app = TestApp::spawn().await;
    app.command_text("UREQ", "deploy cc-agent-doc-registry --stage prod")
        .await;
    let (request_id, _, _) = app.card(1).await;
    let mine = app.command_text("UREQ", "status").await;
    assert!(
        mine.contains(&request_id) && mine.contains("*pending*"),
        "{mine}"
    );
    let one = app
        .command_text("UBOSS", &format!("status {request_id}"))
        .await;
    assert!(one.contains("cc-agent-doc-registry-prod"), "{one}");
    let waiting = app.command_text("UBOSS", "approvals").await;
    assert!(
        waiting.contains("slack:UBOSS, slack:UALICE") && waiting.contains("0/1"),
        "{waiting}"
    );
    let unknown = app
        .command_text("UBOSS", "status 7d9f1a2e-1111-4222-8333-444455556666")
        .await;
    assert!(unknown.contains("was not found"), "{unknown}");
}
