//! The exporter's HTTP client.
//!
//! The exporter sends on a thread of its own with a blocking client, which must be built
//! outside the async runtime. It also rewrites every `http://` ingestion endpoint to
//! `https://`; this client sends plain HTTP again only when the connection string itself
//! names an `http://` endpoint on loopback (a local receiver, as in tests). Every other
//! endpoint goes out as the exporter asks.

use ::http::{Request, Response};
use bytes::Bytes;
use opentelemetry_application_insights::HttpClient;
use opentelemetry_http::HttpError;

#[derive(Debug, Clone)]
pub struct IngestionClient {
    http: reqwest::blocking::Client,
    plaintext_authority: Option<String>,
}

impl IngestionClient {
    pub fn new(connection_string: &str) -> anyhow::Result<Self> {
        let http = std::thread::spawn(|| {
            reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("building the telemetry HTTP client panicked"))??;
        Ok(Self {
            http,
            plaintext_authority: plaintext_loopback_authority(connection_string),
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for IngestionClient {
    async fn send_bytes(&self, mut request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let authority = request.uri().authority().map(|a| a.as_str());
        if authority.is_some() && authority == self.plaintext_authority.as_deref() {
            let mut parts = request.uri().clone().into_parts();
            parts.scheme = Some(::http::uri::Scheme::HTTP);
            *request.uri_mut() = ::http::Uri::from_parts(parts)?;
        }
        self.http.send_bytes(request).await
    }
}

/// `Some("127.0.0.1:PORT")` when the IngestionEndpoint is `http://` on a loopback host.
fn plaintext_loopback_authority(connection_string: &str) -> Option<String> {
    let endpoint = connection_string.split(';').find_map(|field| {
        let (key, value) = field.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("IngestionEndpoint")
            .then_some(value.trim())
    })?;
    let uri: ::http::Uri = endpoint.parse().ok()?;
    let loopback = matches!(uri.host()?, "127.0.0.1" | "localhost" | "[::1]");
    (uri.scheme_str() == Some("http") && loopback).then(|| uri.authority().map(|a| a.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::plaintext_loopback_authority as authority;

    #[test]
    fn plain_http_only_for_loopback_endpoints_written_with_http() {
        let ikey = "InstrumentationKey=k";
        assert_eq!(
            authority(&format!("{ikey};IngestionEndpoint=http://127.0.0.1:4318/")).as_deref(),
            Some("127.0.0.1:4318")
        );
        assert_eq!(
            authority(&format!("{ikey};IngestionEndpoint=http://[::1]:9/")).as_deref(),
            Some("[::1]:9")
        );
        assert_eq!(
            authority(&format!("{ikey};ingestionendpoint=http://localhost")).as_deref(),
            Some("localhost")
        );
        assert_eq!(
            authority(&format!("{ikey};IngestionEndpoint=https://127.0.0.1:4318/")),
            None
        );
        assert_eq!(
            authority(&format!(
                "{ikey};IngestionEndpoint=http://westeurope-5.in.applicationinsights.azure.com/"
            )),
            None
        );
        assert_eq!(authority(ikey), None);
    }
}
