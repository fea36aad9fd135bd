//! The store on one DynamoDB table shared by every replica. Each
//! exactly-once decision is a conditional write: a request transition is
//! `version = :seen`, a dedupe key or an execution `attribute_not_exists`,
//! an outbox lease `next_at = :seen`. A transition and the effects it causes
//! go in one transaction.
//!
//! | PK              | SK         | item                                     | GSI1 (by requester)      | GSI2 (work lists)           |
//! |-----------------|------------|------------------------------------------|--------------------------|-----------------------------|
//! | `REQ#<id>`      | `REQ`      | request: `body`, `version`, `status`     | `BY#<identity>`, created | `PENDING`, created (pending)|
//! | `REQ#<id>`      | `THREAD`   | chat thread: `platform`, `channel`, `ts` |                          |                             |
//! | `DEDUPE#<key>`  | `DEDUPE`   | `expires_ms`, `ttl`                      |                          |                             |
//! | `EXEC#<reqId>`  | `EXEC`     | `started_ms`, `completion`, `ttl`        |                          |                             |
//! | `LANE#<lane>`   | `FX#<seq>` | effect: `payload`, `attempts`, `next_at`, `claimed` |                          | `OUTBOX`, `<next_at>#<seq>` |
//! | `DEAD#<lane>`   | `FX#<seq>` | dead letter: `payload`, `last_error`     |                          |                             |

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, Put, ScalarAttributeType, TableStatus,
    TimeToLiveSpecification, TransactWriteItem,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, SecondsFormat, Utc};

use super::{Effect, EffectId, Execution, QueuedEffect, Store, ThreadRef, UpdateOutcome};
use crate::backends::aws::{build_error, classify, error_code};
use crate::backends::BackendError;
use crate::domain::events::Envelope;
use crate::domain::names::RequestId;
use crate::domain::request::{Request, Status};

type Item = HashMap<String, AttributeValue>;

const BY_REQUESTER: &str = "GSI1";
const WORK_LISTS: &str = "GSI2";
const OUTBOX: &str = "OUTBOX";
/// How many pages of the outbox's work list one claim reads at most.
const WORK_LIST_PAGES: usize = 8;
const PENDING: &str = "PENDING";
/// Executions are remembered this long, so a redelivered request runs once.
const EXECUTION_MEMORY_SECS: i64 = 30 * 24 * 3600;

pub struct DynamoStore {
    client: Client,
    table: String,
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Whether a conditional write happened: false when its condition did not hold.
fn written<T, E>(
    operation: &str,
    result: Result<T, SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>>,
) -> Result<bool, BackendError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(_) => Ok(true),
        Err(error) if error_code(&error) == Some("ConditionalCheckFailedException") => Ok(false),
        Err(error) => Err(classify(operation, error)),
    }
}

fn damaged(what: &str) -> BackendError {
    BackendError::Unavailable(format!("stored data is damaged: {what}"))
}

fn text<'a>(item: &'a Item, key: &str) -> Result<&'a str, BackendError> {
    match item.get(key) {
        Some(AttributeValue::S(value)) => Ok(value),
        _ => Err(damaged(&format!("attribute {key} missing"))),
    }
}

fn number(item: &Item, key: &str) -> Result<i64, BackendError> {
    match item.get(key) {
        Some(AttributeValue::N(value)) => value
            .parse()
            .map_err(|_| damaged(&format!("attribute {key} is not a number"))),
        _ => Err(damaged(&format!("attribute {key} missing"))),
    }
}

fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("PK".to_string(), s(pk)), ("SK".to_string(), s(sk))])
}

fn request_key(id: &RequestId) -> Item {
    key(format!("REQ#{id}"), "REQ")
}

