//! Configuration: built-in defaults, then a TOML file, then `SRB_` environment variables.
//!
//! Layering is figment's: the defaults are the `Default` impls below, the file given by
//! `--config` overrides them, and environment variables prefixed `SRB_` override both, with
//! `__` between nesting levels (`SRB_LIMITS__MAX_CALLS=50`,
//! `SRB_UPSTREAMS__OPENAI__MODEL=gpt-realtime-mini`). Keys are matched case-insensitively in the
//! environment, so tables meant to be overridden that way should have lower-case names.
//!
//! Everything is checked once, here: unknown keys are errors; values have types
//! ([`types`]); cross-references (route -> profile -> upstream) are resolved. A [`Config`] that
//! exists is valid. Errors carry the key path and where the value came from (the file, or the
//! environment variable's name), so `check-config` can tell the operator exactly what to fix.
//!
//! Secrets are not values of the configuration: it holds their [`SecretSource`], and
//! [`Config::check_secrets`] tries each one so the daemon can refuse to start without them.
//!
//! `conf/bridge.toml` is the reference for every key; keep it in step with this file (a test
//! loads it).
//!
//! ```
//! use sip_realtime_bridge::config::Config;
//!
//! let config = Config::from_toml(r#"
//!     [upstreams.local]
//!     kind = "fake"
//!     [profiles.sales]
//!     upstream = "local"
//!     [profiles.support]
//!     upstream = "local"
//!     [[routes]]
//!     dialed = { prefix = "+4930" }
//!     profile = "sales"
//!     [[routes]]
//!     profile = "support"
//! "#).expect("valid");
//! assert_eq!(config.route("+49301234", "anyone").map(|r| r.label()), Some("sales"));
//! assert_eq!(config.route("100", "anyone").map(|r| r.label()), Some("support"));
//!
//! // A typo is an error that names the key.
//! let error = Config::from_toml("[limits]\nmax_cals = 5").unwrap_err();
//! assert_eq!(error.problems()[0].key, "limits.max_cals");
//! ```

pub mod secret;
pub mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;

use crate::fake_realtime::FakeOptions;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

pub use secret::{SecretError, SecretSource, SecretString};
pub use types::{
    Digit, EnvVarName, HeaderName, Listen, LogFilter, Matcher, Name, Network, PortRange,
    PublicAddress, ServiceUrl, SipUri, ToolName, Transport, WebhookUrl,
};

/// The built-in tool that hangs up (offered when a profile sets `end_call = true`).
pub const END_CALL_TOOL: &str = "end_call";
/// The built-in tool that transfers the caller (offered when a profile has transfer targets).
pub const TRANSFER_CALL_TOOL: &str = "transfer_call";
/// Names no webhook tool may take.
pub const BUILTIN_TOOLS: [&str; 2] = [END_CALL_TOOL, TRANSFER_CALL_TOOL];

/// The prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SRB_";
/// Where the systemd unit and `run` without `--config` look for the configuration.
pub const DEFAULT_PATH: &str = "/etc/sip-realtime-bridge/bridge.toml";

/// The whole, validated configuration of the daemon. Not deserialized as a whole:
/// [`Config::load`] extracts each of its tables on its own.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub log: LogConfig,
    pub sip: SipConfig,
    pub rtp: RtpConfig,
    pub limits: LimitsConfig,
    /// The admin HTTP endpoint: /metrics, /health, /ready.
    pub admin: AdminConfig,
    /// Realtime services, by name.
    pub upstreams: BTreeMap<Name, UpstreamConfig>,
    /// What the model is told and how it listens, by name.
    pub profiles: BTreeMap<Name, ProfileConfig>,
    /// Which profile answers which call; the first route that matches wins.
    pub routes: Vec<RouteConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Used when `RUST_LOG` is not set.
    pub level: LogFilter,
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for journald and log shippers.
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// Sockets to listen on, `udp:ADDR:PORT` / `tcp:ADDR:PORT`.
    pub listen: Vec<Listen>,
    /// Address to advertise in Via, Contact and SDP instead of the socket's (NAT).
    pub public_address: Option<PublicAddress>,
    /// The `User-Agent` / `Server` header value.
    pub user_agent: String,
    /// Audio codecs offered and accepted, most preferred first (telephone-event is always
    /// offered beside them).
    pub codecs: Vec<CodecName>,
    /// RFC 3261 T1, the round-trip estimate (first retransmission interval).
    #[serde(with = "humantime_serde")]
    pub t1: Duration,
    /// RFC 3261 T2, the cap on retransmission intervals.
    #[serde(with = "humantime_serde")]
    pub t2: Duration,
    /// RFC 4028 session timers.
    pub session_timers: bool,
    /// The shortest session interval accepted, in seconds (422 below it; at least 90).
    pub min_se: u32,
    /// The session interval we ask for when the caller names none, in seconds.
    pub session_expires: u32,
    /// Registrations with a PBX or registrar.
    pub accounts: Vec<AccountConfig>,
    /// Networks allowed to send INVITEs (403 from elsewhere); empty allows everyone.
    pub allow_invite_from: Vec<Network>,
}

/// One registration with a PBX or registrar (`[[sip.accounts]]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawAccount")]
pub struct AccountConfig {
    /// The label in logs and routes.
    pub name: Name,
    /// The registrar URI as written (`sip:pbx.example.com:5060`).
    pub registrar: String,
    /// The registrar's host (a name or an IP address; IPv6 without brackets).
    pub registrar_host: String,
    /// The registrar's port (5060 when the URI names none).
    pub registrar_port: u16,
    /// The user of the address of record (`sip:USER@registrar host`).
    pub username: String,
    /// The digest user name.
    pub auth_username: String,
    /// Where the password is.
    pub password: SecretSource,
    /// The expiry asked for, in seconds.
    pub expires: u32,
    /// Send REGISTERs to this host and port instead of the registrar's.
    pub outbound_proxy: Option<(String, u16)>,
    /// The transport of the REGISTERs (and of the calls the PBX sends back).
    pub transport: Transport,
    /// The user part of our Contact: the Request-URI user of the calls the PBX sends us
    /// through this account.
    pub contact_user: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    name: Name,
    registrar: String,
    username: String,
    auth_username: Option<String>,
    password_env: Option<EnvVarName>,
    password_file: Option<PathBuf>,
    #[serde(default = "default_account_expires")]
    expires: u32,
    outbound_proxy: Option<String>,
    #[serde(default = "default_account_transport")]
    transport: String,
    contact_user: Option<String>,
}

fn default_account_expires() -> u32 {
    600
}

fn default_account_transport() -> String {
    "udp".into()
}

/// `sip:host[:port][;params]` -> (host, port): no `sips:` (no TLS transport), no user part.
fn sip_host_port(key: &str, uri: &str) -> Result<(String, u16), String> {
    let bad = || format!("{key} `{uri}` is not a SIP URI such as `sip:pbx.example.com:5060`");
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("SIP:"))
        .ok_or_else(bad)?;
    let rest = rest.split(';').next().unwrap_or_default();
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => 5060,
            None => return Err(bad()),
        };
        (host.to_owned(), port)
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host.to_owned(), port.parse().map_err(|_| bad())?),
            None => (rest.to_owned(), 5060),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
    if !host_ok || port == 0 {
        return Err(bad());
    }
    Ok((host, port))
}

/// A SIP user part we put in a URI: unreserved characters only, so it needs no escaping.
fn sip_user(key: &str, user: String) -> Result<String, String> {
    let ok = !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()+".contains(&b));
    if ok {
        Ok(user)
    } else {
        Err(format!(
            "{key} `{user}` must be 1-64 letters, digits or - _ . ! ~ * ' ( ) +"
        ))
    }
}

