use super::*;
use crate::config::Config;

const PROFILE: &str = r##"
[upstreams.local]
kind = "fake"

[profiles.desk]
upstream = "local"
end_call = true
[[profiles.desk.tools]]
name = "lookup_order"
description = "Find an order"
parameters = { type = "object", properties = { id = { type = "string" } } }
url = "https://crm.example.com/order"
timeout = "2s"
headers = { Authorization = { value_env = "CRM_TOKEN" }, X-Tenant = { value = "acme" } }
[[profiles.desk.transfer_targets]]
name = "operator"
description = "The front desk"
uri = "sip:100@pbx.example.com"
[[profiles.desk.transfer_targets]]
name = "billing"
description = "Invoices"
uri = "sip:200@pbx.example.com"
[profiles.desk.dtmf.actions]
"0" = { transfer = "operator" }
"#" = { end_call = true }
"D" = { transfer = "billing" }

[profiles.bare]
upstream = "local"

[[routes]]
profile = "desk"
"##;

fn config() -> Config {
    Config::from_toml(PROFILE).unwrap()
}

fn desk(config: &Config) -> &ProfileConfig {
    &config.profiles[&"desk".parse().unwrap()]
}

fn bare(config: &Config) -> &ProfileConfig {
    &config.profiles[&"bare".parse().unwrap()]
}

fn call() -> CallInfo {
    CallInfo {
        call_id: "a84b4c76e66710@pc33.example.com".into(),
        route: "desk".into(),
        profile: "desk".into(),
        caller: "+4930123456".into(),
        callee: "100".into(),
    }
}

fn run(profile: &ProfileConfig, name: &str, arguments: &str) -> ToolInvocation {
    invoke(profile, &call(), CallId::new("call_7"), name, arguments)
}