fn sortable(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The outbox work list sorts by due time, then by order of writing.
fn outbox_sort_key(next_at: i64, seq: &str) -> String {
    format!("{:013}#{seq}", next_at.max(0))
}

/// Sequence numbers increase within a process and, between processes,
/// follow the clock; the random tail keeps two replicas' numbers apart.
fn next_seq() -> String {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = Utc::now().timestamp_micros();
    let previous = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(now);
    format!("{:016}{:08x}", now.max(previous + 1), rand::random::<u32>())
}

fn effect_id(lane: &str, seq: &str) -> EffectId {
    EffectId::new(format!("{seq}|{lane}"))
}

fn effect_key(id: &EffectId) -> Result<(String, Item), BackendError> {
    let (seq, lane) = id.as_str().split_once('|').ok_or_else(|| {
        BackendError::Refused(format!("`{}` is not an outbox entry", id.as_str()))
    })?;
    Ok((
        lane.to_string(),
        key(format!("LANE#{lane}"), &format!("FX#{seq}")),
    ))
}

fn request_item(request: &Request) -> Result<Item, BackendError> {
    let created = sortable(request.created_at);
    let mut item = request_key(&request.id);
    item.insert("version".into(), n(request.version as i64));
    item.insert("status".into(), s(request.status.as_str()));
    item.insert("body".into(), s(serde_json::to_string(request)?));
    item.insert(
        "GSI1PK".into(),
        s(format!("BY#{}", request.requester.identity())),
    );
    item.insert("GSI1SK".into(), s(created.clone()));
    if request.status == Status::Pending {
        item.insert("GSI2PK".into(), s(PENDING));
        item.insert("GSI2SK".into(), s(created));
    }
    Ok(item)
}

fn decode_request(item: &Item) -> Result<Request, BackendError> {
    Ok(serde_json::from_str(text(item, "body")?)?)
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    fn put(
        &self,
        item: Item,
        condition: Option<&str>,
        values: Option<Item>,
    ) -> Result<TransactWriteItem, BackendError> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .set_condition_expression(condition.map(str::to_string))
            .set_expression_attribute_values(values)
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    fn delete(&self, key: Item) -> Result<TransactWriteItem, BackendError> {
        let delete = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().delete(delete).build())
    }

    fn effect_puts(&self, effects: &[Effect]) -> Result<Vec<TransactWriteItem>, BackendError> {
        let now = Utc::now().timestamp_millis();
        effects
            .iter()
            .map(|effect| {
                let seq = next_seq();
                let mut item = key(format!("LANE#{}", effect.lane()), &format!("FX#{seq}"));
                item.insert("payload".into(), s(serde_json::to_string(effect)?));
                item.insert("attempts".into(), n(0));
                item.insert("next_at".into(), n(now));
                item.insert("GSI2PK".into(), s(OUTBOX));
                item.insert("GSI2SK".into(), s(outbox_sort_key(now, &seq)));
                self.put(item, None, None)
            })
            .collect()
    }

    /// Writes all of `writes` or none; false, writing none, if a condition failed.
    async fn transact(&self, writes: Vec<TransactWriteItem>) -> Result<bool, BackendError> {
        Ok(self.transact_or_refused(writes).await?.is_none())
    }

    /// Writes all of `writes` or none: `Some(i)` if none were, as the condition
    /// of `writes[i]` failed (the first such).
    async fn transact_or_refused(
        &self,
        writes: Vec<TransactWriteItem>,
    ) -> Result<Option<usize>, BackendError> {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(writes))
            .send()
            .await
        {
            Ok(_) => Ok(None),
            Err(SdkError::ServiceError(service))
                if service.err().is_transaction_canceled_exception() =>
            {
                let refused = match service.err() {
                    TransactWriteItemsError::TransactionCanceledException(cancelled) => cancelled
                        .cancellation_reasons()
                        .iter()
                        .position(|reason| reason.code() == Some("ConditionalCheckFailed")),
                    _ => None,
                };
                refused.map(Some).ok_or_else(|| {
                    BackendError::Unavailable(format!(
                        "DynamoDB transaction cancelled: {:?}",
                        service.err()
                    ))
                })
            }
            Err(error) => Err(classify("DynamoDB TransactWriteItems", error)),
        }
    }

    /// Claims a dedupe `key` for `ttl`, unless it was claimed and its time is not up.
    fn claim_put(
        &self,
        dedupe_key: &str,
        ttl: Duration,
    ) -> Result<TransactWriteItem, BackendError> {
        let now = Utc::now().timestamp_millis();
        let expires = now.saturating_add(millis(ttl));
        let mut item = key(format!("DEDUPE#{dedupe_key}"), "DEDUPE");
        item.insert("expires_ms".into(), n(expires));
        // DynamoDB's TTL deletes late (or, in emulators, never): `expires_ms` decides.
        item.insert("ttl".into(), n(expires / 1000 + 1));
        self.put(
            item,
            Some("attribute_not_exists(PK) OR expires_ms <= :now"),
            Some(HashMap::from([(":now".to_string(), n(now))])),
        )
    }

    async fn get(&self, key: Item) -> Result<Option<Item>, BackendError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("DynamoDB GetItem", e))?;
        Ok(output.item)
    }

    /// Every item of a GSI partition, oldest sort key first.
    async fn query_index(&self, index: &str, partition: &str) -> Result<Vec<Item>, BackendError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression(format!("{index}PK = :pk"))
                .expression_attribute_values(":pk", s(partition))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| classify("DynamoDB Query", e))?;
            items.extend(output.items.unwrap_or_default());
            match output.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(items),
            }
        }
    }

    /// Leases the head of `lane` if its turn has come and nobody else took it.
    async fn claim_lane_head(
        &self,
        lane: &str,
        now: i64,
        leased_until: i64,
    ) -> Result<Option<QueuedEffect>, BackendError> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("PK = :pk")
            .expression_attribute_values(":pk", s(format!("LANE#{lane}")))
            .consistent_read(true)
            .limit(1)
            .send()
            .await
            .map_err(|e| classify("DynamoDB Query", e))?;
        let Some(head) = output.items.unwrap_or_default().into_iter().next() else {
            return Ok(None);
        };
        let seen = number(&head, "next_at")?;
        if seen > now {
            return Ok(None);
        }
        let seq = text(&head, "SK")?.trim_start_matches("FX#").to_string();
        let claimed = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("LANE#{lane}"), &format!("FX#{seq}"))))
            .update_expression("SET next_at = :until, GSI2SK = :sort, claimed = :claimed")
            .condition_expression("next_at = :seen")
            .expression_attribute_values(":claimed", AttributeValue::Bool(true))
            .expression_attribute_values(":until", n(leased_until))
            .expression_attribute_values(":sort", s(outbox_sort_key(leased_until, &seq)))
            .expression_attribute_values(":seen", n(seen))
            .send()
            .await;
        if !written("DynamoDB UpdateItem", claimed)? {
            return Ok(None);
        }
        Ok(Some(QueuedEffect {
            id: effect_id(lane, &seq),
            effect: serde_json::from_str(text(&head, "payload")?)?,
            attempts: u32::try_from(number(&head, "attempts")?).unwrap_or(u32::MAX),
            interrupted: matches!(head.get("claimed"), Some(AttributeValue::Bool(true))),
        }))
    }

    /// Creates the table with its indexes and TTL, for a dev account.
    /// Returns false if it already existed.
    pub async fn create_table(&self) -> Result<bool, BackendError> {
        let string_key = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_error)
        };
        let key_element = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(build_error)
        };
        let index = |name: &str| -> Result<GlobalSecondaryIndex, BackendError> {
            GlobalSecondaryIndex::builder()
                .index_name(name)
                .key_schema(key_element(&format!("{name}PK"), KeyType::Hash)?)
                .key_schema(key_element(&format!("{name}SK"), KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .map_err(build_error)
        };
        let mut create = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key_element("PK", KeyType::Hash)?)
            .key_schema(key_element("SK", KeyType::Range)?)
            .global_secondary_indexes(index(BY_REQUESTER)?)
            .global_secondary_indexes(index(WORK_LISTS)?);
        for name in ["PK", "SK", "GSI1PK", "GSI1SK", "GSI2PK", "GSI2SK"] {
            create = create.attribute_definitions(string_key(name)?);
        }
        match create.send().await {
            Ok(_) => {}
            Err(SdkError::ServiceError(service))
                if service.err().is_resource_in_use_exception() =>
            {
                return Ok(false)
            }
            Err(error) => return Err(classify("DynamoDB CreateTable", error)),
        }
        for _ in 0..120 {
            let status = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| classify("DynamoDB DescribeTable", e))?
                .table
                .and_then(|table| table.table_status);
            if status == Some(TableStatus::Active) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name("ttl")
                    .enabled(true)
                    .build()
                    .map_err(build_error)?,
            )
            .send()
            .await
            .map_err(|e| classify("DynamoDB UpdateTimeToLive", e))?;
        Ok(true)
    }

    /// Refuses to start on a table that is missing or lacks the indexes the bot needs.
    pub async fn verify_table(&self) -> Result<(), BackendError> {
        let described = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await;
        let table = match described {
            Ok(output) => output.table.ok_or_else(|| {
                BackendError::Unavailable("DynamoDB DescribeTable answered without a table".into())
            })?,
            Err(SdkError::ServiceError(service)) if service.err().is_resource_not_found_exception() => {
                return Err(BackendError::NotFound(format!(
                    "DynamoDB table `{}` does not exist; create it with `devops-bot init-aws` (layout in README.md)",
                    self.table
                )))
            }
            Err(error) => return Err(classify("DynamoDB DescribeTable", error)),
        };
        let indexes: Vec<&str> = table
            .global_secondary_indexes()
            .iter()
            .filter_map(|index| index.index_name())
            .collect();
        let missing: Vec<&str> = [BY_REQUESTER, WORK_LISTS]
            .into_iter()
            .filter(|name| !indexes.contains(name))
            .collect();
        if !missing.is_empty() {
            return Err(BackendError::Refused(format!(
                "DynamoDB table `{}` lacks the index(es) {}; recreate it with `devops-bot init-aws` (layout in README.md)",
                self.table,
                missing.join(", ")
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn create_request(
        &self,
        request: &Request,
        effects: &[Effect],
    ) -> Result<(), BackendError> {
        let mut writes = vec![self.put(
            request_item(request)?,
            Some("attribute_not_exists(PK)"),
            None,
        )?];
        writes.extend(self.effect_puts(effects)?);
        if self.transact(writes).await? {
            Ok(())
        } else {
            Err(BackendError::Refused(format!(
                "request {} already exists",
                request.id
            )))
        }
    }

    async fn request(&self, id: &RequestId) -> Result<Option<Request>, BackendError> {
        self.get(request_key(id))
            .await?
            .map(|item| decode_request(&item))
            .transpose()
    }

    async fn update_request_claiming(
        &self,
        request: &Request,
        effects: &[Effect],
        claim: Option<(&str, Duration)>,
    ) -> Result<UpdateOutcome, BackendError> {
        let mut stored = request.clone();
        stored.version = request.version + 1;
        let mut writes = Vec::new();
        if let Some((dedupe_key, ttl)) = claim {
            writes.push(self.claim_put(dedupe_key, ttl)?);
        }
        let request_write = writes.len();
        writes.push(self.put(
            request_item(&stored)?,
            Some("version = :seen"),
            Some(HashMap::from([(
                ":seen".to_string(),
                n(request.version as i64),
            )])),
        )?);
        writes.extend(self.effect_puts(effects)?);
        Ok(match self.transact_or_refused(writes).await? {
            None => UpdateOutcome::Written,
            Some(refused) if refused == request_write => UpdateOutcome::Stale,
            Some(_) => UpdateOutcome::Repeated,
        })
    }

    async fn requests_by(
        &self,
        identity: &str,
        limit: usize,
    ) -> Result<Vec<Request>, BackendError> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_REQUESTER)
            .key_condition_expression("GSI1PK = :pk")
            .expression_attribute_values(":pk", s(format!("BY#{identity}")))
            .scan_index_forward(false)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| classify("DynamoDB Query", e))?;
        output
            .items
            .unwrap_or_default()
            .iter()
            .map(decode_request)
            .collect()
    }

    async fn pending_requests(&self) -> Result<Vec<Request>, BackendError> {
        self.query_index(WORK_LISTS, PENDING)
            .await?
            .iter()
            .map(decode_request)
            .collect()
    }

    /// The work list of pending requests has no expiry in its key: read whole, as the
    /// sweep did before, and filtered here.
    async fn expired_requests(&self, now: DateTime<Utc>) -> Result<Vec<Request>, BackendError> {
        let mut expired: Vec<Request> = self
            .pending_requests()
            .await?
            .into_iter()
            .filter(|request| request.expires_at <= now)
            .collect();
        expired.sort_by_key(|request| request.expires_at);
        Ok(expired)
    }

    async fn card_posted(
        &self,
        effect: &EffectId,
        id: &RequestId,
        thread: &ThreadRef,
    ) -> Result<(), BackendError> {
        let (_, effect) = effect_key(effect)?;
        let request_stored = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(request_key(id)))
            .condition_expression("attribute_exists(PK)")
            .build()
            .map_err(build_error)?;
        let mut item = key(format!("REQ#{id}"), "THREAD");
        item.insert("platform".into(), s(&thread.platform));
        item.insert("channel".into(), s(&thread.channel));
        item.insert("ts".into(), s(&thread.ts));
        let written = self
            .transact(vec![
                TransactWriteItem::builder()
                    .condition_check(request_stored)
                    .build(),
                self.put(item, None, None)?,
                self.delete(effect)?,
            ])
            .await?;
        if !written {
            return Err(BackendError::Refused(format!("request {id} was not found")));
        }
        Ok(())
    }

    async fn thread(&self, id: &RequestId) -> Result<Option<ThreadRef>, BackendError> {
        let Some(item) = self.get(key(format!("REQ#{id}"), "THREAD")).await? else {
            return Ok(None);
        };
        Ok(Some(ThreadRef {
            platform: text(&item, "platform")?.to_string(),
            channel: text(&item, "channel")?.to_string(),
            ts: text(&item, "ts")?.to_string(),
        }))
    }

    async fn claim_once(
        &self,
        dedupe_key: &str,
        ttl: Duration,
        effects: &[Effect],
    ) -> Result<bool, BackendError> {
        let mut writes = vec![self.claim_put(dedupe_key, ttl)?];
        writes.extend(self.effect_puts(effects)?);
        self.transact(writes).await
    }

    async fn start_execution(
        &self,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Execution, BackendError> {
        let mut item = key(format!("EXEC#{request_id}"), "EXEC");
        item.insert("started_ms".into(), n(now.timestamp_millis()));
        item.insert("ttl".into(), n(now.timestamp() + EXECUTION_MEMORY_SECS));
        let started = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(PK)")
            .send()
            .await;
        if written("DynamoDB PutItem", started)? {
            return Ok(Execution::Started);
        }
        let Some(existing) = self.get(key(format!("EXEC#{request_id}"), "EXEC")).await? else {
            // Abandoned between our write and our read: the next delivery may take it.
            return Ok(Execution::Running { since: now });
        };
        if let Ok(completion) = text(&existing, "completion") {
            return Ok(Execution::Finished(Box::new(serde_json::from_str(
                completion,
            )?)));
        }
        let since =
            DateTime::from_timestamp_millis(number(&existing, "started_ms")?).unwrap_or(now);
        Ok(Execution::Running { since })
    }

    async fn finish_execution(
        &self,
        request_id: &str,
        completion: &Envelope,
    ) -> Result<(), BackendError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("EXEC#{request_id}"), "EXEC")))
            .update_expression("SET completion = :completion")
            .expression_attribute_values(":completion", s(serde_json::to_string(completion)?))
            .send()
            .await
            .map_err(|e| classify("DynamoDB UpdateItem", e))?;
        Ok(())
    }

    async fn abandon_execution(&self, request_id: &str) -> Result<(), BackendError> {
        let abandoned = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("EXEC#{request_id}"), "EXEC")))
            .condition_expression("attribute_not_exists(completion)")
            .send()
            .await;
        // Finished meanwhile: then there is nothing to give back.
        written("DynamoDB DeleteItem", abandoned).map(|_| ())
    }

    async fn enqueue(&self, effects: &[Effect]) -> Result<(), BackendError> {
        if effects.is_empty() {
            return Ok(());
        }
        self.transact(self.effect_puts(effects)?).await?;
        Ok(())
    }

    async fn claim_due_effects(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<QueuedEffect>, BackendError> {
        let now = now.timestamp_millis();
        let leased_until = now.saturating_add(millis(lease));
        // Every waiting effect is on the work list, not only lanes' heads: lanes
        // whose head is under way or backing off can fill pages, so reading goes
        // on until enough heads are claimed.
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut due = Vec::new();
        let mut start = None;
        for _ in 0..WORK_LIST_PAGES {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(WORK_LISTS)
                .key_condition_expression("GSI2PK = :pk AND GSI2SK <= :due")
                .expression_attribute_values(":pk", s(OUTBOX))
                .expression_attribute_values(":due", s(format!("{now:013}~")))
                .set_exclusive_start_key(start)
                .limit(256)
                .send()
                .await
                .map_err(|e| classify("DynamoDB Query", e))?;
            let mut lanes = Vec::new();
            for item in output.items.unwrap_or_default() {
                let lane = text(&item, "PK")?.trim_start_matches("LANE#").to_string();
                if seen.insert(lane.clone()) {
                    lanes.push(lane);
                }
            }
            let mut lanes = lanes.into_iter().peekable();
            while due.len() < limit && lanes.peek().is_some() {
                // The work list is eventually consistent; each lane's head is read and leased consistently.
                let claims: Vec<_> = lanes
                    .by_ref()
                    .take(limit - due.len())
                    .map(|lane| async move { self.claim_lane_head(&lane, now, leased_until).await })
                    .collect();
                let mut failed = None;
                for claimed in futures_util::future::join_all(claims).await {
                    match claimed {
                        Ok(claimed) => due.extend(claimed),
                        Err(error) => failed = Some(error),
                    }
                }
                // What is leased already goes out; the rest waits for the next claim.
                match failed {
                    Some(error) if due.is_empty() => return Err(error),
                    Some(error) => {
                        tracing::warn!(%error, "outbox: claiming a lane's head failed");
                        return Ok(due);
                    }
                    None => {}
                }
            }
            start = output.last_evaluated_key;
            if due.len() >= limit || start.is_none() {
                break;
            }
        }
        Ok(due)
    }

    async fn next_effect_at(&self) -> Result<Option<DateTime<Utc>>, BackendError> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(WORK_LISTS)
            .key_condition_expression("GSI2PK = :pk")
            .expression_attribute_values(":pk", s(OUTBOX))
            .limit(1)
            .send()
            .await
            .map_err(|e| classify("DynamoDB Query", e))?;
        let Some(first) = output.items.unwrap_or_default().into_iter().next() else {
            return Ok(None);
        };
        Ok(DateTime::from_timestamp_millis(number(&first, "next_at")?))
    }

    async fn effect_done(&self, id: &EffectId) -> Result<(), BackendError> {
        let (_, key) = effect_key(id)?;
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .send()
            .await
            .map_err(|e| classify("DynamoDB DeleteItem", e))?;
        Ok(())
    }

    async fn effect_retry(
        &self,
        id: &EffectId,
        at: DateTime<Utc>,
        error: &str,
        outcome_unknown: bool,
    ) -> Result<(), BackendError> {
        let (_, key) = effect_key(id)?;
        let seq = id.as_str().split('|').next().unwrap_or_default();
        let at = at.timestamp_millis();
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .update_expression(
                "SET attempts = attempts + :one, next_at = :at, GSI2SK = :sort, last_error = :error, claimed = :unknown",
            )
            .condition_expression("attribute_exists(PK)")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":at", n(at))
            .expression_attribute_values(":sort", s(outbox_sort_key(at, seq)))
            .expression_attribute_values(":error", s(error))
            .expression_attribute_values(":unknown", AttributeValue::Bool(outcome_unknown))
            .send()
            .await;
        // Not written when another replica settled it after our lease ran out.
        written("DynamoDB UpdateItem", updated).map(|_| ())
    }

    async fn effect_dead(&self, id: &EffectId, error: &str) -> Result<(), BackendError> {
        let (lane, key) = effect_key(id)?;
        let Some(mut item) = self.get(key.clone()).await? else {
            return Ok(());
        };
        item.remove("GSI2PK");
        item.remove("GSI2SK");
        item.insert("PK".into(), s(format!("DEAD#{lane}")));
        item.insert("last_error".into(), s(error));
        item.insert("died_at".into(), s(sortable(Utc::now())));
        self.transact(vec![self.delete(key)?, self.put(item, None, None)?])
            .await?;
        Ok(())
    }

    async fn outbox_depth(&self) -> Result<u64, BackendError> {
        let mut depth = 0u64;
        let mut start = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(WORK_LISTS)
                .key_condition_expression("GSI2PK = :pk")
                .expression_attribute_values(":pk", s(OUTBOX))
                .select(aws_sdk_dynamodb::types::Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| classify("DynamoDB Query", e))?;
            depth += u64::try_from(output.count).unwrap_or_default();
            match output.last_evaluated_key {
                Some(key) => start = Some(key),
                None => return Ok(depth),
            }
        }
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.get(key("PING".into(), "PING")).await.map(|_| ())
    }
}