impl TryFrom<RawAccount> for AccountConfig {
    type Error = String;
    fn try_from(raw: RawAccount) -> Result<Self, String> {
        let (registrar_host, registrar_port) = sip_host_port("registrar", &raw.registrar)?;
        let outbound_proxy = raw
            .outbound_proxy
            .as_deref()
            .map(|p| sip_host_port("outbound_proxy", p))
            .transpose()?;
        let password = match (raw.password_env, raw.password_file) {
            (Some(env), None) => SecretSource::Env(env.into_string()),
            (None, Some(path)) if path.is_absolute() => SecretSource::File(path),
            (None, Some(path)) => {
                return Err(format!(
                    "password_file `{}` must be an absolute path",
                    path.display()
                ));
            }
            (Some(_), Some(_)) => return Err("give password_env or password_file, not both".into()),
            (None, None) => return Err("missing password_env or password_file".into()),
        };
        if !(60..=86_400).contains(&raw.expires) {
            return Err(format!(
                "expires {} must be between 60 and 86400 seconds",
                raw.expires
            ));
        }
        let transport = match raw.transport.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            other => return Err(format!("transport `{other}` must be \"udp\" or \"tcp\"")),
        };
        let username = sip_user("username", raw.username)?;
        let auth_username = raw.auth_username.unwrap_or_else(|| username.clone());
        if auth_username.is_empty() || auth_username.chars().any(|c| c.is_control() || c == '"') {
            return Err("auth_username must be non-empty, without quotes".into());
        }
        let contact_user = sip_user(
            "contact_user",
            raw.contact_user.unwrap_or_else(|| username.clone()),
        )?;
        Ok(Self {
            name: raw.name,
            registrar: raw.registrar,
            registrar_host,
            registrar_port,
            username,
            auth_username,
            password,
            expires: raw.expires,
            outbound_proxy,
            transport,
            contact_user,
        })
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        let any = std::net::SocketAddr::from(([0, 0, 0, 0], 5060));
        Self {
            listen: vec![
                Listen {
                    transport: Transport::Udp,
                    addr: any,
                },
                Listen {
                    transport: Transport::Tcp,
                    addr: any,
                },
            ],
            public_address: None,
            user_agent: concat!("sip-realtime-bridge/", env!("CARGO_PKG_VERSION")).into(),
            codecs: vec![CodecName::Pcmu, CodecName::Pcma],
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            session_timers: true,
            accounts: Vec::new(),
            min_se: 90,
            session_expires: 1800,
            allow_invite_from: Vec::new(),
        }
    }
}

/// An audio codec name in `sip.codecs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodecName {
    /// G.711 mu-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
    /// Opus (`opus/48000/2`, RFC 7587), decoded straight to the model's 24 kHz.
    Opus,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtpConfig {
    /// Even ports carry RTP, the odd port above each RTCP.
    pub port_range: PortRange,
    /// No RTP from the caller for this long ends the call with BYE.
    #[serde(with = "humantime_serde")]
    pub inactivity_timeout: Duration,
}

impl Default for RtpConfig {
    fn default() -> Self {
        Self {
            port_range: "20000-29999"
                .parse()
                .expect("the default port range is valid"),
            inactivity_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Calls beyond this many are refused with 503.
    pub max_calls: NonZeroU32,
    /// A call still up after this long is ended with BYE (a stuck call must not run up the
    /// model bill).
    #[serde(with = "humantime_serde")]
    pub max_call_duration: Duration,
    /// How long a caller may wait (ringing) for the upstream session to be ready before the
    /// INVITE is refused with 503.
    #[serde(with = "humantime_serde")]
    pub answer_timeout: Duration,
    /// On SIGTERM, how long live calls may go on before they are ended with BYE.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// SIP requests per source address (IPv6: per /64); a source beyond it is ignored a while.
    pub rate: RateLimitConfig,
    /// A WebSocket ping the realtime upstream leaves unanswered this long (it stopped reading
    /// what we send) ends the call with BYE.
    #[serde(with = "humantime_serde")]
    pub upstream_stall_timeout: Duration,
    /// Model audio queued for playout at most, per call; beyond it audio is dropped (and the
    /// item truncated at what was played).
    #[serde(with = "humantime_serde")]
    pub max_queued_audio: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_calls: NonZeroU32::new(100).expect("100 is not zero"),
            max_call_duration: Duration::from_secs(2 * 3600),
            answer_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(60),
            rate: RateLimitConfig::default(),
            upstream_stall_timeout: Duration::from_secs(30),
            max_queued_audio: Duration::from_secs(120),
        }
    }
}

/// `limits.rate`: a token bucket per source; `requests_per_second = 0` disables it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained requests per second allowed from one source.
    pub requests_per_second: u32,
    /// Requests allowed at once after a quiet spell.
    pub burst: u32,
    /// How long a source that exceeded the rate is ignored (its messages dropped unanswered).
    #[serde(with = "humantime_serde")]
    pub ban: Duration,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        // A PBX in front of a call centre carries every call's INVITE, ACK, BYE, re-INVITEs
        // and OPTIONS pings from one address: 100 calls set up at once is ~200 requests.
        Self {
            requests_per_second: 200,
            burst: 400,
            ban: Duration::from_secs(60),
        }
    }
}

impl RateLimitConfig {
    /// The limit for the sans-IO limiter.
    pub fn limit(&self) -> crate::sip::limits::RateLimit {
        crate::sip::limits::RateLimit {
            per_second: self.requests_per_second,
            burst: self.burst,
            ban: self.ban,
        }
    }
}

/// The admin HTTP endpoint (`/metrics`, `/health`, `/ready`). It has no authentication: keep
/// it on loopback or a management network.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the endpoint at all.
    pub enabled: bool,
    /// The TCP address to listen on.
    pub listen: SocketAddr,
}

/// Where the admin endpoint listens by default: loopback only.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9091);

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: DEFAULT_ADMIN_LISTEN,
        }
    }
}

/// A realtime service the calls talk to.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum UpstreamConfig {
    /// OpenAI, GA protocol.
    Openai(OpenAiUpstream),
    /// Azure OpenAI, GA protocol (`/openai/v1/realtime?model=DEPLOYMENT`).
    Azure(AzureUpstream),
    /// Azure OpenAI, preview protocol (`/openai/realtime?api-version=..&deployment=..`).
    AzurePreview(AzurePreviewUpstream),
    /// The built-in fake realtime server, started in-process on loopback; needs no key.
    Fake(FakeUpstream),
}

impl UpstreamConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Openai(_) => "openai",
            Self::Azure(_) => "azure",
            Self::AzurePreview(_) => "azure-preview",
            Self::Fake(_) => "fake",
        }
    }

    /// Where the API key comes from; `None` for the fake server.
    pub fn api_key(&self) -> Option<&SecretSource> {
        match self {
            Self::Openai(u) => Some(&u.api_key),
            Self::Azure(u) => Some(&u.api_key),
            Self::AzurePreview(u) => Some(&u.api_key),
            Self::Fake(_) => None,
        }
    }

    /// The limit on connect + WebSocket handshake (the in-process fake: 10 s).
    pub fn connect_timeout(&self) -> Duration {
        match self {
            Self::Openai(u) => u.connect_timeout,
            Self::Azure(u) => u.connect_timeout,
            Self::AzurePreview(u) => u.connect_timeout,
            Self::Fake(_) => default_connect_timeout(),
        }
    }

    /// The key path of the secret's source, for messages (`api_key_env` or `api_key_file`).
    pub fn api_key_field(&self) -> Option<&'static str> {
        self.api_key().map(|s| match s {
            SecretSource::Env(_) => "api_key_env",
            SecretSource::File(_) => "api_key_file",
        })
    }
}

