//! What a function call from the model does, and what the model hears back (sans-IO).
//!
//! The model calls a function ([`SessionEvent::ToolCall`](crate::realtime::SessionEvent)): a
//! call id, a name and a JSON string of arguments. [`invoke`] decides, from the call's profile
//! alone, what that means:
//!
//! - a webhook tool of the profile: POST a JSON body to its URL ([`ToolInvocation::Webhook`];
//!   the shell [`crate::io::webhook::post`] does it, and [`webhook_output`] turns what came back
//!   into the function's output);
//! - the built-in `end_call` (when the profile enables it): hang up ([`ToolInvocation::EndCall`]);
//! - the built-in `transfer_call` (when the profile has transfer targets): transfer the caller to
//!   the named target ([`ToolInvocation::Transfer`]);
//! - anything else (an unknown tool, arguments that are not a JSON object, an unknown target):
//!   an output the model can explain to the caller, at once ([`ToolInvocation::Reject`]).
//!
//! Every outcome answers the model with a `function_call_output` string; outputs are JSON
//! objects so the model can tell a result (`{"ok": true}`, the service's JSON) from a failure
//! (`{"error": "..."}`). [`digit_action`] is the keypad's side of the same built-ins.
//!
//! Nothing here reads the clock, touches a socket or loads a secret: header secrets travel as
//! their [`HeaderValue`] sources and are loaded by the shell when the request is made.
//!
//! ```
//! use sip_realtime_bridge::call::CallInfo;
//! use sip_realtime_bridge::call::tools::{self, ToolInvocation};
//! use sip_realtime_bridge::config::Config;
//!
//! let config = Config::from_toml(r#"
//!     [upstreams.local]
//!     kind = "fake"
//!     [profiles.desk]
//!     upstream = "local"
//!     [[profiles.desk.transfer_targets]]
//!     name = "operator"
//!     description = "The front desk"
//!     uri = "sip:100@pbx.example.com"
//!     [[routes]]
//!     profile = "desk"
//! "#).expect("valid");
//! let profile = &config.profiles[&"desk".parse().expect("a name")];
//! let call = CallInfo {
//!     call_id: "a84b4c76e66710@pc33".into(),
//!     route: "desk".into(),
//!     profile: "desk".into(),
//!     caller: "+4930123".into(),
//!     callee: "100".into(),
//! };
//! match tools::invoke(profile, &call, "call_1".into(), "transfer_call", r#"{"target":"operator"}"#) {
//!     ToolInvocation::Transfer { target_name, uri, .. } => {
//!         assert_eq!((target_name.as_str(), uri.as_str()), ("operator", "sip:100@pbx.example.com"));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::call::CallInfo;
use crate::config::{
    DigitAction, END_CALL_TOOL, HeaderName, HeaderValue, ProfileConfig, SipUri, TRANSFER_CALL_TOOL,
    WebhookUrl,
};
use crate::realtime::CallId;

/// The longest text of a non-JSON webhook answer given to the model.
pub const MAX_TEXT_OUTPUT: usize = 8 * 1024;
/// The longest text of an error answer's body given to the model.
const MAX_ERROR_DETAIL: usize = 1024;

/// The output for a built-in tool that was carried out (`end_call`, a transfer that was
/// started).
pub const ACCEPTED_OUTPUT: &str = r#"{"ok":true}"#;

/// What a function call from the model comes to. Every variant carries the call id its
/// `function_call_output` must name.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolInvocation {
    /// POST `body` (JSON) to `url`, with `headers` (secrets still as their sources), within
    /// `timeout`; answer with [`webhook_output`] of the outcome.
    Webhook {
        call_id: CallId,
        url: WebhookUrl,
        timeout: Duration,
        headers: BTreeMap<HeaderName, HeaderValue>,
        body: Value,
    },
    /// Hang up. Answer with [`ACCEPTED_OUTPUT`] so the conversation stays consistent.
    EndCall { call_id: CallId },
    /// Transfer the caller to `uri` (the target named `target_name`). Answer with
    /// [`ACCEPTED_OUTPUT`], or [`transfer_failed_output`] if the transfer fails.
    Transfer {
        call_id: CallId,
        target_name: String,
        uri: SipUri,
    },
    /// Nothing to run: answer with `output` at once.
    Reject { call_id: CallId, output: String },
}

