//! Baton's one outgoing HTTP(S) client: JSON posts to a command's `response_url` and to
//! incoming webhooks, and the GETs of guard checks (crate::guards).
//!
//! It is hyper's client (already in the build for tonic and axum) with rustls and Mozilla's
//! root certificates compiled in (`webpki-roots`), so it needs no system OpenSSL nor CA
//! bundle. Every post is bounded in time; a webhook URL is a secret (whoever has it can post),
//! so logs name only its scheme and host.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one post may take, connection and answer included.
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error answer is kept for the log.
const ERROR_BODY_BYTES: usize = 512;

/// A client for JSON posts.
pub struct Outbound {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for Outbound {
    fn default() -> Outbound {
        Outbound::new()
    }
}

/// Checks that `url` is an absolute `http://` or `https://` URL with a host.
pub fn check_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{:?} is not a URL: {e}", redact(url)))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(uri),
        _ => Err(format!("{:?} is not an http:// or https:// URL", redact(url))),
    }
}

/// `scheme://host[:port]/...` of a URL: what logs may show of it.
pub fn redact(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => format!("{scheme}://{}/...", authority.as_str()),
            _ => "<url>".to_string(),
        },
        Err(_) => "<url>".to_string(),
    }
}

/// `url` without its query (which may carry a token), for messages.
pub fn without_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

impl Outbound {
    /// A client with Mozilla's root certificates.
    pub fn new() -> Outbound {
        let https =
            hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
        Outbound { client: Client::builder(TokioExecutor::new()).build(https) }
    }

    /// POSTs `body` as JSON to `url`; any 2xx answer is success. The error says what went
    /// wrong without the URL's path (it may hold a token).
    pub async fn post_json(&self, url: &str, body: &serde_json::Value) -> Result<(), String> {
        let uri = check_url(url)?;
        let where_to = redact(url);
        let data = serde_json::to_vec(body).map_err(|e| format!("encoding the message: {e}"))?;
        let request = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, concat!("baton/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(data)))
            .map_err(|e| format!("building the request to {where_to}: {e}"))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| format!("posting to {where_to}: {e}"))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let body = Limited::new(response.into_body(), 64 * 1024).collect().await.map(|b| b.to_bytes());
            let text = body.map(|b| String::from_utf8_lossy(&b[..b.len().min(ERROR_BODY_BYTES)]).into_owned());
            Err(format!("{where_to} answered {status}: {}", text.unwrap_or_default().trim()))
        };
        tokio::time::timeout(POST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("{where_to} did not answer within {POST_TIMEOUT:?}")))
    }
}

impl Outbound {
    /// GETs `url`: the status and up to `max_body` bytes of the answer. The error names the
    /// URL without its query (it may carry a token).
    pub async fn get(&self, url: &str, max_body: usize) -> Result<(u16, Vec<u8>), String> {
        let uri = check_url(url)?;
        let shown = without_query(url);
        let request = Request::get(uri)
            .header(header::USER_AGENT, concat!("baton/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("building the request: {e}"))?;
        let response = self.client.request(request).await.map_err(|e| format!("GET {shown}: {e}"))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| format!("reading the answer of {shown}: {e}"))?
            .to_bytes();
        Ok((status, body.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_redacted() {
        assert!(check_url("https://hooks.slack.com/services/T/B/secret").is_ok());
        assert!(check_url("http://127.0.0.1:9000/r").is_ok());
        assert!(check_url("ftp://example.com/").is_err());
        assert!(check_url("/relative").is_err());
        assert_eq!(redact("https://hooks.slack.com/services/T/B/secret"), "https://hooks.slack.com/...");
        let err = check_url("mailto:someone@example.com/secret").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }
}
