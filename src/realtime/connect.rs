//! Where to connect and how to authenticate, per dialect: pure URL and header building, no I/O.
//!
//! The WebSocket shell calls [`connect_request`] with the upstream's configuration and the key
//! it has just loaded, and puts the returned header on the upgrade request. The key only ever
//! travels inside [`AuthValue`], whose `Debug` is redacted, so a logged [`ConnectTarget`] shows
//! the URL and the header's name but never the key. No dialect sends `OpenAI-Beta`: since the
//! beta shutdown that header makes the server close the socket (`beta_api_shape_disabled`).

use std::fmt;
use std::net::SocketAddr;

use url::Url;

use super::{Dialect, Error};
use crate::config::{SecretString, UpstreamConfig};

/// OpenAI's GA endpoint, used unless the upstream gives its own `url`.
pub const OPENAI_REALTIME_URL: &str = "wss://api.openai.com/v1/realtime";

/// The header that carries the key: OpenAI takes a bearer token, Azure an `api-key`.
pub const AUTHORIZATION: &str = "authorization";
pub const API_KEY: &str = "api-key";

/// The value of the authentication header. Redacted in `Debug`; read it with
/// [`AuthValue::expose`] only where it goes into the request.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthValue(String);

impl AuthValue {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AuthValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The WebSocket URL (`wss://`, or `ws://` for a loopback service) and the one header that
/// authenticates the upgrade request (none for the fake server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectTarget {
    pub url: Url,
    /// `(header name, value)`; the name is [`AUTHORIZATION`] or [`API_KEY`].
    pub auth_header: Option<(&'static str, AuthValue)>,
}

/// Builds the connect target of a real upstream. `api_key` is the upstream's loaded secret.
///
/// The fake upstream has no fixed address (the shell starts it on an ephemeral loopback port),
/// so it is refused here: build its URL with [`fake_url`].
pub fn connect_request(
    upstream: &UpstreamConfig,
    api_key: Option<&SecretString>,
) -> Result<ConnectTarget, Error> {
    let key = |kind| {
        api_key
            .map(SecretString::expose)
            .ok_or(Error::MissingApiKey { kind })
    };
    match upstream {
        UpstreamConfig::Openai(u) => {
            let mut url = match &u.url {
                Some(custom) => custom.url().clone(),
                None => Url::parse(OPENAI_REALTIME_URL).map_err(|_| Error::BadEndpoint)?,
            };
            // Keep a gateway's own query parameters; only `model` is ours.
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(name, _)| name != "model")
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect();
            url.query_pairs_mut()
                .clear()
                .extend_pairs(kept)
                .append_pair("model", &u.model);
            Ok(ConnectTarget {
                url,
                auth_header: Some((
                    AUTHORIZATION,
                    AuthValue(format!("Bearer {}", key("openai")?)),
                )),
            })
        }
        UpstreamConfig::Azure(u) => {
            let mut url = azure_url(u.endpoint.url(), "openai/v1/realtime");
            url.query_pairs_mut().append_pair("model", &u.deployment);
            Ok(ConnectTarget {
                url,
                auth_header: Some((API_KEY, AuthValue(key("azure")?.to_owned()))),
            })
        }
        UpstreamConfig::AzurePreview(u) => {
            let mut url = azure_url(u.endpoint.url(), "openai/realtime");
            url.query_pairs_mut()
                .append_pair("api-version", &u.api_version)
                .append_pair("deployment", &u.deployment);
            Ok(ConnectTarget {
                url,
                auth_header: Some((API_KEY, AuthValue(key("azure-preview")?.to_owned()))),
            })
        }
        UpstreamConfig::Fake(_) => Err(Error::FakeUpstream),
    }
}