impl ToolInvocation {
    /// The function call this answers.
    pub fn call_id(&self) -> &CallId {
        match self {
            Self::Webhook { call_id, .. }
            | Self::EndCall { call_id }
            | Self::Transfer { call_id, .. }
            | Self::Reject { call_id, .. } => call_id,
        }
    }
}

/// Decides what the model's call of function `name` with `arguments` (a JSON string) does on
/// `call`, answered by `profile`.
pub fn invoke(
    profile: &ProfileConfig,
    call: &CallInfo,
    call_id: CallId,
    name: &str,
    arguments: &str,
) -> ToolInvocation {
    let reject = |call_id, output: Value| ToolInvocation::Reject {
        call_id,
        output: output.to_string(),
    };
    let webhook = profile.tool(name);
    let known = webhook.is_some()
        || (name == END_CALL_TOOL && profile.end_call)
        || (name == TRANSFER_CALL_TOOL && !profile.transfer_targets.is_empty());
    if !known {
        return reject(
            call_id,
            json!({
                "error": format!("there is no tool named `{name}` on this line"),
                "available": available_tools(profile),
            }),
        );
    }
    let arguments = match parse_arguments(arguments) {
        Ok(arguments) => arguments,
        Err(problem) => {
            return reject(
                call_id,
                json!({ "error": format!("the arguments of {name} are {problem}") }),
            );
        }
    };
    if let Some(tool) = webhook {
        return ToolInvocation::Webhook {
            call_id,
            url: tool.url.clone(),
            timeout: tool.timeout,
            headers: tool.headers.clone(),
            body: json!({
                "call_id": call.call_id,
                "caller": call.caller,
                "callee": call.callee,
                "tool": name,
                "arguments": Value::Object(arguments),
            }),
        };
    }
    if name == END_CALL_TOOL {
        return ToolInvocation::EndCall { call_id };
    }
    let targets: Vec<&str> = profile
        .transfer_targets
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    let Some(wanted) = arguments.get("target").and_then(Value::as_str) else {
        return reject(
            call_id,
            json!({
                "error": "transfer_call needs a `target`: one of the names in `targets`",
                "targets": targets,
            }),
        );
    };
    match profile.transfer_target(wanted) {
        Some(target) => ToolInvocation::Transfer {
            call_id,
            target_name: target.name.to_string(),
            uri: target.uri.clone(),
        },
        None => reject(
            call_id,
            json!({
                "error": format!("there is no transfer target named `{wanted}`"),
                "targets": targets,
            }),
        ),
    }
}

/// The names of the functions `profile` offers, in the order the session lists them.
fn available_tools(profile: &ProfileConfig) -> Vec<&str> {
    let mut names: Vec<&str> = profile.tools.iter().map(|t| t.name.as_str()).collect();
    if profile.end_call {
        names.push(END_CALL_TOOL);
    }
    if !profile.transfer_targets.is_empty() {
        names.push(TRANSFER_CALL_TOOL);
    }
    names
}

/// The arguments as a JSON object; an empty string counts as `{}` (a call without arguments).
fn parse_arguments(arguments: &str) -> Result<Map<String, Value>, String> {
    if arguments.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not valid JSON ({e})")),
    }
}

/// What a webhook request came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The service answered: the status and the body (at most 64 KiB; a longer one is cut).
    Response { status: u16, body: Vec<u8> },
    /// No complete answer within the tool's timeout.
    Timeout,
    /// The request failed (DNS, connect, TLS, protocol, a header secret that cannot be
    /// loaded): a description without secrets.
    Error(String),
}

