//! The durable spool: when ClickHouse cannot take a batch (unreachable, overloaded, timed
//! out), the batch goes to an Azure Storage queue instead, as one message, or as a blob with
//! a message pointing to it when it is larger than a message may be. The caller gets 202
//! with `spooled: true` only once the queue has the message. A queue-triggered function
//! replays it later with the batch's own deduplication token, so a batch that reached
//! ClickHouse after all is not stored twice.
//!
//! Messages are base64-encoded JSON, the Functions queue trigger's default encoding.

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, StatusCode, Transport, Url};
use azure_storage_blob::{BlobContainerClient, BlobContainerClientOptions};
use azure_storage_queue::models::{QueueClientReceiveMessagesOptions, QueueMessage};
use azure_storage_queue::{QueueClient, QueueClientOptions};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::secrets::CredentialChoice;
use crate::text::hex;

/// Where the spool is (`CHGATE_SPOOL_*` app settings).
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// `CHGATE_SPOOL_QUEUE_SERVICE_URI`, e.g. `https://acct.queue.core.windows.net`.
    pub queue_service: String,
    /// `CHGATE_SPOOL_BLOB_SERVICE_URI`, e.g. `https://acct.blob.core.windows.net`.
    pub blob_service: String,
    /// `CHGATE_SPOOL_QUEUE` (default `chgate-spool`): the queue, and the container for large
    /// batches; the Functions host moves messages that keep failing to `<queue>-poison`.
    pub name: String,
    /// A SAS token for both services (Azurite, or where identities are not available);
    /// without it, `credential` signs in.
    pub sas: Option<crate::secrets::Secret>,
    pub credential: CredentialChoice,
    /// `CHGATE_SPOOL_KEY`: signs every spooled batch, so a replay takes only what this
    /// deployment spooled (whoever else can write to the queue cannot add rows).
    pub signing_key: crate::secrets::Secret,
}

/// The largest message text the queue takes is 64 KiB, which base64 makes of 48 KiB; bodies
/// up to this size travel in the message (with room for the batch's other fields).
const MAX_INLINE_BODY: usize = 40 * 1024;

/// One spooled batch, as the queue message holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpooledBatch {
    /// The format's version.
    pub v: u8,
    /// The ingest endpoint (its table comes from the catalog at replay, not from here).
    pub endpoint: String,
    pub batch_id: String,
    /// The deduplication token the first attempt used.
    pub token: String,
    pub rows: usize,
    /// The caller's tenant, stamped in every row.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Replays tried so far (a failed replay sends the batch again with this one more).
    #[serde(default)]
    pub attempt: u32,
    /// SHA-256 of the body, hex.
    #[serde(default)]
    pub body_sha256: String,
    /// HMAC-SHA256 (hex) over endpoint, tenant, batch id, token, rows and the body's hash.
    #[serde(default)]
    pub signature: String,
    /// The JSONEachRow body, when it fits in the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Else the blob in the spool's container holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
}

/// The spool queue, or its poison queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Spool,
    Poison,
}

/// A message taken from the queue.
#[derive(Debug)]
pub struct Taken {
    pub id: String,
    pub pop_receipt: String,
    pub dequeue_count: i64,
    pub batch: Result<SpooledBatch, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("the spool failed: {0}")]
pub struct SpoolError(String);

impl From<azure_core::Error> for SpoolError {
    // Kind and status only: the error's sources name the URL, with a SAS signature in it.
    fn from(error: azure_core::Error) -> Self {
        Self(match error.http_status() {
            Some(status) => format!("{}, HTTP {}", error.kind_name(), u16::from(status)),
            None => error.kind_name().to_owned(),
        })
    }
}

trait KindName {
    fn kind_name(&self) -> &'static str;
}