/// `{endpoint}/{path}` with no query: the endpoint is the resource's base URL as the portal shows
/// it, possibly with a trailing slash or a path prefix from a gateway.
fn azure_url(endpoint: &Url, path: &str) -> Url {
    let mut url = endpoint.clone();
    let base = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{base}/{path}"));
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// The URL of the fake realtime server listening on `base`, shaped like `dialect`'s real URL so
/// the fake sees the same path and query the real service would.
pub fn fake_url(base: SocketAddr, dialect: Dialect) -> Url {
    let path_and_query = match dialect {
        Dialect::OpenAiGa => "/v1/realtime?model=fake",
        Dialect::AzureGa => "/openai/v1/realtime?model=fake",
        Dialect::AzurePreview => "/openai/realtime?api-version=2025-04-01-preview&deployment=fake",
    };
    // `SocketAddr`'s Display brackets IPv6 hosts, so this is always a valid authority.
    Url::parse(&format!("ws://{base}{path_and_query}"))
        .expect("a socket address and a fixed path always form a valid ws:// URL")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn upstream(toml: &str) -> UpstreamConfig {
        let config = Config::from_toml(&format!(
            "[upstreams.u]\n{toml}\n[profiles.p]\nupstream = \"u\"\n[[routes]]\nprofile = \"p\"\n"
        ))
        .unwrap();
        config.upstreams.into_values().next().unwrap()
    }

    fn key() -> SecretString {
        crate::config::SecretSource::Env("K".into())
            .load_with(|_| Some("sk-secret-123".into()))
            .unwrap()
    }

    #[test]
    fn openai_ga_uses_model_query_and_bearer_token() {
        let u = upstream("kind = \"openai\"\nmodel = \"gpt-realtime\"\napi_key_env = \"K\"");
        let target = connect_request(&u, Some(&key())).unwrap();
        assert_eq!(
            target.url.as_str(),
            "wss://api.openai.com/v1/realtime?model=gpt-realtime"
        );
        let (name, value) = target.auth_header.clone().unwrap();
        assert_eq!(
            (name, value.expose()),
            ("authorization", "Bearer sk-secret-123")
        );
        let debug = format!("{target:?}");
        assert!(!debug.contains("sk-secret"), "{debug}");
    }

    #[test]
    fn openai_url_override_keeps_its_query_and_gets_model() {
        let u = upstream(
            "kind = \"openai\"\nurl = \"wss://gw.example/rt?tenant=a&model=old\"\n\
             model = \"gpt-realtime-mini\"\napi_key_env = \"K\"",
        );
        let target = connect_request(&u, Some(&key())).unwrap();
        assert_eq!(
            target.url.as_str(),
            "wss://gw.example/rt?tenant=a&model=gpt-realtime-mini"
        );
    }

    #[test]
    fn azure_ga_passes_the_deployment_as_model_without_api_version() {
        let u = upstream(
            "kind = \"azure\"\nendpoint = \"https://res.openai.azure.com/\"\n\
             deployment = \"my-rt\"\napi_key_env = \"K\"",
        );
        let target = connect_request(&u, Some(&key())).unwrap();
        assert_eq!(
            target.url.as_str(),
            "wss://res.openai.azure.com/openai/v1/realtime?model=my-rt"
        );
        let (name, value) = target.auth_header.unwrap();
        assert_eq!((name, value.expose()), ("api-key", "sk-secret-123"));
    }

    #[test]
    fn azure_preview_passes_api_version_and_deployment() {
        let u = upstream(
            "kind = \"azure-preview\"\nendpoint = \"https://res.openai.azure.com\"\n\
             deployment = \"old-rt\"\napi_key_env = \"K\"",
        );
        let target = connect_request(&u, Some(&key())).unwrap();
        assert_eq!(
            target.url.as_str(),
            "wss://res.openai.azure.com/openai/realtime?api-version=2025-04-01-preview&deployment=old-rt"
        );
        assert_eq!(target.auth_header.unwrap().0, "api-key");
    }

    #[test]
    fn missing_key_and_fake_upstream_are_errors() {
        let u = upstream("kind = \"openai\"\napi_key_env = \"K\"");
        assert_eq!(
            connect_request(&u, None),
            Err(Error::MissingApiKey { kind: "openai" })
        );
        let fake = upstream("kind = \"fake\"");
        assert_eq!(connect_request(&fake, None), Err(Error::FakeUpstream));
        assert_eq!(Dialect::for_upstream(&fake), Dialect::OpenAiGa);
    }

    #[test]
    fn fake_urls_mirror_each_dialect() {
        let v4: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let v6: SocketAddr = "[::1]:9001".parse().unwrap();
        assert_eq!(
            fake_url(v4, Dialect::OpenAiGa).as_str(),
            "ws://127.0.0.1:9000/v1/realtime?model=fake"
        );
        assert_eq!(
            fake_url(v6, Dialect::AzureGa).as_str(),
            "ws://[::1]:9001/openai/v1/realtime?model=fake"
        );
        assert_eq!(
            fake_url(v4, Dialect::AzurePreview).as_str(),
            "ws://127.0.0.1:9000/openai/realtime?api-version=2025-04-01-preview&deployment=fake"
        );
    }
}
