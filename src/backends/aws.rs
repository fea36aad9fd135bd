//! What the `aws` backends share: the SDK configuration, built from the
//! same variables the SDK's default chain reads, and how SDK errors map onto
//! [`BackendError`].

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use super::BackendError;

/// The AWS part of the configuration. Region, endpoint and static keys are
/// the SDK's own variables (`AWS_REGION`, `AWS_ENDPOINT_URL`,
/// `AWS_ACCESS_KEY_ID`…), read through the configuration seam; whatever
/// they leave unset, the SDK's default chain (profiles, SSO, instance and
/// container roles) provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// One service elsewhere than `endpoint_url` (a VPC endpoint, an emulator of its own).
    pub service_endpoints: ServiceEndpoints,
    pub static_keys: Option<StaticKeys>,
    pub profile: Option<String>,
    /// The bot's DynamoDB table (`DEVOPSBOT_TABLE`).
    pub table: String,
    /// The EventBridge bus it publishes on (`DEVOPSBOT_EVENT_BUS`).
    pub event_bus: String,
    /// The Secrets Manager secret that holds the key sealing pending secret
    /// values, shared by every replica (`DEVOPSBOT_SEALING_KEY_SECRET`).
    pub sealing_key_secret: String,
}

/// The SDK's per-service endpoint variables, which win over `AWS_ENDPOINT_URL`:
/// `AWS_ENDPOINT_URL_DYNAMODB`, `_EVENTBRIDGE`, `_SECRETS_MANAGER`, `_CLOUDFORMATION`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceEndpoints {
    pub dynamodb: Option<String>,
    pub eventbridge: Option<String>,
    pub secrets_manager: Option<String>,
    pub cloudformation: Option<String>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct StaticKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeys")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// An unreachable service must show within Slack's 3 s, so that the person
/// is told their request is held: retries start sooner than the SDK's
/// default (1 s), and no call waits long for a connection.
const FIRST_RETRY_AFTER: Duration = Duration::from_millis(100);
const CONNECT_WITHIN: Duration = Duration::from_secs(1);
const ATTEMPT_WITHIN: Duration = Duration::from_secs(10);

pub async fn sdk_config(settings: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_initial_backoff(FIRST_RETRY_AFTER))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_WITHIN)
                .operation_attempt_timeout(ATTEMPT_WITHIN)
                .build(),
        );
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(profile) = &settings.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(keys) = &settings.static_keys {
        loader = loader.credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            keys.access_key_id.clone(),
            keys.secret_access_key.clone(),
            keys.session_token.clone(),
            None,
            "environment",
        ));
    }
    loader.load().await
}

const DENIED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "MissingAuthenticationToken",
];

const TRANSIENT: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "InternalServerError",
    "InternalFailure",
    "InternalServiceError",
    "InternalServiceErrorException",
    "ServiceUnavailable",
];

/// The error code of an SDK error, if the service sent one.
pub fn error_code<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> Option<&str> {
    match error {
        SdkError::ServiceError(service) => service.err().code(),
        _ => None,
    }
}

/// Classifies an SDK error: denied, missing, worth retrying, or refused as asked.
pub fn classify<E>(operation: &str, error: SdkError<E, HttpResponse>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (code, message) = match &error {
        // An answer whose body is not the service's own format (a proxy's, an emulator's) still has its status.
        SdkError::ServiceError(service)
            if service.err().code().is_none() && service.raw().status().as_u16() == 403 =>
        {
            return BackendError::PermissionDenied(format!("{operation}: HTTP 403, access denied"));
        }
        SdkError::ServiceError(service) => (
            service.err().code().unwrap_or_default().to_string(),
            service
                .err()
                .message()
                .map(str::to_string)
                .unwrap_or_else(|| DisplayErrorContext(&error).to_string()),
        ),
        // No answer from the service (timeout, connection, unreadable response): worth retrying.
        _ => {
            return BackendError::Unavailable(format!(
                "{operation}: {}",
                DisplayErrorContext(&error)
            ))
        }
    };
    let described = if code.is_empty() {
        format!("{operation}: {message}")
    } else {
        format!("{operation}: {code}: {message}")
    };
    if DENIED.contains(&code.as_str()) {
        BackendError::PermissionDenied(described)
    } else if code == "ResourceNotFoundException" {
        BackendError::NotFound(described)
    } else if TRANSIENT.contains(&code.as_str()) {
        BackendError::Unavailable(described)
    } else {
        BackendError::Refused(described)
    }
}

/// A request the SDK could not even build: a bug of ours, reported, not retried.
pub fn build_error(error: impl std::fmt::Display) -> BackendError {
    BackendError::Refused(format!("building an AWS request failed: {error}"))
}
