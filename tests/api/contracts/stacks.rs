//! `StacksBackend`: existing stacks only, parameters kept unless named, "no changes" as a success.

use std::collections::BTreeMap;

use devops_bot::backends::stacks::StacksBackend;
use devops_bot::backends::BackendError;

use super::{embedded_db, on_moto};

const STACK: &str = "cc-contract-dev";

#[tokio::test]
async fn local_stacks_honour_the_stacks_contract() {
    let (_dir, db) = embedded_db();
    let stacks =
        devops_bot::backends::stacks::embedded::LocalStacks::new(db, &[STACK.to_string()]).unwrap();
    stacks.update(STACK, &version("v1")).await.unwrap();
    check(&stacks).await;
}

#[tokio::test]
async fn cloudformation_honours_the_stacks_contract() {
    let world = on_moto().await;
    world.create_stack(STACK, "v1").await;
    let backend = devops_bot::backends::stacks::aws::CloudFormation::new(world.cloudformation());
    check(&backend).await;
    assert_eq!(
        world.stack_parameter(STACK, "Version").await.as_deref(),
        Some("v2")
    );
    let refused = backend
        .update(
            STACK,
            &BTreeMap::from([("Colour".to_string(), "blue".to_string())]),
        )
        .await;
    assert!(
        matches!(&refused, Err(BackendError::Refused(message)) if message.contains("Colour") && message.contains("Version")),
        "{refused:?}"
    );
}

fn version(value: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("Version".to_string(), value.to_string())])
}

async fn check(backend: &dyn StacksBackend) {
    backend.ping().await.unwrap();
    assert!(backend
        .status(STACK)
        .await
        .unwrap()
        .unwrap()
        .ends_with("_COMPLETE"));
    assert_eq!(backend.status("cc-missing-dev").await.unwrap(), None);
    let updated = backend.update(STACK, &version("v2")).await.unwrap();
    assert_eq!(updated.action, "updated");
    assert_eq!(updated.current_status, "UPDATE_COMPLETE");
    let unchanged = backend.update(STACK, &version("v2")).await.unwrap();
    assert_eq!(unchanged.action, "no_changes");
    let kept = backend.update(STACK, &BTreeMap::new()).await.unwrap();
    assert_eq!(kept.action, "no_changes");
    assert!(matches!(
        backend.update("cc-missing-dev", &version("v3")).await,
        Err(BackendError::NotFound(_))
    ));
}