/// The secret source and connect timeout every real upstream has, checked once: exactly one of
/// `api_key_env` and `api_key_file`, an absolute file path, a timeout above zero.
fn key_and_timeout(
    api_key_env: Option<EnvVarName>,
    api_key_file: Option<PathBuf>,
    connect_timeout: Duration,
) -> Result<(SecretSource, Duration), String> {
    let source = match (api_key_env, api_key_file) {
        (Some(env), None) => SecretSource::Env(env.into_string()),
        (None, Some(path)) if path.is_absolute() => SecretSource::File(path),
        (None, Some(path)) => {
            return Err(format!(
                "api_key_file `{}` must be an absolute path",
                path.display()
            ));
        }
        (Some(_), Some(_)) => return Err("give api_key_env or api_key_file, not both".into()),
        (None, None) => return Err("missing api_key_env or api_key_file".into()),
    };
    Ok((source, positive("connect_timeout", connect_timeout)?))
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawOpenAiUpstream")]
pub struct OpenAiUpstream {
    /// Replaces `wss://api.openai.com/v1/realtime` (a proxy, a gateway).
    pub url: Option<ServiceUrl>,
    pub model: String,
    pub api_key: SecretSource,
    pub connect_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpenAiUpstream {
    url: Option<String>,
    #[serde(default = "default_openai_model")]
    model: String,
    api_key_env: Option<EnvVarName>,
    api_key_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
}

fn default_openai_model() -> String {
    "gpt-realtime".into()
}

impl TryFrom<RawOpenAiUpstream> for OpenAiUpstream {
    type Error = String;
    fn try_from(raw: RawOpenAiUpstream) -> Result<Self, String> {
        let (api_key, connect_timeout) =
            key_and_timeout(raw.api_key_env, raw.api_key_file, raw.connect_timeout)?;
        Ok(Self {
            url: raw
                .url
                .as_deref()
                .map(|u| service_url("url", u))
                .transpose()?,
            model: non_empty("model", raw.model)?,
            api_key,
            connect_timeout,
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawAzureUpstream")]
pub struct AzureUpstream {
    /// `https://RESOURCE.openai.azure.com` (the resource's endpoint, as the portal shows it).
    pub endpoint: ServiceUrl,
    /// The deployment name; the GA URL passes it as `model`.
    pub deployment: String,
    pub api_key: SecretSource,
    pub connect_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAzureUpstream {
    endpoint: String,
    deployment: String,
    api_key_env: Option<EnvVarName>,
    api_key_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
}

impl TryFrom<RawAzureUpstream> for AzureUpstream {
    type Error = String;
    fn try_from(raw: RawAzureUpstream) -> Result<Self, String> {
        let (api_key, connect_timeout) =
            key_and_timeout(raw.api_key_env, raw.api_key_file, raw.connect_timeout)?;
        Ok(Self {
            endpoint: azure_endpoint(raw.endpoint, "/openai/v1/realtime?model=DEPLOYMENT")?,
            deployment: non_empty("deployment", raw.deployment)?,
            api_key,
            connect_timeout,
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawAzurePreviewUpstream")]
pub struct AzurePreviewUpstream {
    pub endpoint: ServiceUrl,
    pub deployment: String,
    pub api_version: String,
    pub api_key: SecretSource,
    pub connect_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAzurePreviewUpstream {
    endpoint: String,
    deployment: String,
    #[serde(default = "default_azure_preview_api_version")]
    api_version: String,
    api_key_env: Option<EnvVarName>,
    api_key_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
}

fn default_azure_preview_api_version() -> String {
    "2025-04-01-preview".into()
}

impl TryFrom<RawAzurePreviewUpstream> for AzurePreviewUpstream {
    type Error = String;
    fn try_from(raw: RawAzurePreviewUpstream) -> Result<Self, String> {
        let (api_key, connect_timeout) =
            key_and_timeout(raw.api_key_env, raw.api_key_file, raw.connect_timeout)?;
        Ok(Self {
            endpoint: azure_endpoint(
                raw.endpoint,
                "/openai/realtime?api-version=VERSION&deployment=DEPLOYMENT",
            )?,
            deployment: non_empty("deployment", raw.deployment)?,
            api_version: non_empty("api_version", raw.api_version)?,
            api_key,
            connect_timeout,
        })
    }
}

/// An Azure resource's endpoint is the URL's start only: the bridge adds the path and query
/// (`adds`). A pasted target URI (`.../openai/v1/realtime?model=...`) would be doubled.
/// A URL key of an upstream, its problem prefixed with the key: errors inside a tagged table
/// are reported at the table.
fn service_url(key: &str, value: &str) -> Result<ServiceUrl, String> {
    value.parse().map_err(|reason| format!("{key}: {reason}"))
}

fn azure_endpoint(endpoint: String, adds: &str) -> Result<ServiceUrl, String> {
    let endpoint = service_url("endpoint", &endpoint)?;
    let url = endpoint.url();
    if (url.path().is_empty() || url.path() == "/") && url.query().is_none() {
        return Ok(endpoint);
    }
    let origin = url
        .origin()
        .ascii_serialization()
        .replacen("wss://", "https://", 1);
    Err(format!(
        "endpoint `{url}` has a path or query: give the resource's endpoint only, such as \
         `{origin}` (the bridge adds {adds}; put the deployment name in `deployment`)"
    ))
}

/// The built-in fake realtime server: its keys are [`FakeOptions`]' (reply, speed, tool
/// script, session length, recording). Checked at load, a reply file included.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(try_from = "FakeOptions")]
pub struct FakeUpstream {
    pub options: FakeOptions,
}

impl TryFrom<FakeOptions> for FakeUpstream {
    type Error = String;
    fn try_from(mut options: FakeOptions) -> Result<Self, String> {
        options.prepare().map_err(|e| e.to_string())?;
        Ok(Self { options })
    }
}

fn non_empty(key: &str, value: String) -> Result<String, String> {
    if value.trim().is_empty() {
        Err(format!("{key} must not be empty"))
    } else {
        Ok(value)
    }
}

fn positive(key: &str, value: Duration) -> Result<Duration, String> {
    if value.is_zero() {
        Err(format!("{key} must be longer than 0s"))
    } else {
        Ok(value)
    }
}

/// What the model is told and how it hears and speaks on a call.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// The name of an entry in `upstreams`.
    pub upstream: Name,
    #[serde(default = "default_instructions")]
    pub instructions: String,
    #[serde(default = "default_voice")]
    pub voice: String,
    #[serde(default)]
    pub audio_format: AudioFormat,
    #[serde(default)]
    pub noise_reduction: NoiseReduction,
    /// Transcribe the caller (the assistant's transcript always comes with its audio).
    #[serde(default)]
    pub transcription: Option<TranscriptionConfig>,
    #[serde(default)]
    pub turn_detection: TurnDetection,
    /// Instructions for a first response at answer, so the model speaks first.
    #[serde(default)]
    pub greeting: Option<String>,
    /// Webhook tools: functions the model may call, each answered by an HTTP POST.
    #[serde(default)]
    pub tools: Vec<ToolConfig>,
    /// Offer the built-in `end_call` tool, with which the model hangs up.
    #[serde(default)]
    pub end_call: bool,
    /// The description of `end_call` the model sees; a default when unset.
    #[serde(default)]
    pub end_call_description: Option<String>,
    /// Where the built-in `transfer_call` tool (offered when this is not empty) and digit
    /// actions can send the caller.
    #[serde(default)]
    pub transfer_targets: Vec<TransferTarget>,
    /// What the model is asked to say when it transfers the caller (the call has it said
    /// once, after `transfer_call`; not part of the tool's description).
    #[serde(default)]
    pub transfer_announcement: Option<String>,
    /// What a key pressed during the call (RFC 4733 or SIP INFO) tells the model or does.
    #[serde(default)]
    pub dtmf: DtmfConfig,
}

impl ProfileConfig {
    /// The transfer target named `name`.
    pub fn transfer_target(&self, name: &str) -> Option<&TransferTarget> {
        self.transfer_targets
            .iter()
            .find(|t| t.name.as_str() == name)
    }

    /// The webhook tool named `name`.
    pub fn tool(&self, name: &str) -> Option<&ToolConfig> {
        self.tools.iter().find(|t| t.name.as_str() == name)
    }
}

/// A place the caller can be transferred to (a SIP REFER to `uri`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferTarget {
    /// What the model and digit actions call it (`transfer_call`'s `target`).
    pub name: Name,
    /// Who or what is there, so the model can choose (`the front desk`, `invoices and
    /// payments`).
    pub description: String,
    /// Where the call goes (`sip:100@pbx.example.com`).
    pub uri: SipUri,
}

/// Keypad digits during a call become a user text item for the model.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DtmfConfig {
    /// Whether digits are passed to the model at all.
    pub enabled: bool,
    /// The text of the item; `{digit}` is replaced by the key (0-9, *, #, A-D).
    pub template: String,
    /// Ask the model to answer at once (`response.create`) rather than wait for speech.
    pub create_response: bool,
    /// Keys that do something themselves instead of being told to the model (also when
    /// `enabled` is false).
    pub actions: BTreeMap<Digit, DigitAction>,
}

impl Default for DtmfConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            template: "The caller pressed {digit} on the telephone keypad.".into(),
            create_response: true,
            actions: BTreeMap::new(),
        }
    }
}

/// What a key does: `{ transfer = "TARGET" }` or `{ end_call = true }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawDigitAction")]
pub enum DigitAction {
    /// Transfer the caller to the named transfer target.
    Transfer(Name),
    /// Hang up.
    EndCall,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDigitAction {
    transfer: Option<Name>,
    end_call: Option<bool>,
}

impl TryFrom<RawDigitAction> for DigitAction {
    type Error = String;
    fn try_from(raw: RawDigitAction) -> Result<Self, String> {
        match (raw.transfer, raw.end_call) {
            (Some(target), None) => Ok(Self::Transfer(target)),
            (None, Some(true)) => Ok(Self::EndCall),
            (None, Some(false)) => {
                Err("end_call = false does nothing: remove the key's action instead".into())
            }
            (Some(_), Some(_)) => Err("give transfer or end_call, not both".into()),
            (None, None) => {
                Err("an action is { transfer = \"TARGET\" } or { end_call = true }".into())
            }
        }
    }
}

impl DtmfConfig {
    /// The text for `digit`.
    pub fn text(&self, digit: char) -> String {
        self.template
            .replace("{digit}", digit.encode_utf8(&mut [0; 4]))
    }
}

fn default_instructions() -> String {
    "You are a helpful voice assistant answering a telephone call. Keep answers short and \
     conversational."
        .into()
}

fn default_voice() -> String {
    "alloy".into()
}

/// The audio format on the WebSocket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioFormat {
    /// Chosen per call: the call's G.711 law passed through untouched when the call uses PCMU
    /// or PCMA, `pcm16` for Opus calls. Resolved with [`AudioFormat::for_codec`] before a
    /// session is configured; where no call exists (the `probe` command) it means `pcm16`.
    #[default]
    Auto,
    /// 24 kHz mono s16le: decode and resample on the way in and out.
    Pcm16,
    /// G.711 mu-law, 8 kHz: passed through untouched when the call uses PCMU.
    G711Ulaw,
    /// G.711 A-law, 8 kHz: passed through untouched when the call uses PCMA.
    G711Alaw,
}

impl fmt::Display for AudioFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Pcm16 => "pcm16",
            Self::G711Ulaw => "g711_ulaw",
            Self::G711Alaw => "g711_alaw",
        })
    }
}

impl AudioFormat {
    /// The format on the WebSocket for a call whose RTP uses `codec`: `Auto` picks G.711
    /// passthrough when the call's codec is G.711 and `pcm16` otherwise; a fixed format stays.
    pub fn for_codec(self, codec: crate::sip::sdp::Codec) -> AudioFormat {
        use crate::sip::sdp::Codec;
        match (self, codec) {
            (Self::Auto, Codec::Pcmu) => Self::G711Ulaw,
            (Self::Auto, Codec::Pcma) => Self::G711Alaw,
            (Self::Auto, Codec::Opus) => Self::Pcm16,
            (fixed, _) => fixed,
        }
    }
}

/// Server-side input noise reduction (sent as an object or null, never a boolean).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseReduction {
    NearField,
    FarField,
    #[default]
    Off,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscriptionConfig {
    #[serde(default = "default_transcription_model")]
    pub model: String,
    /// ISO-639-1 language of the caller (`en`, `de`), improving accuracy and latency.
    #[serde(default)]
    pub language: Option<String>,
    /// Vocabulary or context hints for the transcriber.
    #[serde(default)]
    pub prompt: Option<String>,
}

fn default_transcription_model() -> String {
    "gpt-4o-mini-transcribe".into()
}

/// How the service decides that the caller has started and stopped talking.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TurnDetection {
    ServerVad(ServerVad),
    SemanticVad(SemanticVad),
    /// No turn detection: nothing is committed or answered on its own.
    None,
}

impl Default for TurnDetection {
    fn default() -> Self {
        Self::ServerVad(ServerVad::default())
    }
}

impl TurnDetection {
    /// Whether caller speech cuts the model off (barge-in).
    pub fn interrupt_response(&self) -> bool {
        match self {
            Self::ServerVad(v) => v.interrupt_response,
            Self::SemanticVad(v) => v.interrupt_response,
            Self::None => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "RawServerVad")]
pub struct ServerVad {
    /// Activation threshold, 0.0-1.0; higher needs louder speech.
    pub threshold: f64,
    pub prefix_padding_ms: u32,
    pub silence_duration_ms: u32,
    pub create_response: bool,
    pub interrupt_response: bool,
    /// Re-prompt a silent caller after this long (5000-30000 ms).
    pub idle_timeout_ms: Option<u32>,
}

impl Default for ServerVad {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
            create_response: true,
            interrupt_response: true,
            idle_timeout_ms: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServerVad {
    threshold: f64,
    prefix_padding_ms: u32,
    silence_duration_ms: u32,
    create_response: bool,
    interrupt_response: bool,
    idle_timeout_ms: Option<u32>,
}

impl Default for RawServerVad {
    fn default() -> Self {
        let d = ServerVad::default();
        Self {
            threshold: d.threshold,
            prefix_padding_ms: d.prefix_padding_ms,
            silence_duration_ms: d.silence_duration_ms,
            create_response: d.create_response,
            interrupt_response: d.interrupt_response,
            idle_timeout_ms: d.idle_timeout_ms,
        }
    }
}

fn yes() -> bool {
    true
}

impl TryFrom<RawServerVad> for ServerVad {
    type Error = String;
    fn try_from(raw: RawServerVad) -> Result<Self, String> {
        if !(0.0..=1.0).contains(&raw.threshold) {
            return Err(format!("threshold {} is outside 0.0-1.0", raw.threshold));
        }
        if raw.prefix_padding_ms > 10_000 || raw.silence_duration_ms > 10_000 {
            return Err("prefix_padding_ms and silence_duration_ms are at most 10000".into());
        }
        if let Some(ms) = raw.idle_timeout_ms
            && !(5_000..=30_000).contains(&ms)
        {
            return Err(format!(
                "idle_timeout_ms {ms} is outside 5000-30000 (the service's range)"
            ));
        }
        Ok(Self {
            threshold: raw.threshold,
            prefix_padding_ms: raw.prefix_padding_ms,
            silence_duration_ms: raw.silence_duration_ms,
            create_response: raw.create_response,
            interrupt_response: raw.interrupt_response,
            idle_timeout_ms: raw.idle_timeout_ms,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticVad {
    #[serde(default)]
    pub eagerness: Eagerness,
    #[serde(default = "yes")]
    pub create_response: bool,
    #[serde(default = "yes")]
    pub interrupt_response: bool,
}

impl Default for SemanticVad {
    fn default() -> Self {
        Self {
            eagerness: Eagerness::Auto,
            create_response: true,
            interrupt_response: true,
        }
    }
}

/// How soon semantic VAD decides the caller has finished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Eagerness {
    Low,
    Medium,
    High,
    #[default]
    Auto,
}

/// A function the model may call, answered by an HTTP POST to `url`.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawToolConfig")]
pub struct ToolConfig {
    pub name: ToolName,
    pub description: String,
    /// JSON Schema of the arguments (an object schema).
    pub parameters: serde_json::Value,
    /// Where the call is POSTed.
    pub url: WebhookUrl,
    /// How long the webhook may take, connect to last byte (100ms-60s).
    pub timeout: Duration,
    /// Extra request headers (an API key, say), by name.
    pub headers: BTreeMap<HeaderName, HeaderValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToolConfig {
    name: ToolName,
    description: String,
    #[serde(default = "empty_object_schema")]
    parameters: serde_json::Value,
    url: Option<WebhookUrl>,
    #[serde(default = "default_tool_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default)]
    headers: BTreeMap<HeaderName, HeaderValue>,
}

fn default_tool_timeout() -> Duration {
    Duration::from_secs(5)
}

impl TryFrom<RawToolConfig> for ToolConfig {
    type Error = String;
    fn try_from(raw: RawToolConfig) -> Result<Self, String> {
        let name = raw.name.as_str();
        if name == END_CALL_TOOL {
            return Err(format!(
                "`{name}` is a built-in tool: enable it with `end_call = true` in the profile"
            ));
        }
        if name == TRANSFER_CALL_TOOL {
            return Err(format!(
                "`{name}` is a built-in tool: it is offered when the profile has \
                 [[profiles.NAME.transfer_targets]]"
            ));
        }
        let url = raw.url.ok_or_else(|| {
            format!(
                "tool `{name}` has no url: a tool is answered by an HTTP POST to its url \
                 (the built-in tools are end_call and transfer_call)"
            )
        })?;
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(60));
        if raw.timeout < min || raw.timeout > max {
            return Err(format!(
                "tool `{name}`: timeout must be between 100ms and 60s"
            ));
        }
        let mut seen: Vec<String> = Vec::new();
        for header in raw.headers.keys() {
            let lower = header.as_str().to_ascii_lowercase();
            if seen.contains(&lower) {
                return Err(format!(
                    "tool `{name}`: header `{header}` is given twice (names ignore case)"
                ));
            }
            seen.push(lower);
        }
        Ok(Self {
            name: raw.name,
            description: raw.description,
            parameters: raw.parameters,
            url,
            timeout: raw.timeout,
            headers: raw.headers,
        })
    }
}

/// The value of a webhook header: written in the configuration, or a secret read from the
/// environment or a file when the request is made. `Debug` never prints a value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawHeaderValue")]
pub enum HeaderValue {
    /// `{ value = "..." }`.
    Plain(String),
    /// `{ value_env = "VAR" }` or `{ value_file = "/abs/path" }`.
    Secret(SecretSource),
}

impl fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // A plain value can still be a credential someone chose not to move out.
            Self::Plain(_) => f.write_str("value:[redacted]"),
            Self::Secret(source) => source.fmt(f),
        }
    }
}

impl HeaderValue {
    /// The value to send: the plain value, or the secret loaded now.
    pub fn load(&self) -> Result<SecretString, SecretError> {
        match self {
            Self::Plain(value) => Ok(SecretString::new(value.clone())),
            Self::Secret(source) => source.load(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderValue {
    value: Option<String>,
    value_env: Option<EnvVarName>,
    value_file: Option<PathBuf>,
}

impl TryFrom<RawHeaderValue> for HeaderValue {
    type Error = String;
    fn try_from(raw: RawHeaderValue) -> Result<Self, String> {
        match (raw.value, raw.value_env, raw.value_file) {
            (Some(value), None, None) => {
                if !is_header_value(&value) {
                    // Never echo the value: it may be a credential.
                    return Err("value must be printable ASCII (no line breaks)".into());
                }
                Ok(Self::Plain(value))
            }
            (None, Some(env), None) => Ok(Self::Secret(SecretSource::Env(env.into_string()))),
            (None, None, Some(path)) if path.is_absolute() => {
                Ok(Self::Secret(SecretSource::File(path)))
            }
            (None, None, Some(path)) => Err(format!(
                "value_file `{}` must be an absolute path",
                path.display()
            )),
            (None, None, None) => Err("give one of value, value_env or value_file".into()),
            _ => Err("give only one of value, value_env and value_file".into()),
        }
    }
}

/// Whether `value` can go into an HTTP header as it is: printable ASCII, spaces and tabs.
pub fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

fn empty_object_schema() -> serde_json::Value {
    serde_json::json!({ "type": "object", "properties": {} })
}

/// Which profile answers a call. A route with neither `dialed` nor `caller` matches every call
/// (a default route; it must come last).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A label for logs and metrics; defaults to the profile's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The number called (Request-URI user, else To).
    #[serde(default)]
    pub dialed: Option<Matcher>,
    /// The caller (P-Asserted-Identity, else From).
    #[serde(default)]
    pub caller: Option<Matcher>,
    /// Only calls that arrive through this account (`[[sip.accounts]]` name).
    #[serde(default)]
    pub account: Option<Name>,
    pub profile: Name,
}

impl RouteConfig {
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(self.profile.as_str())
    }

    pub fn matches(&self, dialed: &str, caller: &str) -> bool {
        self.account.is_none() && self.matches_parties(dialed, caller)
    }

    /// Whether a call through `account` (None: sent to us directly) matches.
    pub fn matches_via(&self, account: Option<&str>, dialed: &str, caller: &str) -> bool {
        self.account
            .as_ref()
            .is_none_or(|a| Some(a.as_str()) == account)
            && self.matches_parties(dialed, caller)
    }

    fn matches_parties(&self, dialed: &str, caller: &str) -> bool {
        self.dialed.as_ref().is_none_or(|m| m.matches(dialed))
            && self.caller.as_ref().is_none_or(|m| m.matches(caller))
    }

    fn matches_everything(&self) -> bool {
        self.dialed.is_none() && self.caller.is_none() && self.account.is_none()
    }
}

/// One problem found in a configuration, with the key it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted key path, `routes[2].profile`.
    pub key: String,
    /// Where the value came from: a file, an environment variable, or the built-in defaults.
    pub origin: Option<String>,
    pub problem: Problem,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key)?;
        if let Some(origin) = &self.origin {
            write!(f, " (from {origin})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// What is wrong with a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Unknown key, wrong type, bad value: as the parser or a value type reported it.
    #[error("{0}")]
    Value(String),
    #[error("no {what} named `{name}` (defined: {})", list(.defined))]
    UnknownReference {
        what: &'static str,
        name: String,
        defined: Vec<String>,
    },
    #[error("at least one route is required, or every call would be refused with 404")]
    NoRoutes,
    #[error(
        "this route matches every call, so routes after it ({shadowed}) can never match; move it last"
    )]
    DefaultRouteNotLast { shadowed: usize },
    #[error("tool `{0}` is defined twice")]
    DuplicateTool(String),
    #[error("transfer target `{0}` is defined twice")]
    DuplicateTarget(String),
    #[error(
        "parameters must be a JSON-schema object (a table), such as {{ type = \"object\", properties = {{}} }}"
    )]
    ToolParametersNotObject,
    #[error("must not be empty")]
    Empty,
    #[error("listen address {0} appears twice")]
    DuplicateListen(Listen),
    #[error("at least one listen address is required")]
    NoListen,
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_all(.0))]
    Invalid(Vec<Invalid>),
}

