//! devops-bot: the chat front door of the EventBridge DevOps API.
//!
//! Layout: chat platforms at the edge (`slack`), the domain in the middle
//! (`domain`, `requests`, `executor`), backends behind traits (`backends`).
#![forbid(unsafe_code)]

pub mod answers;
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

use backends::bus::{Routes, Rule};
use backends::open::{Backends, Embedded};
use chat::ChatPlatform;
use config::{Backend, Config};
use domain::events::{Envelope, DEVOPS_COMPLETED, DEVOPS_REQUEST, EXECUTOR_SOURCE};

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
    embedded: Option<Embedded>,
    delivery: Arc<delivery::Delivery>,
    requests: Arc<requests::RequestService>,
    answers_due: Arc<answers::AnswersDue>,
    summary: String,
}

impl Application {
    pub async fn build(config: Config) -> Result<Application, StartError> {
        let cards = cards::Cards::load(config.cards_dir.as_deref())?;
        let Backends {
            store,
            bus,
            secrets,
            stacks,
            sealer,
            embedded,
            description,
        } = match &config.backend {
            Backend::Embedded => {
                backends::open::embedded(&config.data_dir, &config.embedded_stacks)?
            }
            Backend::Aws(settings) => backends::open::aws(settings).await?,
        };
        let metrics = Arc::new(metrics::Metrics::default());
        let answers_due = Arc::new(answers::AnswersDue::default());
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
            secrets: secrets.clone(),
            stacks: stacks.clone(),
            metrics: metrics.clone(),
            sole_executor_since: embedded.is_some().then(chrono::Utc::now),
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
        if let Some(embedded) = &embedded {
            embedded.bus.attach(routes.clone());
        }

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
            answers_due: answers_due.clone(),
        });

        let core = http::CoreState {
            store: store.clone(),
            bus: bus.clone(),
            secrets,
            stacks,
            routes,
            events_api_key: config.events_api_key.clone(),
            metrics: metrics.clone(),
        };
        let slack_state = slack::SlackState::new(
            requests.clone(),
            store,
            slack_client,
            config.slack.signing_secret.as_deref(),
            answers_due.clone(),
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
            "devops-bot listening on http://{address}\n  backends: {description}\n  config: {}; default stage {}\n  unconfigured: {}",
            config.config_source,
            config.stage,
            if unconfigured.is_empty() { "nothing".to_string() } else { unconfigured.join(", ") },
        );
        Ok(Application {
            listener,
            router,
            embedded,
            delivery,
            requests,
            answers_due,
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

    /// Every event published on the embedded bus from now on (None on `aws`,
    /// where EventBridge has them).
    pub fn published_events(&self) -> Option<broadcast::Receiver<Envelope>> {
        self.embedded
            .as_ref()
            .map(|embedded| embedded.bus.subscribe())
    }

    /// The chat requests waiting for their answers; the outbox gives way to a crowd of them.
    pub fn answers_due(&self) -> Arc<answers::AnswersDue> {
        self.answers_due.clone()
    }

    /// The embedded backends, for operators' tools and tests to look into.
    pub fn embedded(&self) -> Option<&Embedded> {
        self.embedded.as_ref()
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
        let mut workers = vec![
            tokio::spawn(self.delivery.clone().run(stopped())),
            tokio::spawn(requests::run_expiry(
                self.requests.clone(),
                EXPIRY_SWEEP_EVERY,
                stopped(),
            )),
        ];
        if let Some(embedded) = &self.embedded {
            workers.push(tokio::spawn(embedded.bus.clone().run(stopped())));
        }
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
        // Effects under way finish if they can; one cut off is taken back as interrupted.
        let finished = futures_util::future::join_all(workers);
        if tokio::time::timeout(SHUTDOWN_DEADLINE, finished)
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown deadline passed; work under way is taken back at the next start"
            );
        }
        served
    }
}
