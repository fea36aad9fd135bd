//! devops-bot: the chat front door of the EventBridge DevOps API.
//!
//! Layout: chat platforms at the edge (`slack`), the domain in the middle
//! (`domain`, `requests`, `executor`), backends behind traits (`backends`).
#![forbid(unsafe_code)]

pub mod backends;
pub mod cards;
pub mod chat;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod executor;
pub mod http;
pub mod metrics;
pub mod requests;
pub mod slack;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch, Notify};

use backends::bus::embedded::EmbeddedBus;
use backends::bus::{Routes, Rule};
use backends::secrets::embedded::LocalVault;
use backends::secrets::SecretsBackend;
use backends::sqlite::Database;
use backends::stacks::embedded::LocalStacks;
use backends::stacks::StacksBackend;
use backends::store::embedded::SqliteStore;
use backends::store::Store;
use chat::ChatPlatform;
use config::Config;
use domain::events::{Envelope, DEVOPS_COMPLETED, DEVOPS_REQUEST, EXECUTOR_SOURCE};
use domain::secret::Sealer;

/// How long in-flight HTTP requests get to finish on shutdown.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
const EXPIRY_SWEEP_EVERY: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error(transparent)]
    Backend(#[from] backends::BackendError),
    #[error(transparent)]
    Seal(#[from] domain::secret::SealError),
    #[error(transparent)]
    Cards(#[from] cards::CardError),
    #[error("Slack client: {0}")]
    Slack(std::io::Error),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// The built service: bound, with its workers ready to start.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    bus: Arc<EmbeddedBus>,
    delivery: Arc<delivery::Delivery>,
    requests: Arc<requests::RequestService>,
    vault: Arc<LocalVault>,
    stacks: Arc<LocalStacks>,
    summary: String,
}

impl Application {
    pub async fn build(config: Config) -> Result<Application, StartError> {
        let data_dir = &config.data_dir;
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StartError::DataDir(data_dir.display().to_string(), e))?;
        let db = Database::open(&data_dir.join("state.db"))?;
        let sealer = Sealer::from_key_file(&data_dir.join("vault.key"))?;
        let cards = cards::Cards::load(config.cards_dir.as_deref())?;

        let store: Arc<dyn Store> = Arc::new(SqliteStore::new(db.clone()));
        let bus = EmbeddedBus::new(db.clone(), sealer.clone());
        let vault = Arc::new(LocalVault::new(db.clone(), sealer.clone()));
        let stacks = Arc::new(LocalStacks::new(db.clone(), &config.embedded_stacks)?);
        let metrics = Arc::new(metrics::Metrics::default());
        let outbox_wake = Arc::new(Notify::new());

        let requests = Arc::new(requests::RequestService::new(
            store.clone(),
            config.policy.clone(),
            sealer,
            config.stage,
            outbox_wake.clone(),
        ));
        let executor = Arc::new(executor::Executor {
            store: store.clone(),
            bus: bus.clone(),
            secrets: vault.clone(),
            stacks: stacks.clone(),
        });
        let routes = Routes::default()
            .route(
                Rule {
                    detail_type: DEVOPS_REQUEST,
                    // Every request reaches the executor, which refuses non-agent sources by name.
                    source_prefix: "",
                    target: "executor",
                },
                executor,
            )
            .route(
                Rule {
                    detail_type: DEVOPS_COMPLETED,
                    source_prefix: EXECUTOR_SOURCE,
                    target: "notifier",
                },
                Arc::new(requests::CompletionNotifier(requests.clone())),
            );
        bus.attach(routes.clone());

        let slack_client = match &config.slack.bot_token {
            Some(token) => Some(Arc::new(
                slack::SlackChat::new(&config.slack.api_url, token).map_err(StartError::Slack)?,
            )),
            None => None,
        };
        let mut platforms: HashMap<String, Arc<dyn ChatPlatform>> = HashMap::new();
        if let Some(client) = &slack_client {
            platforms.insert("slack".into(), client.clone());
        }
        let delivery = Arc::new(delivery::Delivery {
            store: store.clone(),
            bus: bus.clone(),
            requests: requests.clone(),
            cards,
            platforms,
            wake: outbox_wake,
            metrics: metrics.clone(),
        });

        let core = http::CoreState {
            store: store.clone(),
            bus: bus.clone(),
            secrets: vault.clone() as Arc<dyn SecretsBackend>,
            stacks: stacks.clone() as Arc<dyn StacksBackend>,
            routes,
            events_api_key: config.events_api_key.clone(),
            metrics: metrics.clone(),
        };
        let slack_state = slack::SlackState::new(
            requests.clone(),
            store,
            slack_client,
            config.slack.signing_secret.as_deref(),
        );
        let router = http::router(core)
            .merge(slack::router(slack_state))
            .layer(axum::middleware::from_fn_with_state(metrics, http::track));

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Listen(config.listen, e))?;
        let address = listener
            .local_addr()
            .map_err(|e| StartError::Listen(config.listen, e))?;
        let unconfigured = config.unconfigured();
        let summary = format!(
            "devops-bot listening on http://{address}\n  backends: embedded (SQLite {}, in-process bus, local vault, local stacks {:?})\n  config: {}; default stage {}\n  unconfigured: {}",
            data_dir.join("state.db").display(),
            config.embedded_stacks,
            config.config_source,
            config.stage,
            if unconfigured.is_empty() { "nothing".to_string() } else { unconfigured.join(", ") },
        );
        Ok(Application {
            listener,
            router,
            bus,
            delivery,
            requests,
            vault,
            stacks,
            summary,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Where it listens, which backends, what is unconfigured.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// Every event published on the embedded bus from now on.
    pub fn published_events(&self) -> broadcast::Receiver<Envelope> {
        self.bus.subscribe()
    }

    pub fn vault(&self) -> Arc<LocalVault> {
        self.vault.clone()
    }

    pub fn stacks(&self) -> Arc<LocalStacks> {
        self.stacks.clone()
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests
    /// (up to a deadline) and stops the workers.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || {
            let mut stop_rx = stop_rx.clone();
            async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            }
        };
        let workers = [
            tokio::spawn(self.bus.clone().run(stopped())),
            tokio::spawn(self.delivery.clone().run(stopped())),
            tokio::spawn(requests::run_expiry(
                self.requests.clone(),
                EXPIRY_SWEEP_EVERY,
                stopped(),
            )),
        ];
        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(self.listener, self.router).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = drain_tx.send(());
        });
        let served = tokio::select! {
            served = server => served,
            _ = async {
                let _ = drain_rx.await;
                tokio::time::sleep(SHUTDOWN_DEADLINE).await;
            } => {
                tracing::warn!("shutdown deadline passed; dropping in-flight requests");
                Ok(())
            }
        };
        let _ = stop_tx.send(true);
        for worker in workers {
            let _ = worker.await;
        }
        served
    }
}