fn render_all(problems: &[Invalid]) -> String {
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The problems found, when the file could be read.
    pub fn problems(&self) -> &[Invalid] {
        match self {
            Self::Invalid(p) => p,
            Self::Read { .. } => &[],
        }
    }
}

/// A secret that cannot be loaded, with the key that names it.
#[derive(Debug)]
pub struct SecretProblem {
    pub key: String,
    pub error: SecretError,
}

impl fmt::Display for SecretProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.error)
    }
}

impl Config {
    /// Loads defaults <- `path` <- `SRB_*` environment variables, and validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        // figment treats a missing file as empty; an operator who names a file means it.
        std::fs::metadata(path)
            .and_then(|m| {
                if m.is_file() {
                    Ok(())
                } else {
                    Err(std::io::Error::other("not a regular file"))
                }
            })
            .map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
        Self::from_figment(
            Figment::new()
                .merge(Toml::file_exact(path))
                .merge(EnvOverrides::new()),
        )
    }

    /// Loads defaults <- a TOML document (no environment): for tests and tools.
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(toml)))
    }

    /// Extracts every table on its own (each section, each upstream, profile and route), so
    /// that one bad value does not hide the problems of the other tables: serde stops at the
    /// first error of what it deserializes, so within one table the first problem is reported.
    /// Cross-references are checked on what parsed, leaving out references to tables that did
    /// not (they are reported already).
    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let all = |e: figment::Error| e.into_iter().map(|e| invalid_from_figment(&e, None));
        // Syntax errors (and a document that is not a table) stop here: nothing else is known.
        let top: BTreeMap<String, figment::value::Value> = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(all(e).collect()))?;
        let mut problems: Vec<Invalid> = Vec::new();
        for key in top.keys() {
            if !TABLES.contains(&key.as_str()) {
                problems.push(Invalid {
                    key: key.clone(),
                    origin: value_origin(&figment, key),
                    problem: Problem::Value(format!(
                        "unknown key (expected one of: {})",
                        TABLES.join(", ")
                    )),
                });
            }
        }
        fn table<T: Default + for<'de> Deserialize<'de>>(
            figment: &Figment,
            top: &BTreeMap<String, figment::value::Value>,
            key: &str,
            problems: &mut Vec<Invalid>,
        ) -> Option<T> {
            if !top.contains_key(key) {
                return Some(T::default());
            }
            match extract_at::<T>(figment, key, None) {
                Ok(value) => Some(value),
                Err(found) => {
                    problems.extend(found);
                    None
                }
            }
        }
        // Each named entry on its own; the names of those that did not parse go to `failed`.
        fn entries<T: for<'de> Deserialize<'de>>(
            figment: &Figment,
            top: &BTreeMap<String, figment::value::Value>,
            key: &str,
            problems: &mut Vec<Invalid>,
            failed: &mut Vec<String>,
        ) -> BTreeMap<Name, T> {
            let names: BTreeMap<String, figment::value::Value> =
                table(figment, top, key, problems).unwrap_or_default();
            let mut parsed = BTreeMap::new();
            for name in names.into_keys() {
                match named(figment, key, &name) {
                    Ok((name, entry)) => {
                        parsed.insert(name, entry);
                    }
                    Err(found) => {
                        problems.extend(found);
                        failed.push(name);
                    }
                }
            }
            parsed
        }
        let mut config = Config {
            log: table(&figment, &top, "log", &mut problems).unwrap_or_default(),
            sip: table(&figment, &top, "sip", &mut problems).unwrap_or_default(),
            rtp: table(&figment, &top, "rtp", &mut problems).unwrap_or_default(),
            limits: table(&figment, &top, "limits", &mut problems).unwrap_or_default(),
            admin: table(&figment, &top, "admin", &mut problems).unwrap_or_default(),
            ..Config::default()
        };
        // Names of the upstreams and profiles that did not parse: references to them are not
        // reported again.
        let mut failed: Vec<String> = Vec::new();
        config.upstreams = entries(&figment, &top, "upstreams", &mut problems, &mut failed);
        config.profiles = entries(&figment, &top, "profiles", &mut problems, &mut failed);
        // A list, which figment cannot focus on: its entries are deserialized one by one.
        let routes = match top.contains_key("routes") {
            false => Some(Vec::new()),
            true => match figment.extract_inner::<Vec<figment::value::Value>>("routes") {
                Ok(routes) => Some(routes),
                Err(e) => {
                    problems.extend(all(e));
                    None
                }
            },
        };
        let mut routes_failed = routes.is_none();
        for (i, route) in routes.iter().flatten().enumerate() {
            match RouteConfig::deserialize(route) {
                Ok(route) => config.routes.push(route),
                Err(e) => {
                    routes_failed = true;
                    let origin = figment.get_metadata(route.tag()).map(metadata_origin);
                    problems.extend(e.into_iter().map(|e| {
                        let mut invalid = invalid_from_figment(&e, origin.clone());
                        invalid.key = if invalid.key == "(document)" {
                            format!("routes.{i}")
                        } else {
                            format!("routes.{i}.{}", invalid.key)
                        };
                        invalid
                    }));
                }
            }
        }
        let checked = config.cross_check().into_iter().map(|mut p| {
            p.origin = p.origin.or_else(|| value_origin(&figment, &p.key));
            p
        });
        problems.extend(checked.filter(|p| {
            let unknown_failed = matches!(&p.problem, Problem::UnknownReference { name, .. }
                if failed.contains(name));
            // Route indexes shift when a route is left out: its cross-checks wait for it.
            let route_check = routes_failed && p.key.starts_with("routes");
            !unknown_failed && !route_check
        }));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Checks what no single value can: references between tables, and rules across entries.
    fn cross_check(&self) -> Vec<Invalid> {
        let mut problems = Vec::new();
        let mut problem = |key: String, problem| {
            problems.push(Invalid {
                key,
                origin: None,
                problem,
            })
        };

        if self.sip.listen.is_empty() {
            problem("sip.listen".into(), Problem::NoListen);
        }
        for (i, l) in self.sip.listen.iter().enumerate() {
            if self.sip.listen.iter().take(i).any(|o| o == l) {
                problem(format!("sip.listen[{i}]"), Problem::DuplicateListen(*l));
            }
        }

        if self.sip.codecs.is_empty() {
            problem("sip.codecs".into(), Problem::Empty);
        }
        for (i, codec) in self.sip.codecs.iter().enumerate() {
            if self.sip.codecs.iter().take(i).any(|c| c == codec) {
                problem(
                    format!("sip.codecs[{i}]"),
                    Problem::Value("listed twice".into()),
                );
            }
        }
        if self.sip.t1.is_zero() || self.sip.t1 > Duration::from_secs(10) {
            problem(
                "sip.t1".into(),
                Problem::Value("must be between 1ms and 10s".into()),
            );
        }
        if self.sip.t2 < self.sip.t1 || self.sip.t2 > Duration::from_secs(60) {
            problem(
                "sip.t2".into(),
                Problem::Value("must be at least t1 and at most 60s".into()),
            );
        }
        if self.sip.min_se < 90 {
            problem(
                "sip.min_se".into(),
                Problem::Value("must be at least 90 (RFC 4028)".into()),
            );
        }
        if self.sip.session_expires < self.sip.min_se.max(90) {
            problem(
                "sip.session_expires".into(),
                Problem::Value("must be at least sip.min_se".into()),
            );
        }
        if self.rtp.inactivity_timeout < Duration::from_secs(1) {
            problem(
                "rtp.inactivity_timeout".into(),
                Problem::Value("must be at least 1s".into()),
            );
        }
        if self.limits.max_call_duration.is_zero()
            || self.limits.max_call_duration > Duration::from_secs(7 * 24 * 3600)
        {
            problem(
                "limits.max_call_duration".into(),
                Problem::Value("must be longer than 0s and at most 7 days".into()),
            );
        }

        for (i, account) in self.sip.accounts.iter().enumerate() {
            let earlier = self.sip.accounts.iter().take(i);
            if earlier.clone().any(|a| a.name == account.name) {
                problem(
                    format!("sip.accounts[{i}].name"),
                    Problem::Value(format!("`{}` is used by an earlier account", account.name)),
                );
            }
            if earlier
                .clone()
                .any(|a| a.contact_user == account.contact_user)
            {
                problem(
                    format!("sip.accounts[{i}].contact_user"),
                    Problem::Value(format!(
                        "`{}` is used by an earlier account: calls could not be told apart",
                        account.contact_user
                    )),
                );
            }
            if !self
                .sip
                .listen
                .iter()
                .any(|l| l.transport == account.transport)
            {
                problem(
                    format!("sip.accounts[{i}].transport"),
                    Problem::Value(format!("no sip.listen socket is {}", account.transport)),
                );
            }
        }
        if self.admin.enabled {
            if self.admin.listen.port() == 0 {
                problem(
                    "admin.listen".into(),
                    Problem::Value("needs a port (not 0)".into()),
                );
            }
            let clash = self.sip.listen.iter().any(|l| {
                l.transport == Transport::Tcp
                    && l.addr.port() == self.admin.listen.port()
                    && (l.addr.ip() == self.admin.listen.ip()
                        || l.addr.ip().is_unspecified()
                        || self.admin.listen.ip().is_unspecified())
            });
            if clash {
                problem(
                    "admin.listen".into(),
                    Problem::Value(format!(
                        "{} is also a sip.listen TCP socket",
                        self.admin.listen
                    )),
                );
            }
        }
        if self.limits.drain_timeout > Duration::from_secs(24 * 3600) {
            problem(
                "limits.drain_timeout".into(),
                Problem::Value("must be at most 24h".into()),
            );
        }
        let rate = &self.limits.rate;
        if rate.requests_per_second > 0 {
            if rate.requests_per_second > 1_000_000 {
                problem(
                    "limits.rate.requests_per_second".into(),
                    Problem::Value("must be at most 1000000 (0 disables the limit)".into()),
                );
            }
            if rate.burst < 1 || rate.burst > 10_000_000 {
                problem(
                    "limits.rate.burst".into(),
                    Problem::Value("must be between 1 and 10000000".into()),
                );
            }
            if rate.ban < Duration::from_secs(1) || rate.ban > Duration::from_secs(24 * 3600) {
                problem(
                    "limits.rate.ban".into(),
                    Problem::Value("must be between 1s and 24h".into()),
                );
            }
        }
        if self.limits.upstream_stall_timeout < Duration::from_secs(5)
            || self.limits.upstream_stall_timeout > Duration::from_secs(600)
        {
            problem(
                "limits.upstream_stall_timeout".into(),
                Problem::Value("must be between 5s and 10m".into()),
            );
        }
        if self.limits.max_queued_audio < Duration::from_secs(5)
            || self.limits.max_queued_audio > Duration::from_secs(1800)
        {
            problem(
                "limits.max_queued_audio".into(),
                Problem::Value("must be between 5s and 30m".into()),
            );
        }
        if self.limits.answer_timeout < Duration::from_millis(500)
            || self.limits.answer_timeout > Duration::from_secs(120)
        {
            problem(
                "limits.answer_timeout".into(),
                Problem::Value("must be between 500ms and 120s".into()),
            );
        }

        for (name, profile) in &self.profiles {
            if !self.upstreams.contains_key(&profile.upstream) {
                problem(
                    format!("profiles.{name}.upstream"),
                    Problem::UnknownReference {
                        what: "upstream",
                        name: profile.upstream.to_string(),
                        defined: self.upstreams.keys().map(Name::to_string).collect(),
                    },
                );
            }
            if profile.instructions.trim().is_empty() {
                problem(format!("profiles.{name}.instructions"), Problem::Empty);
            }
            if profile.voice.trim().is_empty() {
                problem(format!("profiles.{name}.voice"), Problem::Empty);
            }
            if profile
                .greeting
                .as_deref()
                .is_some_and(|g| g.trim().is_empty())
            {
                problem(format!("profiles.{name}.greeting"), Problem::Empty);
            }
            for (i, target) in profile.transfer_targets.iter().enumerate() {
                let key = format!("profiles.{name}.transfer_targets[{i}]");
                if profile
                    .transfer_targets
                    .iter()
                    .take(i)
                    .any(|t| t.name == target.name)
                {
                    problem(
                        format!("{key}.name"),
                        Problem::DuplicateTarget(target.name.to_string()),
                    );
                }
                if target.description.trim().is_empty() {
                    problem(format!("{key}.description"), Problem::Empty);
                }
            }
            if let Some(announcement) = &profile.transfer_announcement {
                if announcement.trim().is_empty() {
                    problem(
                        format!("profiles.{name}.transfer_announcement"),
                        Problem::Empty,
                    );
                } else if profile.transfer_targets.is_empty() {
                    problem(
                        format!("profiles.{name}.transfer_announcement"),
                        Problem::Value(
                            "there are no transfer_targets, so nothing is transferred".into(),
                        ),
                    );
                }
            }
            if let Some(description) = &profile.end_call_description {
                if description.trim().is_empty() {
                    problem(
                        format!("profiles.{name}.end_call_description"),
                        Problem::Empty,
                    );
                } else if !profile.end_call {
                    problem(
                        format!("profiles.{name}.end_call_description"),
                        Problem::Value("needs end_call = true".into()),
                    );
                }
            }
            for (digit, action) in &profile.dtmf.actions {
                if let DigitAction::Transfer(target) = action
                    && profile.transfer_target(target.as_str()).is_none()
                {
                    problem(
                        format!("profiles.{name}.dtmf.actions.\"{digit}\".transfer"),
                        Problem::UnknownReference {
                            what: "transfer target",
                            name: target.to_string(),
                            defined: profile
                                .transfer_targets
                                .iter()
                                .map(|t| t.name.to_string())
                                .collect(),
                        },
                    );
                }
            }
            if profile.dtmf.enabled && !profile.dtmf.template.contains("{digit}") {
                problem(
                    format!("profiles.{name}.dtmf.template"),
                    Problem::Value("must contain {digit}".into()),
                );
            }
            for (i, tool) in profile.tools.iter().enumerate() {
                let key = format!("profiles.{name}.tools[{i}]");
                if profile.tools.iter().take(i).any(|t| t.name == tool.name) {
                    problem(
                        format!("{key}.name"),
                        Problem::DuplicateTool(tool.name.as_str().into()),
                    );
                }
                if tool.description.trim().is_empty() {
                    problem(format!("{key}.description"), Problem::Empty);
                }
                if !tool.parameters.is_object() {
                    problem(
                        format!("{key}.parameters"),
                        Problem::ToolParametersNotObject,
                    );
                }
            }
        }

        if self.routes.is_empty() {
            problem("routes".into(), Problem::NoRoutes);
        }
        for (i, route) in self.routes.iter().enumerate() {
            if !self.profiles.contains_key(&route.profile) {
                problem(
                    format!("routes[{i}].profile"),
                    Problem::UnknownReference {
                        what: "profile",
                        name: route.profile.to_string(),
                        defined: self.profiles.keys().map(Name::to_string).collect(),
                    },
                );
            }
            if let Some(account) = &route.account
                && !self.sip.accounts.iter().any(|a| &a.name == account)
            {
                problem(
                    format!("routes[{i}].account"),
                    Problem::UnknownReference {
                        what: "account",
                        name: account.to_string(),
                        defined: self
                            .sip
                            .accounts
                            .iter()
                            .map(|a| a.name.to_string())
                            .collect(),
                    },
                );
            }
            let shadowed = self.routes.len() - i - 1;
            if route.matches_everything() && shadowed > 0 {
                problem(
                    format!("routes[{i}]"),
                    Problem::DefaultRouteNotLast { shadowed },
                );
            }
        }
        problems
    }

    /// The first route that accepts a call from `caller` to `dialed`.
    pub fn route(&self, dialed: &str, caller: &str) -> Option<&RouteConfig> {
        self.route_via(None, dialed, caller)
    }

    /// The route of a call that came through `account` (None: sent to us directly).
    pub fn route_via(
        &self,
        account: Option<&str>,
        dialed: &str,
        caller: &str,
    ) -> Option<&RouteConfig> {
        self.routes
            .iter()
            .find(|r| r.matches_via(account, dialed, caller))
    }

    /// Upstreams that some route can reach (through its profile).
    pub fn routed_upstreams(&self) -> impl Iterator<Item = (&Name, &UpstreamConfig)> {
        self.upstreams.iter().filter(|(name, _)| {
            self.routes.iter().any(|r| {
                self.profiles
                    .get(&r.profile)
                    .is_some_and(|p| &p.upstream == *name)
            })
        })
    }

    /// Tries to load every secret that a route can need (API keys, webhook header secrets);
    /// returns what failed.
    pub fn check_secrets(&self) -> Vec<SecretProblem> {
        let upstreams = self.routed_upstreams().filter_map(|(name, upstream)| {
            let source = upstream.api_key()?;
            let field = upstream.api_key_field()?;
            source.load().err().map(|error| SecretProblem {
                key: format!("upstreams.{name}.{field}"),
                error,
            })
        });
        let accounts = self.sip.accounts.iter().enumerate().filter_map(|(i, a)| {
            let field = match a.password {
                SecretSource::Env(_) => "password_env",
                SecretSource::File(_) => "password_file",
            };
            a.password.load().err().map(|error| SecretProblem {
                key: format!("sip.accounts[{i}].{field}"),
                error,
            })
        });
        let mut problems: Vec<SecretProblem> = upstreams.chain(accounts).collect();
        let routed = self
            .profiles
            .iter()
            .filter(|(name, _)| self.routes.iter().any(|r| &r.profile == *name));
        for (name, profile) in routed {
            for (i, tool) in profile.tools.iter().enumerate() {
                for (header, value) in &tool.headers {
                    let HeaderValue::Secret(source) = value else {
                        continue;
                    };
                    let field = match source {
                        SecretSource::Env(_) => "value_env",
                        SecretSource::File(_) => "value_file",
                    };
                    if let Err(error) = source.load() {
                        problems.push(SecretProblem {
                            key: format!("profiles.{name}.tools[{i}].headers.{header}.{field}"),
                            error,
                        });
                    }
                }
            }
        }
        problems
    }

    /// A one-line description for `check-config` and the start-up log.
    pub fn summary(&self) -> String {
        let listen: Vec<String> = self.sip.listen.iter().map(Listen::to_string).collect();
        let upstreams: Vec<String> = self
            .upstreams
            .iter()
            .map(|(n, u)| format!("{n} ({})", u.kind()))
            .collect();
        format!(
            "{} route(s), {} profile(s), upstreams: {}; SIP {}; RTP {}; max_calls {}",
            self.routes.len(),
            self.profiles.len(),
            list(&upstreams),
            listen.join(" "),
            self.rtp.port_range,
            self.limits.max_calls,
        )
    }
}