/// The output of a rejected call, parsed.
fn rejected(invocation: ToolInvocation) -> Value {
    match invocation {
        ToolInvocation::Reject { call_id, output } => {
            assert_eq!(call_id.as_str(), "call_7");
            serde_json::from_str(&output).unwrap()
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn a_webhook_tool_becomes_a_post_with_the_call_and_the_arguments() {
    let config = config();
    let invocation = run(desk(&config), "lookup_order", r#"{"id": "A-17", "n": 2}"#);
    let ToolInvocation::Webhook {
        call_id,
        url,
        timeout,
        headers,
        body,
    } = invocation
    else {
        panic!("expected a webhook: {invocation:?}")
    };
    assert_eq!(call_id.as_str(), "call_7");
    assert_eq!(url.url().as_str(), "https://crm.example.com/order");
    assert_eq!(timeout, Duration::from_secs(2));
    let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
    assert_eq!(names, ["Authorization", "X-Tenant"]);
    // The secret travels as its source; the shell loads it.
    assert_eq!(
        headers.values().next().unwrap(),
        &HeaderValue::Secret(crate::config::SecretSource::Env("CRM_TOKEN".into()))
    );
    assert_eq!(
        body,
        json!({
            "call_id": "a84b4c76e66710@pc33.example.com",
            "caller": "+4930123456",
            "callee": "100",
            "tool": "lookup_order",
            "arguments": {"id": "A-17", "n": 2},
        })
    );
}

#[test]
fn empty_arguments_count_as_an_empty_object() {
    let config = config();
    for arguments in ["", "  ", "{}"] {
        let ToolInvocation::Webhook { body, .. } = run(desk(&config), "lookup_order", arguments)
        else {
            panic!("{arguments:?}")
        };
        assert_eq!(body["arguments"], json!({}), "{arguments:?}");
    }
    assert_eq!(
        run(desk(&config), "end_call", ""),
        ToolInvocation::EndCall {
            call_id: "call_7".into()
        }
    );
}

#[test]
fn arguments_that_are_not_a_json_object_are_rejected_with_a_reason() {
    let config = config();
    let output = rejected(run(desk(&config), "lookup_order", "[1, 2]"));
    assert_eq!(
        output,
        json!({"error": "the arguments of lookup_order are not a JSON object"})
    );
    let output = rejected(run(desk(&config), "lookup_order", r#"{"id": "#));
    let error = output["error"].as_str().unwrap();
    assert!(
        error.starts_with("the arguments of lookup_order are not valid JSON ("),
        "{error}"
    );
    let output = rejected(run(desk(&config), "transfer_call", "\"operator\""));
    assert_eq!(
        output,
        json!({"error": "the arguments of transfer_call are not a JSON object"})
    );
}

#[test]
fn end_call_ends_the_call_whatever_the_arguments_say() {
    let config = config();
    assert_eq!(
        run(
            desk(&config),
            "end_call",
            r#"{"reason": "caller said bye"}"#
        ),
        ToolInvocation::EndCall {
            call_id: "call_7".into()
        }
    );
}

#[test]
fn transfer_call_resolves_the_target_name_to_its_uri() {
    let config = config();
    assert_eq!(
        run(desk(&config), "transfer_call", r#"{"target": "billing"}"#),
        ToolInvocation::Transfer {
            call_id: "call_7".into(),
            target_name: "billing".into(),
            uri: "sip:200@pbx.example.com".parse().unwrap(),
        }
    );
}

#[test]
fn an_unknown_or_missing_target_is_rejected_with_the_known_ones() {
    let config = config();
    assert_eq!(
        rejected(run(
            desk(&config),
            "transfer_call",
            r#"{"target": "sales"}"#
        )),
        json!({
            "error": "there is no transfer target named `sales`",
            "targets": ["operator", "billing"],
        })
    );
    // Names are exact: the enum the model saw is case-sensitive.
    assert!(matches!(
        run(desk(&config), "transfer_call", r#"{"target": "Operator"}"#),
        ToolInvocation::Reject { .. }
    ));
    for arguments in ["{}", r#"{"target": 7}"#, r#"{"destination": "operator"}"#] {
        assert_eq!(
            rejected(run(desk(&config), "transfer_call", arguments)),
            json!({
                "error": "transfer_call needs a `target`: one of the names in `targets`",
                "targets": ["operator", "billing"],
            }),
            "{arguments}"
        );
    }
}

#[test]
fn unknown_tools_are_rejected_with_what_is_available() {
    let config = config();
    assert_eq!(
        rejected(run(desk(&config), "get_weather", "{}")),
        json!({
            "error": "there is no tool named `get_weather` on this line",
            "available": ["lookup_order", "end_call", "transfer_call"],
        })
    );
    // Built-ins the profile does not enable do not exist for it.
    for name in ["end_call", "transfer_call", "lookup_order"] {
        assert_eq!(
            rejected(run(bare(&config), name, "{}")),
            json!({
                "error": format!("there is no tool named `{name}` on this line"),
                "available": [],
            })
        );
    }
}

#[test]
fn every_invocation_names_its_call() {
    let config = config();
    for (name, arguments) in [
        ("lookup_order", "{}"),
        ("end_call", "{}"),
        ("transfer_call", r#"{"target": "operator"}"#),
        ("nope", "{}"),
    ] {
        assert_eq!(
            run(desk(&config), name, arguments).call_id().as_str(),
            "call_7"
        );
    }
}

fn output(outcome: WebhookOutcome) -> Value {
    serde_json::from_str(&webhook_output(&outcome, Duration::from_secs(5))).unwrap()
}

fn response(status: u16, body: &[u8]) -> WebhookOutcome {
    WebhookOutcome::Response {
        status,
        body: body.to_vec(),
    }
}

#[test]
fn a_2xx_json_answer_is_the_output_as_it_is() {
    let body = br#"{"status": "shipped", "eta": "Monday"}"#;
    assert_eq!(
        webhook_output(&response(200, body), Duration::from_secs(5)),
        String::from_utf8(body.to_vec()).unwrap()
    );
    // Any JSON value, any 2xx; surrounding whitespace goes.
    assert_eq!(
        webhook_output(&response(201, b" [1, 2]\n"), Duration::from_secs(5)),
        "[1, 2]"
    );
    assert_eq!(
        webhook_output(&response(202, b"\"done\""), Duration::from_secs(5)),
        "\"done\""
    );
}

#[test]
fn a_2xx_answer_without_a_body_means_ok() {
    assert_eq!(output(response(204, b"")), json!({"ok": true}));
    assert_eq!(output(response(200, b" \r\n")), json!({"ok": true}));
}

#[test]
fn a_2xx_text_answer_is_wrapped_and_cut_to_8_kib() {
    assert_eq!(
        output(response(200, b"Your order ships Monday.\n")),
        json!({"result": "Your order ships Monday."})
    );
    let long = "ü".repeat(5000); // 10,000 bytes, two per character
    let out = output(response(200, long.as_bytes()));
    let text = out["result"].as_str().unwrap();
    assert_eq!(text.len(), MAX_TEXT_OUTPUT);
    assert!(text.chars().all(|c| c == 'ü'));
    assert_eq!(out["truncated"], json!(true));
    // Not UTF-8: replaced, never a failure.
    let out = output(response(200, &[0x66, 0xff, 0x6f]));
    assert_eq!(out, json!({"result": "f\u{fffd}o"}));
    // A cut on a character boundary below the limit, when the limit falls inside one.
    let odd = format!("a{}", "€".repeat(4000)); // 1 + 12,000 bytes
    let out = output(response(200, odd.as_bytes()));
    let text = out["result"].as_str().unwrap();
    assert!(text.len() <= MAX_TEXT_OUTPUT && text.len() > MAX_TEXT_OUTPUT - 3);
}

#[test]
fn other_statuses_are_errors_with_the_status_and_a_short_detail() {
    assert_eq!(
        output(response(503, b"")),
        json!({"error": "the service answered HTTP 503", "status": 503})
    );
    assert_eq!(
        output(response(404, br#"{"message": "no such order"}"#)),
        json!({
            "error": "the service answered HTTP 404",
            "status": 404,
            "detail": {"message": "no such order"},
        })
    );
    let out = output(response(500, "x".repeat(5000).as_bytes()));
    assert_eq!(out["error"], json!("the service answered HTTP 500"));
    assert_eq!(out["detail"].as_str().unwrap().len(), 1024);
    // A redirect is not followed, and not a success.
    assert_eq!(
        output(response(302, b""))["error"],
        json!("the service answered HTTP 302")
    );
}

#[test]
fn a_timeout_names_the_limit() {
    assert_eq!(
        output(WebhookOutcome::Timeout),
        json!({"error": "the service did not answer within 5 s"})
    );
    let out = webhook_output(&WebhookOutcome::Timeout, Duration::from_millis(2500));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"error": "the service did not answer within 2.5 s"})
    );
}

#[test]
fn a_failure_is_an_error_with_its_description() {
    assert_eq!(
        output(WebhookOutcome::Error("connection refused".into())),
        json!({"error": "the service could not be reached: connection refused"})
    );
}

#[test]
fn built_in_outputs_are_json() {
    assert_eq!(
        serde_json::from_str::<Value>(ACCEPTED_OUTPUT).unwrap(),
        json!({"ok": true})
    );
    assert_eq!(
        serde_json::from_str::<Value>(&transfer_failed_output("operator", "busy (486)")).unwrap(),
        json!({"error": "the transfer to operator failed: busy (486)"})
    );
}

#[test]
fn digits_with_actions_resolve_to_what_they_do() {
    let config = config();
    let p = desk(&config);
    assert_eq!(
        digit_action(p, '0'),
        Some(KeyAction::Transfer {
            target_name: "operator".into(),
            uri: "sip:100@pbx.example.com".parse().unwrap(),
        })
    );
    assert_eq!(digit_action(p, '#'), Some(KeyAction::EndCall));
    // Lower-case letters are the same keys.
    for d in ['D', 'd'] {
        assert!(
            matches!(digit_action(p, d), Some(KeyAction::Transfer { ref target_name, .. }) if target_name == "billing")
        );
    }
    // Keys without an action, and characters that are no key at all.
    for d in ['1', '*', 'A', 'x', 'E', ' ', 'ü'] {
        assert_eq!(digit_action(p, d), None, "{d:?}");
    }
    assert_eq!(digit_action(bare(&config), '0'), None);
}