impl KindName for azure_core::Error {
    fn kind_name(&self) -> &'static str {
        use azure_core::error::ErrorKind;
        match self.kind() {
            ErrorKind::HttpResponse { .. } => "storage refused the request",
            ErrorKind::Connection => "storage unreachable",
            ErrorKind::Io => "storage did not answer",
            ErrorKind::Credential => "no token for storage",
            ErrorKind::DataConversion => "unexpected answer from storage",
            _ => "storage call failed",
        }
    }
}

/// The spool's queue, poison queue and container.
pub struct Spool {
    key: aws_lc_rs::hmac::Key,
    queue: QueueClient,
    poison: QueueClient,
    container: BlobContainerClient,
    created: tokio::sync::OnceCell<()>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").finish_non_exhaustive()
    }
}

/// The most one spool call may take, retries included.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

impl Spool {
    pub fn new(settings: &SpoolSettings) -> anyhow::Result<Self> {
        let credential: Option<Arc<dyn TokenCredential>> = match &settings.sas {
            Some(_) => None,
            None => Some(crate::secrets::key_vault::credential(&settings.credential)?),
        };
        let url = |service: &str, path: &str| -> anyhow::Result<Url> {
            let base = format!("{}/{path}", service.trim_end_matches('/'));
            let url = match &settings.sas {
                Some(sas) => format!("{base}?{}", sas.expose().trim_start_matches('?')),
                None => base,
            };
            // The error must not carry the URL: it holds the SAS.
            Url::parse(&url).map_err(|_| anyhow::anyhow!("the spool's service URI {service:?} is not a URL"))
        };
        let client_options = || -> anyhow::Result<ClientOptions> {
            let http = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .read_timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()?;
            Ok(ClientOptions {
                transport: Some(Transport::new(Arc::new(http))),
                retry: RetryOptions::exponential(ExponentialRetryOptions {
                    initial_delay: azure_core::time::Duration::milliseconds(200),
                    max_retries: 2,
                    max_delay: azure_core::time::Duration::seconds(2),
                    max_total_elapsed: azure_core::time::Duration::seconds(5),
                }),
                ..Default::default()
            })
        };
        let queue_options = || -> anyhow::Result<QueueClientOptions> {
            Ok(QueueClientOptions {
                client_options: client_options()?,
                ..Default::default()
            })
        };
        let poison_name = format!("{}-poison", settings.name);
        // The platform passes a Key Vault reference it could not resolve through verbatim,
        // which would otherwise pass as a long enough key.
        anyhow::ensure!(
            !settings
                .signing_key
                .expose()
                .trim_start()
                .starts_with("@Microsoft.KeyVault("),
            "CHGATE_SPOOL_KEY is a Key Vault reference the platform did not resolve: give the \
             app's identity the Key Vault Secrets User role and check the secret URI"
        );
        anyhow::ensure!(
            settings.signing_key.expose().len() >= 32,
            "CHGATE_SPOOL_KEY must be at least 32 characters (a random secret, the same on every instance)"
        );
        Ok(Self {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, settings.signing_key.expose().as_bytes()),
            queue: QueueClient::new(
                url(&settings.queue_service, &settings.name)?,
                credential.clone(),
                Some(queue_options()?),
            )?,
            poison: QueueClient::new(
                url(&settings.queue_service, &poison_name)?,
                credential.clone(),
                Some(queue_options()?),
            )?,
            container: BlobContainerClient::new(
                url(&settings.blob_service, &settings.name)?,
                credential,
                Some(BlobContainerClientOptions {
                    client_options: client_options()?,
                    ..Default::default()
                }),
            )?,
            created: tokio::sync::OnceCell::new(),
        })
    }

    /// Creates the queues and the container once (each create is idempotent).
    async fn ensure_created(&self) -> Result<(), SpoolError> {
        self.created
            .get_or_try_init(|| async {
                self.queue.create(None).await?;
                self.poison.create(None).await?;
                match self.container.create(None).await {
                    Err(error) if error.http_status() != Some(StatusCode::Conflict) => return Err(error.into()),
                    _ => {}
                }
                Ok::<(), SpoolError>(())
            })
            .await
            .map(|_| ())
    }

    /// Puts a batch in the spool; `Ok` only once the queue holds its message.
    pub async fn put(&self, mut batch: SpooledBatch, body: &Bytes) -> Result<(), SpoolError> {
        let call = async {
            self.ensure_created().await?;
            batch.body_sha256 = sha256_hex(body);
            batch.signature = self.sign(&batch);
            if body.len() <= MAX_INLINE_BODY {
                batch.body = Some(String::from_utf8_lossy(body).into_owned());
            } else {
                // One blob per message (a retried batch spooled twice gets two), flat names
                // (the SDK encodes '/'). Blobs stay after replay: a redelivered message must
                // still find its rows. A lifecycle rule removes them (docs/ingestion.md).
                let name = format!("batch-{}-{}.jsonl", batch.token, uuid::Uuid::new_v4().simple());
                self.container
                    .blob_client(&name)
                    .upload(azure_core::http::RequestContent::from(body.to_vec()), None)
                    .await?;
                batch.body = None;
                batch.blob = Some(name);
            }
            self.send(Which::Spool, &batch, None).await
        };
        tokio::time::timeout(CALL_DEADLINE, call)
            .await
            .unwrap_or_else(|_| Err(SpoolError(format!("no answer within {CALL_DEADLINE:?}"))))
    }

    /// Sends `batch` to the spool again, hidden for `delay` (a replay ClickHouse could not
    /// take): the host then deletes the original, so the host's poison queue, whose messages
    /// expire after seven days, is never where a batch ends.
    pub async fn requeue(&self, mut batch: SpooledBatch, delay: Duration) -> Result<(), SpoolError> {
        batch.attempt += 1;
        self.send(Which::Spool, &batch, Some(delay)).await
    }

    /// Moves `batch` to the poison queue, where it stays until an operator drains it.
    pub async fn to_poison(&self, batch: &SpooledBatch) -> Result<(), SpoolError> {
        self.send(Which::Poison, batch, None).await
    }

    async fn send(&self, which: Which, batch: &SpooledBatch, delay: Option<Duration>) -> Result<(), SpoolError> {
        let json = serde_json::to_vec(batch).map_err(|e| SpoolError(e.to_string()))?;
        let message = QueueMessage {
            message_text: Some(BASE64.encode(&json)),
        };
        // A spooled batch waits as long as it takes (the default would drop it after 7 days).
        let options = azure_storage_queue::models::QueueClientSendMessageOptions {
            message_time_to_live: Some(-1),
            visibility_timeout: delay.map(|delay| i32::try_from(delay.as_secs()).unwrap_or(i32::MAX)),
            ..Default::default()
        };
        self.queue_of(which)
            .send_message(message.try_into()?, Some(options))
            .await?;
        Ok(())
    }

    fn sign(&self, batch: &SpooledBatch) -> String {
        let signed = format!(
            "v1\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
            batch.endpoint,
            batch.tenant.as_deref().unwrap_or_default(),
            batch.batch_id,
            batch.token,
            batch.rows,
            batch.body_sha256
        );
        hex(aws_lc_rs::hmac::sign(&self.key, signed.as_bytes()).as_ref())
    }

    /// Whether `batch` and its `body` are as this deployment spooled them.
    pub fn verify(&self, batch: &SpooledBatch, body: &[u8]) -> Result<(), String> {
        let expected = self.sign(batch);
        if aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), batch.signature.as_bytes()).is_err() {
            return Err("the batch's signature does not match (not spooled by this deployment)".into());
        }
        if sha256_hex(body) != batch.body_sha256 {
            return Err("the batch's body does not match its hash".into());
        }
        Ok(())
    }

    /// The body of a spooled batch: from the message, or from its blob.
    pub async fn body(&self, batch: &SpooledBatch) -> Result<Bytes, SpoolError> {
        match (&batch.body, &batch.blob) {
            (Some(body), _) => Ok(Bytes::from(body.clone())),
            (None, Some(blob)) => {
                let response = self.container.blob_client(blob).download(None).await?;
                Ok(response.body.collect().await?)
            }
            (None, None) => Err(SpoolError("the message holds no batch".into())),
        }
    }

    /// Approximate depths of the spool and its poison queue.
    pub async fn depth(&self) -> Result<(u64, u64), SpoolError> {
        self.ensure_created().await?;
        Ok((count(&self.queue).await?, count(&self.poison).await?))
    }

    fn queue_of(&self, which: Which) -> &QueueClient {
        match which {
            Which::Spool => &self.queue,
            Which::Poison => &self.poison,
        }
    }

    /// Takes up to `max` messages of the spool, hidden from others for `visibility`.
    pub async fn take(&self, max: i32, visibility: Duration) -> Result<Vec<Taken>, SpoolError> {
        self.take_from(Which::Spool, max, visibility).await
    }

    /// Takes up to `max` messages of the spool or its poison queue.
    pub async fn take_from(&self, which: Which, max: i32, visibility: Duration) -> Result<Vec<Taken>, SpoolError> {
        self.ensure_created().await?;
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(max),
            visibility_timeout: Some(i32::try_from(visibility.as_secs()).unwrap_or(30)),
            ..Default::default()
        };
        let received = self
            .queue_of(which)
            .receive_messages(Some(options))
            .await?
            .into_model()?;
        Ok(received
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|message| Taken {
                id: message.message_id.unwrap_or_default(),
                pop_receipt: message.pop_receipt.unwrap_or_default(),
                dequeue_count: message.dequeue_count.unwrap_or_default(),
                batch: decode(message.message_text.as_deref().unwrap_or_default()),
            })
            .collect())
    }

    /// Deletes a message taken with [`Spool::take`].
    pub async fn delete(&self, taken: &Taken) -> Result<(), SpoolError> {
        self.delete_from(Which::Spool, taken).await
    }

    /// Deletes a message taken with [`Spool::take_from`].
    pub async fn delete_from(&self, which: Which, taken: &Taken) -> Result<(), SpoolError> {
        self.queue_of(which)
            .delete_message(&taken.id, &taken.pop_receipt, None)
            .await?;
        Ok(())
    }
}