/// The configuration's top-level tables.
const TABLES: [&str; 8] = [
    "log",
    "sip",
    "rtp",
    "limits",
    "admin",
    "upstreams",
    "profiles",
    "routes",
];

/// One entry of a table of named entries (`upstreams.NAME`, `profiles.NAME`): its name checked,
/// its value extracted on its own.
fn named<T: for<'de> Deserialize<'de>>(
    figment: &Figment,
    table: &str,
    name: &str,
) -> Result<(Name, T), Vec<Invalid>> {
    let key = format!("{table}.{name}");
    let name: Name = name.parse().map_err(|reason| {
        vec![Invalid {
            key: key.clone(),
            origin: None,
            problem: Problem::Value(reason),
        }]
    })?;
    // Errors inside tagged tables (`kind = ...`) carry no origin: the entry's is theirs.
    let origin = value_origin(figment, &key);
    extract_at::<T>(figment, &key, origin).map(|value| (name, value))
}

/// The table at the dotted `key`, extracted on its own, with error paths from the document's
/// root. (figment's `extract_inner` appends the key to an error's path instead of putting it
/// first, so this focuses on the table and prepends the key itself.)
fn extract_at<T: for<'de> Deserialize<'de>>(
    figment: &Figment,
    key: &str,
    origin: Option<String>,
) -> Result<T, Vec<Invalid>> {
    figment.focus(key).extract::<T>().map_err(|e| {
        e.into_iter()
            .map(|mut e| {
                let mut path: Vec<String> = key.split('.').map(str::to_owned).collect();
                path.append(&mut e.path);
                e.path = path;
                invalid_from_figment(&e, origin.clone())
            })
            .collect()
    })
}

