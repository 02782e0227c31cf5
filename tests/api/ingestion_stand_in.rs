//! A local stand-in for the Application Insights ingestion endpoint.
//!
//! The ingestion service is hosted by Azure and cannot run here, so the tests point the
//! exporter's connection string at this stand-in and look at what arrives. It records every
//! request and answers `POST /v2/track` as the real service does when it accepts everything.
//!
//! The exporter posts a gzip-compressed JSON array of envelopes (one per request, dependency,
//! metric, ...) with no authentication beyond the instrumentation key inside each envelope.
//!
//! The stand-in speaks plain HTTP. The exporter itself turns an `http://` ingestion endpoint into
//! `https://`, so a product under test only reaches it if its ingestion client keeps `http://`
//! for loopback endpoints.

use std::convert::Infallible;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::stand_in::{json_reply, lock};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// The instrumentation key in [`IngestionStandIn::connection_string`]; it ends up in every
/// envelope's `iKey`.
pub const INSTRUMENTATION_KEY: &str = "00000000-0000-4000-8000-0000000000a1";

/// A running ingestion stand-in; see the module documentation.
#[derive(Debug)]
pub struct IngestionStandIn {
    port: u16,
    uploads: Arc<Mutex<Vec<Upload>>>,
    server: JoinHandle<()>,
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Upload {
    pub method: String,
    pub path_and_query: String,
    /// In the order received; names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as sent.
    pub raw_body: Vec<u8>,
    /// The body as text, gunzipped when `content-encoding: gzip`.
    pub text: String,
}

impl Upload {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The envelopes in the body: a JSON array, as the exporter sends, or one JSON object per
    /// line, which the service accepts too. Whatever does not parse counts as no envelope.
    pub fn envelopes(&self) -> Vec<Value> {
        match serde_json::from_str::<Value>(&self.text) {
            Ok(Value::Array(items)) => items,
            Ok(item @ Value::Object(_)) => vec![item],
            _ => self
                .text
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .filter(Value::is_object)
                .collect(),
        }
    }
}

impl IngestionStandIn {
    /// Starts on http://127.0.0.1:<free port>.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the ingestion stand-in");
        let port = listener.local_addr().expect("stand-in address").port();
        let uploads = Arc::default();
        let server = tokio::spawn(serve(listener, Arc::clone(&uploads)));
        Self { port, uploads, server }
    }

    /// `InstrumentationKey=<fixed guid>;IngestionEndpoint=http://127.0.0.1:<port>/`
    pub fn connection_string(&self) -> String {
        format!(
            "InstrumentationKey={INSTRUMENTATION_KEY};IngestionEndpoint=http://127.0.0.1:{}/",
            self.port
        )
    }

    /// Every request received, in order.
    pub fn uploads(&self) -> Vec<Upload> {
        lock(&self.uploads).clone()
    }

    /// All envelopes of all uploads, flattened, in the order received.
    pub fn items(&self) -> Vec<Value> {
        lock(&self.uploads).iter().flat_map(Upload::envelopes).collect()
    }

    /// Polls until `pred(items)` holds or `timeout` passes; returns the items either way.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let items = self.items();
            if pred(&items) || Instant::now() >= deadline {
                return items;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for IngestionStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(listener: TcpListener, uploads: Arc<Mutex<Vec<Upload>>>) {
    // Connections are tasks of this set, so they end with the server.
    let mut connections = JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let uploads = Arc::clone(&uploads);
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let uploads = Arc::clone(&uploads);
                async move { Ok::<_, Infallible>(record(&uploads, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn record(uploads: &Mutex<Vec<Upload>>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let raw_body = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(_) => return json_reply(StatusCode::BAD_REQUEST, &json!({"error": "unreadable body"})),
    };
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            let value = value.to_str().map_or_else(|_| format!("{value:?}"), str::to_owned);
            (name.as_str().to_owned(), value)
        })
        .collect();
    let gzip = headers
        .iter()
        .any(|(name, value)| name == "content-encoding" && value.eq_ignore_ascii_case("gzip"));
    let upload = Upload {
        method: parts.method.to_string(),
        path_and_query: parts.uri.path_and_query().map(ToString::to_string).unwrap_or_default(),
        headers,
        text: body_text(&raw_body, gzip),
        raw_body,
    };
    let accepted = parts.method == Method::POST && parts.uri.path() == "/v2/track";
    let count = upload.envelopes().len();
    lock(uploads).push(upload);
    if accepted {
        // What the service answers when it accepts every item; the exporter reads only the
        // status, and the counts for partial success (206).
        json_reply(
            StatusCode::OK,
            &json!({"itemsReceived": count, "itemsAccepted": count, "errors": []}),
        )
    } else {
        json_reply(StatusCode::NOT_FOUND, &json!({"error": "not an ingestion path"}))
    }
}

/// The body as text. A body that claims gzip but does not inflate is kept as sent, so a test
/// can still see what arrived.
fn body_text(raw: &[u8], gzip: bool) -> String {
    if gzip {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(raw).read_to_string(&mut text).is_ok() {
            return text;
        }
    }
    String::from_utf8_lossy(raw).into_owned()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(text: &str) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text.as_bytes()).expect("compressing");
        encoder.finish().expect("compressing")
    }

    #[tokio::test]
    async fn stand_in_records_a_gzipped_upload() {
        let ingestion = IngestionStandIn::start().await;
        let endpoint = ingestion
            .connection_string()
            .split(';')
            .find_map(|pair| pair.strip_prefix("IngestionEndpoint="))
            .expect("an ingestion endpoint")
            .to_owned();
        let envelopes = json!([
            {"name": "Microsoft.ApplicationInsights.Request", "iKey": INSTRUMENTATION_KEY, "data": {"baseType": "RequestData"}},
            {"name": "Microsoft.ApplicationInsights.RemoteDependency", "iKey": INSTRUMENTATION_KEY, "data": {"baseType": "RemoteDependencyData"}},
        ]);
        let body = gzip(&envelopes.to_string());

        let response = reqwest::Client::new()
            .post(format!("{endpoint}v2/track"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::CONTENT_ENCODING, "gzip")
            .body(body.clone())
            .send()
            .await
            .expect("posting the upload");
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let answer: Value = response.json().await.expect("ingestion answer");
        assert_eq!(answer, json!({"itemsReceived": 2, "itemsAccepted": 2, "errors": []}));

        let uploads = ingestion.uploads();
        assert_eq!(uploads.len(), 1);
        let upload = &uploads[0];
        assert_eq!(upload.method, "POST");
        assert_eq!(upload.path_and_query, "/v2/track");
        assert_eq!(upload.header("Content-Encoding"), Some("gzip"));
        assert_eq!(upload.raw_body, body);
        assert_eq!(serde_json::from_str::<Value>(&upload.text).expect("JSON"), envelopes);

        let items = ingestion
            .wait_for(Duration::from_secs(5), |items| items.len() == 2)
            .await;
        assert_eq!(items, ingestion.items());
        assert_eq!(items[1]["name"], "Microsoft.ApplicationInsights.RemoteDependency");

        // Nothing else arrives: waiting ends at the timeout, with the items so far.
        let started = Instant::now();
        let items = ingestion
            .wait_for(Duration::from_millis(100), |items| items.len() > 2)
            .await;
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(items.len(), 2);
    }
}
