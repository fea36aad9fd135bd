//! Prometheus metrics. Labels are route names, actions and outcomes only:
//! never user input, so no secret or name can become a label.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    http_requests: Family<Labels, Counter>,
    ack_seconds: Family<Labels, Histogram>,
    effects: Family<Labels, Counter>,
    events: Family<Labels, Counter>,
    executions: Family<Labels, Counter>,
    execution_seconds: Family<Labels, Histogram>,
    pub outbox_depth: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("devopsbot");
        let http_requests = Family::<Labels, Counter>::default();
        let ack_seconds = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        let effects = Family::<Labels, Counter>::default();
        let events = Family::<Labels, Counter>::default();
        let executions = Family::<Labels, Counter>::default();
        let execution_seconds = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let outbox_depth = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status class",
            http_requests.clone(),
        );
        registry.register(
            "ack_seconds",
            "Time to answer an HTTP request, by route",
            ack_seconds.clone(),
        );
        registry.register(
            "effects",
            "Outbox effects carried out, by kind and outcome",
            effects.clone(),
        );
        registry.register(
            "events",
            "Events published or received, by detail-type and direction",
            events.clone(),
        );
        registry.register(
            "executor_requests",
            "devops.request events executed, by action and status (the reference's RequestCount; ErrorRate is status=error over all)",
            executions.clone(),
        );
        registry.register(
            "executor_latency_seconds",
            "Time from receiving a devops.request to its completion, by action (the reference's RequestLatency)",
            execution_seconds.clone(),
        );
        registry.register(
            "outbox_depth",
            "Effects waiting to be carried out",
            outbox_depth.clone(),
        );
        Self {
            registry,
            http_requests,
            ack_seconds,
            effects,
            events,
            executions,
            execution_seconds,
            outbox_depth,
        }
    }
}

impl Metrics {
    pub fn http_request(&self, route: &'static str, status: u16, seconds: f64) {
        let class = match status {
            200..=299 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_requests
            .get_or_create(&vec![("route", route), ("status", class)])
            .inc();
        self.ack_seconds
            .get_or_create(&vec![("route", route)])
            .observe(seconds);
    }

    pub fn effect(&self, kind: &'static str, outcome: &'static str) {
        self.effects
            .get_or_create(&vec![("kind", kind), ("outcome", outcome)])
            .inc();
    }

    pub fn event(&self, detail_type: &str, direction: &'static str) {
        let detail_type = match detail_type {
            "devops.request" => "devops.request",
            "devops.completed" => "devops.completed",
            _ => "other",
        };
        self.events
            .get_or_create(&vec![
                ("detail_type", detail_type),
                ("direction", direction),
            ])
            .inc();
    }

    pub fn execution(&self, action: &str, succeeded: bool, seconds: f64) {
        let action = match action {
            "putSecret" => "putSecret",
            "deployLambda" => "deployLambda",
            _ => "other",
        };
        let status = if succeeded { "success" } else { "error" };
        self.executions
            .get_or_create(&vec![("action", action), ("status", status)])
            .inc();
        self.execution_seconds
            .get_or_create(&vec![("action", action)])
            .observe(seconds);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