/// serde names the Rust type a value did not fit ("expected internally tagged enum FakeReply",
/// "expected enum Matcher"): say what the key takes instead.
fn without_rust_types(text: &str) -> String {
    let Some(at) = text.find("expected ").map(|at| at + "expected ".len()) else {
        return text.to_owned();
    };
    let (before, wanted) = text.split_at(at);
    let form = match wanted {
        "enum Matcher" => "{ prefix = \"+4930\" } or { regex = \"^\\\\+4930\" }",
        w if w.starts_with("internally tagged enum") => {
            "a table with its kind, such as { kind = \"...\" } or { type = \"...\" } \
             (conf/bridge.toml shows this key's forms)"
        }
        w if w.starts_with("enum ") => "one of this key's forms (conf/bridge.toml shows them)",
        _ => return text.to_owned(),
    };
    format!("{before}{form}")
}

/// Where the value at the dotted `key` came from; for a key into a list (`routes[2].profile`),
/// where the list came from.
fn value_origin(figment: &Figment, key: &str) -> Option<String> {
    let key = key.split('[').next().unwrap_or(key);
    let value = figment.find_value(key).ok()?;
    figment.get_metadata(value.tag()).map(metadata_origin)
}

/// Where a value came from, as the operator would name it.
fn metadata_origin(md: &figment::Metadata) -> String {
    match &md.source {
        Some(source) => source.to_string(),
        None => md.name.to_string(),
    }
}

