//! `SecretsBackend`: create, then update, with ARNs and versions as Secrets Manager gives them.

use devops_bot::backends::secrets::{PutAction, SecretsBackend};
use devops_bot::domain::names::SecretName;
use devops_bot::domain::secret::SecretValue;

use super::{embedded_db, on_moto, sealer};

#[tokio::test]
async fn local_vault_honours_the_secrets_contract() {
    let (dir, db) = embedded_db();
    let vault = devops_bot::backends::secrets::embedded::LocalVault::new(db, sealer(&dir));
    check(&vault).await;
    let name = SecretName::parse("/contentcraft/contract/key").unwrap();
    assert_eq!(vault.read(&name).unwrap().unwrap().expose(), "second");
}

#[tokio::test]
async fn secrets_manager_honours_the_secrets_contract() {
    let world = on_moto().await;
    let backend = devops_bot::backends::secrets::aws::SecretsManager::new(world.secrets());
    check(&backend).await;
    assert_eq!(
        world
            .secret_value("/contentcraft/contract/key")
            .await
            .as_deref(),
        Some("second")
    );
    let described = world
        .secrets()
        .describe_secret()
        .secret_id("/contentcraft/contract/key")
        .send()
        .await
        .unwrap();
    let tags: Vec<(String, String)> = described
        .tags()
        .iter()
        .map(|tag| {
            (
                tag.key().unwrap().to_string(),
                tag.value().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        tags.contains(&("createdBy".into(), "DevOpsAutomation".into())),
        "{tags:?}"
    );
    assert!(
        tags.contains(&("requestedBy".into(), "SecondAgent".into())),
        "{tags:?}"
    );
    assert_eq!(described.kms_key_id(), Some("alias/contract"));
}

async fn check(backend: &dyn SecretsBackend) {
    backend.ping().await.unwrap();
    let name = SecretName::parse("/contentcraft/contract/key").unwrap();
    let created = backend
        .put_secret(
            &name,
            &SecretValue::new("first".into()),
            Some("alias/contract"),
            "FirstAgent",
        )
        .await
        .unwrap();
    assert_eq!(created.action, PutAction::Created);
    assert!(
        created.arn.starts_with("arn:aws:secretsmanager:")
            && created.arn.contains(":secret:/contentcraft/contract/key-"),
        "{}",
        created.arn
    );
    assert!(!created.version_id.is_empty());
    let updated = backend
        .put_secret(
            &name,
            &SecretValue::new("second".into()),
            None,
            "SecondAgent",
        )
        .await
        .unwrap();
    assert_eq!(updated.action, PutAction::Updated);
    assert_eq!(updated.arn, created.arn);
    assert_ne!(updated.version_id, created.version_id);
}