/// A queue's approximate message count.
async fn count(queue: &QueueClient) -> Result<u64, SpoolError> {
    use azure_storage_queue::models::QueueClientGetPropertiesResultHeaders;
    let properties = queue.get_properties(None).await?;
    Ok(properties
        .approximate_messages_count()?
        .map_or(0, |n| u64::try_from(n).unwrap_or(0)))
}

/// A message's text: base64 of the batch's JSON.
pub fn decode(text: &str) -> Result<SpooledBatch, String> {
    let json = BASE64
        .decode(text.trim())
        .map_err(|_| "the message is not base64".to_owned())?;
    serde_json::from_slice(&json).map_err(|error| format!("the message is not a spooled batch: {error}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Secret;

    fn settings(key: &str) -> SpoolSettings {
        SpoolSettings {
            queue_service: "https://acct.queue.core.windows.net".into(),
            blob_service: "https://acct.blob.core.windows.net".into(),
            name: "chgate-spool".into(),
            sas: None,
            credential: crate::secrets::CredentialChoice::DeveloperTools,
            signing_key: Secret::new(key.to_owned()),
        }
    }

    #[test]
    fn the_signing_key_must_be_long_and_resolved() {
        let unresolved = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/spool-key/)";
        let error = Spool::new(&settings(unresolved)).err().map(|error| error.to_string());
        assert!(
            error.as_deref().is_some_and(|text| text.contains("did not resolve")),
            "{error:?}"
        );
        let short = Spool::new(&settings("short")).err().map(|error| error.to_string());
        assert!(
            short.as_deref().is_some_and(|text| text.contains("at least 32")),
            "{short:?}"
        );
        assert!(Spool::new(&settings(&"k".repeat(32))).is_ok());
    }
}