/// The function output for a webhook's `outcome` (`timeout` is the tool's, for the message):
///
/// - 2xx with a JSON body: the body as it is;
/// - 2xx with an empty body: `{"ok": true}`;
/// - 2xx with other text: `{"result": TEXT}`, cut to 8 KiB (then `"truncated": true`);
/// - another status: `{"error": "the service answered HTTP 503", "status": 503, "detail": ...}`
///   (the detail is the body's JSON, or its text cut to 1 KiB, when there is one);
/// - a timeout: `{"error": "the service did not answer within 5 s"}`;
/// - a failure: `{"error": "the service could not be reached: ..."}`.
pub fn webhook_output(outcome: &WebhookOutcome, timeout: Duration) -> String {
    match outcome {
        WebhookOutcome::Response { status, body } if (200..300).contains(status) => {
            if body.iter().all(u8::is_ascii_whitespace) {
                return ACCEPTED_OUTPUT.into();
            }
            if serde_json::from_slice::<Value>(body).is_ok() {
                // Valid JSON is valid UTF-8 (serde_json checks), so nothing is lost here.
                return String::from_utf8_lossy(body).trim().to_owned();
            }
            let text = String::from_utf8_lossy(body);
            let (text, truncated) = truncate(text.trim(), MAX_TEXT_OUTPUT);
            let mut output = json!({ "result": text });
            if truncated && let Some(map) = output.as_object_mut() {
                map.insert("truncated".into(), Value::Bool(true));
            }
            output.to_string()
        }
        WebhookOutcome::Response { status, body } => {
            let mut output = json!({
                "error": format!("the service answered HTTP {status}"),
                "status": status,
            });
            let detail = match serde_json::from_slice::<Value>(body) {
                Ok(json) => Some(json),
                Err(_) => {
                    let text = String::from_utf8_lossy(body);
                    let (text, _) = truncate(text.trim(), MAX_ERROR_DETAIL);
                    (!text.is_empty()).then(|| Value::from(text))
                }
            };
            if let (Some(detail), Some(map)) = (detail, output.as_object_mut()) {
                map.insert("detail".into(), detail);
            }
            output.to_string()
        }
        WebhookOutcome::Timeout => json!({
            "error": format!(
                "the service did not answer within {} s",
                timeout.as_secs_f64()
            ),
        })
        .to_string(),
        WebhookOutcome::Error(detail) => json!({
            "error": format!("the service could not be reached: {detail}"),
        })
        .to_string(),
    }
}

/// `text` cut to at most `max` bytes on a character boundary, and whether it was cut.
fn truncate(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let end = text
        .char_indices()
        .map(|(i, _)| i)
        .take_while(|&i| i <= max)
        .last()
        .unwrap_or(0);
    (text.get(..end).unwrap_or(""), true)
}

/// The output when a transfer the model asked for could not be carried out (the REFER was
/// refused or failed), so the model can tell the caller.
pub fn transfer_failed_output(target_name: &str, reason: &str) -> String {
    json!({
        "error": format!("the transfer to {target_name} failed: {reason}"),
    })
    .to_string()
}

/// What a keypad key does by itself, resolved against the profile's transfer targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyAction {
    /// Hang up.
    EndCall,
    /// Transfer the caller to `uri` (the target named `target_name`).
    Transfer { target_name: String, uri: SipUri },
}

/// The action of `digit` in `profile` (`dtmf.actions`), if it has one. A digit with an action
/// is not told to the model. Lower-case `a`-`d` mean `A`-`D`.
pub fn digit_action(profile: &ProfileConfig, digit: char) -> Option<KeyAction> {
    let digit = crate::config::Digit::new(digit)?;
    match profile.dtmf.actions.get(&digit)? {
        DigitAction::EndCall => Some(KeyAction::EndCall),
        DigitAction::Transfer(name) => {
            // The configuration checked the reference, so this finds the target.
            let target = profile.transfer_target(name.as_str())?;
            Some(KeyAction::Transfer {
                target_name: target.name.to_string(),
                uri: target.uri.clone(),
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests;