/// Turns one figment error into a problem with a full key path and its origin (`origin` when
/// the error itself carries none: values deserialized outside figment, such as a route).
fn invalid_from_figment(e: &figment::Error, origin: Option<String>) -> Invalid {
    use figment::error::Kind;
    let mut path = e.path.clone();
    // serde reports a missing field at its parent, and inside internally tagged tables
    // (`kind = ...`, `type = ...`) figment's path stops at the table: name the field itself.
    if let Kind::UnknownField(field, _) = &e.kind
        && path.last() != Some(field)
    {
        path.push(field.clone());
    }
    let problem = match &e.kind {
        Kind::UnknownField(_, []) => "unknown key (this table takes no keys)".to_owned(),
        Kind::UnknownField(_, expected) => {
            format!("unknown key (expected one of: {})", expected.join(", "))
        }
        Kind::MissingField(field) => {
            path.push(field.to_string());
            "required key is missing".to_owned()
        }
        other => without_rust_types(&other.to_string()),
    };
    let key = if path.is_empty() {
        "(document)".to_owned()
    } else {
        path.join(".")
    };
    let origin = e
        .metadata
        .as_ref()
        .map(|md| {
            if md.name.contains("environment") {
                let upper: Vec<String> = e.path.iter().map(|k| k.to_ascii_uppercase()).collect();
                format!("environment variable {ENV_PREFIX}{}", upper.join("__"))
            } else {
                metadata_origin(md)
            }
        })
        .or(origin);
    Invalid {
        key,
        origin,
        problem: Problem::Value(problem),
    }
}

/// `SRB_*` environment variables, nested on `__`, with error origins that name the variable.
struct EnvOverrides(Env);

impl EnvOverrides {
    fn new() -> Self {
        Self(Env::prefixed(ENV_PREFIX).split("__"))
    }
}

impl figment::Provider for EnvOverrides {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        self.0.data()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests;
