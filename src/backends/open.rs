//! Chooses and opens the backends `DEVOPSBOT_BACKEND` names.

use std::path::Path;
use std::sync::Arc;

use super::aws::{sdk_config, AwsSettings};
use super::bus::aws::EventBridgeBus;
use super::bus::embedded::EmbeddedBus;
use super::bus::EventBus;
use super::secrets::aws::SecretsManager;
use super::secrets::embedded::LocalVault;
use super::secrets::SecretsBackend;
use super::sqlite::Database;
use super::stacks::aws::CloudFormation;
use super::stacks::embedded::LocalStacks;
use super::stacks::StacksBackend;
use super::store::aws::DynamoStore;
use super::store::embedded::SqliteStore;
use super::store::Store;
use super::BackendError;
use crate::domain::secret::Sealer;
use crate::StartError;

pub struct Backends {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn EventBus>,
    pub secrets: Arc<dyn SecretsBackend>,
    pub stacks: Arc<dyn StacksBackend>,
    /// Seals secret values while their requests wait for approval.
    pub sealer: Sealer,
    /// The in-process parts, which need a worker and which tests can look into.
    pub embedded: Option<Embedded>,
    /// One line for the start-up summary.
    pub description: String,
}

#[derive(Clone)]
pub struct Embedded {
    pub bus: Arc<EmbeddedBus>,
    pub vault: Arc<LocalVault>,
    pub stacks: Arc<LocalStacks>,
}

pub fn embedded(data_dir: &Path, stacks: &[String]) -> Result<Backends, StartError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| StartError::DataDir(data_dir.display().to_string(), e))?;
    let db = Database::open(&data_dir.join("state.db"))?;
    let sealer = Sealer::from_key_file(&data_dir.join("vault.key"))?;
    let parts = Embedded {
        bus: EmbeddedBus::new(db.clone(), sealer.clone()),
        vault: Arc::new(LocalVault::new(db.clone(), sealer.clone())),
        stacks: Arc::new(LocalStacks::new(db.clone(), stacks)?),
    };
    Ok(Backends {
        store: Arc::new(SqliteStore::open(db)?),
        bus: parts.bus.clone(),
        secrets: parts.vault.clone(),
        stacks: parts.stacks.clone(),
        sealer,
        description: format!(
            "embedded (SQLite {}, in-process bus, local vault, local stacks {stacks:?})",
            data_dir.join("state.db").display()
        ),
        embedded: Some(parts),
    })
}

fn region_of(config: &aws_config::SdkConfig) -> Result<String, StartError> {
    config
        .region()
        .map(|region| region.to_string())
        .ok_or_else(|| {
            StartError::Backend(BackendError::Refused(
                "no AWS region: set AWS_REGION (or a region in the AWS profile)".into(),
            ))
        })
}

/// A service's client on the shared configuration, at the service's own
/// endpoint if one is set.
macro_rules! client {
    ($sdk:ident, $config:expr, $endpoint:expr) => {{
        let mut builder = $sdk::config::Builder::from($config);
        if let Some(url) = $endpoint.as_deref() {
            builder = builder.endpoint_url(url);
        }
        $sdk::Client::from_conf(builder.build())
    }};
}

pub async fn aws(settings: &AwsSettings) -> Result<Backends, StartError> {
    let config = sdk_config(settings).await;
    let region = region_of(&config)?;
    let endpoints = &settings.service_endpoints;
    let store = DynamoStore::new(
        client!(aws_sdk_dynamodb, &config, endpoints.dynamodb),
        &settings.table,
    );
    store.verify_table().await?;
    let secrets = SecretsManager::new(client!(
        aws_sdk_secretsmanager,
        &config,
        endpoints.secrets_manager
    ));
    let sealer = shared_sealer(&secrets, &settings.sealing_key_secret).await?;
    Ok(Backends {
        store: Arc::new(store),
        bus: Arc::new(EventBridgeBus::new(
            client!(aws_sdk_eventbridge, &config, endpoints.eventbridge),
            &settings.event_bus,
        )),
        secrets: Arc::new(secrets),
        stacks: Arc::new(CloudFormation::new(client!(
            aws_sdk_cloudformation,
            &config,
            endpoints.cloudformation
        ))),
        sealer,
        embedded: None,
        description: format!(
            "aws in {region}{} (DynamoDB table {}, EventBridge bus {}, Secrets Manager, CloudFormation)",
            settings
                .endpoint_url
                .as_deref()
                .map(|url| format!(" via {url}"))
                .unwrap_or_default(),
            settings.table,
            settings.event_bus
        ),
    })
}

async fn shared_sealer(secrets: &SecretsManager, name: &str) -> Result<Sealer, StartError> {
    let key = secrets
        .get_or_create(name, Sealer::generate_encoded_key())
        .await?;
    Ok(Sealer::from_encoded_key(name, &key)?)
}

/// `devops-bot init-aws`: creates what the `aws` backend needs in a (dev)
/// account, leaving what exists alone. Returns what it did, a line each.
pub async fn init_aws(settings: &AwsSettings) -> Result<Vec<String>, StartError> {
    let config = sdk_config(settings).await;
    let region = region_of(&config)?;
    let endpoints = &settings.service_endpoints;
    let store = DynamoStore::new(
        client!(aws_sdk_dynamodb, &config, endpoints.dynamodb),
        &settings.table,
    );
    let mut done = Vec::new();
    if store.create_table().await? {
        done.push(format!(
            "created DynamoDB table {} in {region} (PK/SK, GSI1, GSI2, TTL on `ttl`)",
            settings.table
        ));
    } else {
        done.push(format!("DynamoDB table {} already exists", settings.table));
    }
    store.verify_table().await?;
    let secrets = SecretsManager::new(client!(
        aws_sdk_secretsmanager,
        &config,
        endpoints.secrets_manager
    ));
    shared_sealer(&secrets, &settings.sealing_key_secret).await?;
    done.push(format!(
        "sealing key secret {} is in place",
        settings.sealing_key_secret
    ));
    Ok(done)
}
