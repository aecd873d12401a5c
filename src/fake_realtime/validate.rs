//! Strict validation of client events, as the real service does it: unknown fields at any
//! level are `unknown_parameter` with the dotted path as `param`, wrong JSON types are
//! `invalid_type`, enum and range violations are `invalid_value` / `*_above_max_value` /
//! `*_below_min_value`, and a missing required field is `missing_required_parameter`.
//!
//! The allowed fields, their types, enums and ranges are transcribed (not copied) from the
//! official SDK types in `openai/openai-python`:
//! GA `src/openai/types/realtime/`: `realtime_client_event_param.py` (the event list),
//! `realtime_session_create_request_param.py`, `realtime_audio_config_param.py`,
//! `realtime_audio_config_input_param.py`, `realtime_audio_config_output_param.py`,
//! `realtime_audio_formats_param.py`, `realtime_audio_input_turn_detection_param.py`,
//! `audio_transcription_param.py`, the `conversation_item_*_event_param.py`,
//! `input_audio_buffer_*_event_param.py` and `response_*_event_param.py` files; preview
//! `src/openai/types/beta/realtime/session_update_event_param.py` and its siblings.
//!
//! Checks run in a fixed order (unknown fields, then missing required ones, then each field's
//! value) so a test can predict which problem is reported when there are several.

use serde_json::{Map, Value};

/// An `error` event's payload (`type` is always `invalid_request_error` for these).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WireError {
    /// `error.code`; `None` is sent as `null`.
    pub(crate) code: Option<&'static str>,
    pub(crate) message: String,
    pub(crate) param: Option<String>,
    /// Whether `error.event_id` echoes the client event's `event_id` (else it is `null`).
    pub(crate) echo_event_id: bool,
}

impl WireError {
    pub(crate) fn new(code: &'static str, message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            code: Some(code),
            message: message.into(),
            param: param.map(str::to_owned),
            echo_event_id: true,
        }
    }

    /// An error the service sends with `code`, `param` and `event_id` all `null`, as it does for
    /// a truncate past the end of the audio (realtime-api.md sections 1.7 and 4.3).
    pub(crate) fn uncoded(message: impl Into<String>) -> Self {
        Self {
            code: None,
            message: message.into(),
            param: None,
            echo_event_id: false,
        }
    }
}

type Checked = Result<(), WireError>;

/// Client event types the fake accepts; the list is sent back in `invalid_value` messages.
pub(crate) const CLIENT_EVENT_TYPES: &[&str] = &[
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "response.create",
    "response.cancel",
];

/// The checks a field's value can be put through.
#[derive(Clone, Copy)]
enum Check {
    Any,
    Str,
    Bool,
    Int(i64, i64),
    Num(f64, f64),
    Enum(&'static [&'static str]),
    /// An integer in range or the string `"inf"` (`max_output_tokens`).
    IntOrInf(i64, i64),
    ArrayOf(&'static Check),
    Nullable(&'static Check),
    Custom(fn(&Value, &str) -> Checked),
}

const MAX_INT: i64 = i64::MAX;
/// Upper bound of `prefix_padding_ms` and `silence_duration_ms`. The SDK types give no range
/// and the reference records none; 10 s is the fake's choice (far above any useful value), so
/// larger values are `integer_above_max_value` instead of overflowing the timeline arithmetic.
const MAX_VAD_MS: i64 = 10_000;
const FORMATS_PREVIEW: &[&str] = &["pcm16", "g711_ulaw", "g711_alaw"];
/// The built-in voices. The service refuses any other name with `invalid_value` (GA also takes
/// a custom voice as `{"id": ...}`).
const VOICES: &[&str] = &[
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar",
];

const MODALITIES: &[&str] = &["text", "audio"];
const INCLUDE: &[&str] = &["item.input_audio_transcription.logprobs"];
const NOISE_REDUCTION: &[&str] = &["near_field", "far_field"];
const EAGERNESS: &[&str] = &["low", "medium", "high", "auto"];
const ITEM_STATUS: &[&str] = &["completed", "incomplete", "in_progress"];
const ROLES: &[&str] = &["system", "user", "assistant"];

/// Checks one client event. `value` is already known to be JSON; `ga` selects the dialect.
/// Returns the event's `type` when the event is well-formed.
pub(crate) fn client_event(value: &Value, ga: bool) -> Result<&str, WireError> {
    let Some(map) = value.as_object() else {
        return Err(WireError::new(
            "invalid_event",
            format!(
                "Expected an event object, but got {} instead.",
                kind_of(value)
            ),
            None,
        ));
    };
    let Some(kind) = map.get("type") else {
        return Err(WireError::new(
            "invalid_event",
            "The 'type' field is missing.",
            Some("type"),
        ));
    };
    let Some(kind) = kind.as_str() else {
        return Err(invalid_type("type", "a string", kind));
    };
    let spec: Vec<(&str, Check)> = match kind {
        "session.update" => vec![(
            "session",
            Check::Custom(if ga { session_ga } else { session_preview }),
        )],
        "input_audio_buffer.append" => vec![("audio", Check::Str)],
        "input_audio_buffer.commit" | "input_audio_buffer.clear" => vec![],
        "conversation.item.create" => vec![
            ("previous_item_id", Check::Nullable(&Check::Str)),
            (
                "item",
                Check::Custom(if ga { item_ga } else { item_preview }),
            ),
        ],
        "conversation.item.truncate" => vec![
            ("item_id", Check::Str),
            ("content_index", Check::Int(0, MAX_INT)),
            ("audio_end_ms", Check::Int(0, MAX_INT)),
        ],
        "conversation.item.delete" | "conversation.item.retrieve" => vec![("item_id", Check::Str)],
        "response.create" => vec![(
            "response",
            Check::Custom(if ga { response_ga } else { response_preview }),
        )],
        "response.cancel" => vec![("response_id", Check::Str)],
        _ => return Err(invalid_value("type", kind, CLIENT_EVENT_TYPES)),
    };
    let required: &[&str] = match kind {
        "session.update" => &["session"],
        "input_audio_buffer.append" => &["audio"],
        "conversation.item.create" => &["item"],
        "conversation.item.truncate" => &["item_id", "content_index", "audio_end_ms"],
        "conversation.item.delete" | "conversation.item.retrieve" => &["item_id"],
        _ => &[],
    };
    let mut full: Vec<(&str, Check)> =
        vec![("type", Check::Any), ("event_id", Check::Custom(event_id))];
    full.extend(spec);
    object(map, "", &full, required)?;
    Ok(kind)
}

fn event_id(value: &Value, path: &str) -> Checked {
    let text = value
        .as_str()
        .ok_or_else(|| invalid_type(path, "a string", value))?;
    if text.len() > 512 {
        return Err(WireError::new(
            "string_above_max_length",
            format!(
                "Invalid '{path}': string too long. Expected a string with maximum length 512, but got a string with length {} instead.",
                text.len()
            ),
            Some(path),
        ));
    }
    Ok(())
}

// --- GA session -------------------------------------------------------------------------

fn session_ga(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[
            ("type", Check::Enum(&["realtime"])),
            ("model", Check::Str),
            ("instructions", Check::Str),
            ("output_modalities", Check::Custom(output_modalities)),
            ("audio", Check::Custom(audio_ga)),
            (
                "include",
                Check::Nullable(&Check::ArrayOf(&Check::Enum(INCLUDE))),
            ),
            ("max_output_tokens", Check::IntOrInf(1, 4096)),
            ("parallel_tool_calls", Check::Bool),
            ("prompt", Check::Nullable(&Check::Custom(prompt))),
            ("reasoning", Check::Custom(reasoning)),
            ("tool_choice", Check::Custom(tool_choice_ga)),
            ("tools", Check::ArrayOf(&Check::Custom(tool_ga))),
            ("tracing", Check::Nullable(&Check::Custom(tracing))),
            ("truncation", Check::Custom(truncation)),
        ],
        &["type"],
    )
}

fn output_modalities(value: &Value, path: &str) -> Checked {
    run(&Check::ArrayOf(&Check::Enum(MODALITIES)), value, path)?;
    if value.as_array().is_some_and(|a| a.len() > 1) {
        return Err(WireError::new(
            "invalid_value",
            format!(
                "Invalid '{path}': it is not possible to request both 'text' and 'audio'. Use ['audio'] (audio plus transcript) or ['text']."
            ),
            Some(path),
        ));
    }
    Ok(())
}

fn audio_ga(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[
            ("input", Check::Custom(audio_input_ga)),
            ("output", Check::Custom(audio_output_ga)),
        ],
        &[],
    )
}

fn audio_input_ga(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[
            ("format", Check::Custom(format_ga)),
            (
                "noise_reduction",
                Check::Nullable(&Check::Custom(noise_reduction)),
            ),
            (
                "transcription",
                Check::Nullable(&Check::Custom(transcription_ga)),
            ),
            (
                "turn_detection",
                Check::Nullable(&Check::Custom(turn_detection_ga)),
            ),
        ],
        &[],
    )
}

fn audio_output_ga(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[
            ("format", Check::Custom(format_ga)),
            ("speed", Check::Num(0.25, 1.5)),
            ("voice", Check::Custom(voice_ga)),
        ],
        &[],
    )
}

fn format_ga(value: &Value, path: &str) -> Checked {
    const TYPES: &[&str] = &["audio/pcm", "audio/pcmu", "audio/pcma"];
    let map = as_object(value, path)?;
    let pcm = map.get("type").and_then(Value::as_str) == Some("audio/pcm");
    let spec: &[(&str, Check)] = if pcm {
        &[
            ("type", Check::Enum(TYPES)),
            ("rate", Check::Custom(rate_24000)),
        ]
    } else {
        &[("type", Check::Enum(TYPES))]
    };
    object(map, path, spec, &["type"])
}

fn rate_24000(value: &Value, path: &str) -> Checked {
    if value.as_i64() == Some(24_000) {
        return Ok(());
    }
    if !value.is_number() {
        return Err(invalid_type(path, "an integer", value));
    }
    Err(WireError::new(
        "invalid_value",
        format!("Invalid value: {value}. Supported values are: 24000."),
        Some(path),
    ))
}

fn noise_reduction(value: &Value, path: &str) -> Checked {
    fields(value, path, &[("type", Check::Enum(NOISE_REDUCTION))], &[])
}

fn transcription_ga(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[
            ("model", Check::Str),
            ("language", Check::Str),
            ("prompt", Check::Str),
            // Newer transcription options listed by realtime-api.md section 2.5.
            ("delay", Check::Str),
            ("keywords", Check::ArrayOf(&Check::Str)),
            ("languages", Check::ArrayOf(&Check::Str)),
        ],
        &[],
    )
}

fn turn_detection_ga(value: &Value, path: &str) -> Checked {
    let map = as_object(value, path)?;
    let semantic = map.get("type").and_then(Value::as_str) == Some("semantic_vad");
    let type_check = Check::Enum(&["server_vad", "semantic_vad"]);
    if semantic {
        object(
            map,
            path,
            &[
                ("type", type_check),
                ("create_response", Check::Bool),
                ("eagerness", Check::Enum(EAGERNESS)),
                ("interrupt_response", Check::Bool),
            ],
            &["type"],
        )
    } else {
        object(
            map,
            path,
            &[
                ("type", type_check),
                ("create_response", Check::Bool),
                ("idle_timeout_ms", Check::Nullable(&Check::Int(5000, 30000))),
                ("interrupt_response", Check::Bool),
                ("prefix_padding_ms", Check::Int(0, MAX_VAD_MS)),
                ("silence_duration_ms", Check::Int(0, MAX_VAD_MS)),
                ("threshold", Check::Num(0.0, 1.0)),
            ],
            &["type"],
        )
    }
}

fn voice_ga(value: &Value, path: &str) -> Checked {
    if value.is_string() {
        return run(&Check::Enum(VOICES), value, path);
    }
    if value.is_object() {
        return fields(value, path, &[("id", Check::Str)], &["id"]);
    }
    Err(invalid_type(path, "a string or an object", value))
}

fn tool_choice_ga(value: &Value, path: &str) -> Checked {
    if value.is_string() {
        return run(&Check::Enum(&["auto", "none", "required"]), value, path);
    }
    let map = as_object(value, path)?;
    let kind = Check::Enum(&["function", "mcp"]);
    if map.get("type").and_then(Value::as_str) == Some("mcp") {
        object(
            map,
            path,
            &[
                ("type", kind),
                ("server_label", Check::Str),
                ("name", Check::Nullable(&Check::Str)),
            ],
            &["type", "server_label"],
        )
    } else {
        object(
            map,
            path,
            &[("type", kind), ("name", Check::Str)],
            &["type", "name"],
        )
    }
}

fn tool_ga(value: &Value, path: &str) -> Checked {
    let map = as_object(value, path)?;
    let kind = Check::Enum(&["function", "mcp"]);
    if map.get("type").and_then(Value::as_str) == Some("mcp") {
        object(
            map,
            path,
            &[
                ("type", kind),
                ("server_label", Check::Str),
                ("server_url", Check::Str),
                ("connector_id", Check::Str),
                ("authorization", Check::Str),
                ("headers", Check::Nullable(&Check::Any)),
                ("allowed_tools", Check::Nullable(&Check::Any)),
                ("require_approval", Check::Nullable(&Check::Any)),
                ("server_description", Check::Str),
            ],
            &["type", "server_label"],
        )
    } else {
        object(
            map,
            path,
            &[
                ("type", kind),
                ("name", Check::Str),
                ("description", Check::Str),
                ("parameters", Check::Any),
            ],
            &[],
        )
    }
}

fn tracing(value: &Value, path: &str) -> Checked {
    if value.is_string() {
        return run(&Check::Enum(&["auto"]), value, path);
    }
    fields(
        value,
        path,
        &[
            ("workflow_name", Check::Str),
            ("group_id", Check::Str),
            ("metadata", Check::Any),
        ],
        &[],
    )
}

fn truncation(value: &Value, path: &str) -> Checked {
    if value.is_string() {
        return run(&Check::Enum(&["auto", "disabled"]), value, path);
    }
    fields(
        value,
        path,
        &[
            ("type", Check::Enum(&["retention_ratio"])),
            ("retention_ratio", Check::Num(0.0, 1.0)),
            ("token_limits", Check::Custom(token_limits)),
        ],
        &["type", "retention_ratio"],
    )
}

fn token_limits(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[("post_instructions", Check::Int(0, MAX_INT))],
        &[],
    )
}

fn prompt(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[
            ("id", Check::Str),
            ("version", Check::Nullable(&Check::Str)),
            ("variables", Check::Nullable(&Check::Any)),
        ],
        &["id"],
    )
}

fn reasoning(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[("effort", Check::Nullable(&Check::Str))],
        &[],
    )
}

// --- preview session ----------------------------------------------------------------------

fn session_preview(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[
            ("modalities", Check::ArrayOf(&Check::Enum(MODALITIES))),
            ("model", Check::Str),
            ("instructions", Check::Str),
            ("voice", Check::Enum(VOICES)),
            ("input_audio_format", Check::Enum(FORMATS_PREVIEW)),
            ("output_audio_format", Check::Enum(FORMATS_PREVIEW)),
            (
                "input_audio_noise_reduction",
                Check::Nullable(&Check::Custom(noise_reduction)),
            ),
            (
                "input_audio_transcription",
                Check::Nullable(&Check::Custom(transcription_preview)),
            ),
            (
                "turn_detection",
                Check::Nullable(&Check::Custom(turn_detection_preview)),
            ),
            ("tools", Check::ArrayOf(&Check::Custom(tool_preview))),
            ("tool_choice", Check::Custom(tool_choice_preview)),
            ("temperature", Check::Num(0.6, 1.2)),
            ("max_response_output_tokens", Check::IntOrInf(1, 4096)),
            ("speed", Check::Num(0.25, 1.5)),
            ("tracing", Check::Nullable(&Check::Custom(tracing))),
            (
                "include",
                Check::Nullable(&Check::ArrayOf(&Check::Enum(INCLUDE))),
            ),
        ],
        &[],
    )
}

fn transcription_preview(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[
            ("model", Check::Str),
            ("language", Check::Str),
            ("prompt", Check::Str),
        ],
        &[],
    )
}

fn turn_detection_preview(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[
            ("type", Check::Enum(&["server_vad", "semantic_vad"])),
            ("create_response", Check::Bool),
            ("eagerness", Check::Enum(EAGERNESS)),
            ("interrupt_response", Check::Bool),
            ("prefix_padding_ms", Check::Int(0, MAX_VAD_MS)),
            ("silence_duration_ms", Check::Int(0, MAX_VAD_MS)),
            ("threshold", Check::Num(0.0, 1.0)),
            // No `idle_timeout_ms`: it is GA-only (realtime-api.md sections 2.3 and 2.5).
        ],
        &[],
    )
}

fn tool_preview(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[
            ("type", Check::Enum(&["function"])),
            ("name", Check::Str),
            ("description", Check::Str),
            ("parameters", Check::Any),
        ],
        &[],
    )
}

fn tool_choice_preview(value: &Value, path: &str) -> Checked {
    // The beta object form is documented inconsistently (realtime-api.md section 2.3), so any
    // object is accepted; strings are the documented modes or a function name.
    if value.is_string() || value.is_object() {
        Ok(())
    } else {
        Err(invalid_type(path, "a string", value))
    }
}

// --- items and responses ---------------------------------------------------------------

fn item_ga(value: &Value, path: &str) -> Checked {
    let map = as_object(value, path)?;
    let kind = Check::Enum(&["message", "function_call", "function_call_output"]);
    let common = [
        ("id", Check::Str),
        ("object", Check::Enum(&["realtime.item"])),
        ("type", kind),
        ("status", Check::Enum(ITEM_STATUS)),
    ];
    let (extra, required): (&[(&str, Check)], &[&str]) =
        match map.get("type").and_then(Value::as_str) {
            Some("function_call") => (
                &[
                    ("call_id", Check::Str),
                    ("name", Check::Str),
                    ("arguments", Check::Str),
                ],
                &["type", "name", "arguments"],
            ),
            Some("function_call_output") => (
                &[("call_id", Check::Str), ("output", Check::Str)],
                &["type", "call_id", "output"],
            ),
            Some("message") => (
                &[
                    ("role", Check::Enum(ROLES)),
                    ("content", Check::ArrayOf(&Check::Custom(content_ga))),
                ],
                &["type", "role", "content"],
            ),
            _ => (&[], &["type"]),
        };
    let mut spec = common.to_vec();
    spec.extend_from_slice(extra);
    object(map, path, &spec, required)
}

fn content_ga(value: &Value, path: &str) -> Checked {
    const TYPES: &[&str] = &[
        "input_text",
        "input_audio",
        "input_image",
        "output_text",
        "output_audio",
    ];
    let map = as_object(value, path)?;
    let kind = Check::Enum(TYPES);
    let spec: &[(&str, Check)] = match map.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text") => &[("type", kind), ("text", Check::Str)],
        Some("input_audio" | "output_audio") => &[
            ("type", kind),
            ("audio", Check::Str),
            ("transcript", Check::Nullable(&Check::Str)),
        ],
        Some("input_image") => &[
            ("type", kind),
            ("image_url", Check::Str),
            ("detail", Check::Enum(&["auto", "low", "high"])),
        ],
        _ => &[("type", kind)],
    };
    object(map, path, spec, &["type"])
}

fn item_preview(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[
            ("id", Check::Str),
            ("object", Check::Enum(&["realtime.item"])),
            (
                "type",
                Check::Enum(&["message", "function_call", "function_call_output"]),
            ),
            ("status", Check::Enum(ITEM_STATUS)),
            ("role", Check::Enum(ROLES)),
            ("content", Check::ArrayOf(&Check::Custom(content_preview))),
            ("call_id", Check::Str),
            ("name", Check::Str),
            ("arguments", Check::Str),
            ("output", Check::Str),
        ],
        &[],
    )
}

fn content_preview(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[
            (
                "type",
                Check::Enum(&[
                    "input_text",
                    "input_audio",
                    "item_reference",
                    "text",
                    "audio",
                ]),
            ),
            ("text", Check::Str),
            ("audio", Check::Str),
            ("transcript", Check::Nullable(&Check::Str)),
            ("id", Check::Str),
        ],
        &[],
    )
}

fn response_ga(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[
            ("output_modalities", Check::Custom(output_modalities)),
            ("instructions", Check::Str),
            ("audio", Check::Custom(response_audio_ga)),
            ("tools", Check::ArrayOf(&Check::Custom(tool_ga))),
            ("tool_choice", Check::Custom(tool_choice_ga)),
            ("max_output_tokens", Check::IntOrInf(1, 4096)),
            ("conversation", Check::Str),
            ("metadata", Check::Nullable(&Check::Any)),
            ("input", Check::ArrayOf(&Check::Any)),
            ("prompt", Check::Nullable(&Check::Custom(prompt))),
            ("reasoning", Check::Custom(reasoning)),
            ("parallel_tool_calls", Check::Bool),
        ],
        &[],
    )
}

fn response_audio_ga(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[("output", Check::Custom(response_audio_output_ga))],
        &[],
    )
}

fn response_audio_output_ga(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[
            ("format", Check::Custom(format_ga)),
            ("voice", Check::Custom(voice_ga)),
        ],
        &[],
    )
}

fn response_preview(value: &Value, path: &str) -> Checked {
    fields(
        value,
        path,
        &[
            ("modalities", Check::ArrayOf(&Check::Enum(MODALITIES))),
            ("instructions", Check::Str),
            ("voice", Check::Enum(VOICES)),
            ("output_audio_format", Check::Enum(FORMATS_PREVIEW)),
            ("tools", Check::ArrayOf(&Check::Custom(tool_preview))),
            ("tool_choice", Check::Custom(tool_choice_preview)),
            ("temperature", Check::Num(0.6, 1.2)),
            ("max_response_output_tokens", Check::IntOrInf(1, 4096)),
            ("conversation", Check::Str),
            ("metadata", Check::Nullable(&Check::Any)),
            ("input", Check::ArrayOf(&Check::Any)),
        ],
        &[],
    )
}

// --- the machinery ----------------------------------------------------------------------

fn fields(value: &Value, path: &str, spec: &[(&str, Check)], required: &[&str]) -> Checked {
    object(as_object(value, path)?, path, spec, required)
}

fn as_object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, WireError> {
    value
        .as_object()
        .ok_or_else(|| invalid_type(path, "an object", value))
}

fn object(
    map: &Map<String, Value>,
    path: &str,
    spec: &[(&str, Check)],
    required: &[&str],
) -> Checked {
    if let Some(key) = map
        .keys()
        .find(|key| !spec.iter().any(|(name, _)| name == key))
    {
        let param = join(path, key);
        return Err(WireError::new(
            "unknown_parameter",
            format!("Unknown parameter: '{param}'."),
            Some(&param),
        ));
    }
    if let Some(key) = required.iter().find(|key| !map.contains_key(**key)) {
        let param = join(path, key);
        return Err(WireError::new(
            "missing_required_parameter",
            format!("Missing required parameter: '{param}'."),
            Some(&param),
        ));
    }
    for (name, check) in spec {
        if let Some(value) = map.get(*name) {
            run(check, value, &join(path, name))?;
        }
    }
    Ok(())
}

fn run(check: &Check, value: &Value, path: &str) -> Checked {
    match check {
        Check::Any => Ok(()),
        Check::Str if value.is_string() => Ok(()),
        Check::Str => Err(invalid_type(path, "a string", value)),
        Check::Bool if value.is_boolean() => Ok(()),
        Check::Bool => Err(invalid_type(path, "a boolean", value)),
        Check::Int(min, max) => integer(value, path, *min, *max),
        Check::Num(min, max) => number(value, path, *min, *max),
        Check::Enum(allowed) => match value.as_str() {
            Some(text) if allowed.contains(&text) => Ok(()),
            Some(text) => Err(invalid_value(path, text, allowed)),
            None => Err(invalid_type(path, "a string", value)),
        },
        Check::IntOrInf(min, max) => match value.as_str() {
            Some("inf") => Ok(()),
            Some(text) => Err(invalid_value(path, text, &["inf"])),
            None => integer(value, path, *min, *max),
        },
        Check::ArrayOf(inner) => {
            let items = value
                .as_array()
                .ok_or_else(|| invalid_type(path, "an array", value))?;
            for (index, item) in items.iter().enumerate() {
                run(inner, item, &format!("{path}[{index}]"))?;
            }
            Ok(())
        }
        Check::Nullable(_) if value.is_null() => Ok(()),
        Check::Nullable(inner) => run(inner, value, path),
        Check::Custom(check) => check(value, path),
    }
}

fn integer(value: &Value, path: &str, min: i64, max: i64) -> Checked {
    let number = match (value.as_i64(), value.as_u64()) {
        (Some(n), _) => n,
        (None, Some(_)) => i64::MAX,
        (None, None) => return Err(invalid_type(path, "an integer", value)),
    };
    if number < min {
        return Err(WireError::new(
            "integer_below_min_value",
            format!(
                "Invalid '{path}': integer below minimum value. Expected a value >= {min}, but got {number} instead."
            ),
            Some(path),
        ));
    }
    if number > max {
        return Err(WireError::new(
            "integer_above_max_value",
            format!(
                "Invalid '{path}': integer above maximum value. Expected a value <= {max}, but got {value} instead."
            ),
            Some(path),
        ));
    }
    Ok(())
}

fn number(value: &Value, path: &str, min: f64, max: f64) -> Checked {
    let Some(number) = value.as_f64() else {
        return Err(invalid_type(path, "a number", value));
    };
    if number < min {
        return Err(WireError::new(
            "decimal_below_min_value",
            format!(
                "Invalid '{path}': decimal below minimum value. Expected a value >= {min}, but got {number} instead."
            ),
            Some(path),
        ));
    }
    if number > max {
        return Err(WireError::new(
            "decimal_above_max_value",
            format!(
                "Invalid '{path}': decimal above maximum value. Expected a value <= {max}, but got {number} instead."
            ),
            Some(path),
        ));
    }
    Ok(())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn invalid_type(path: &str, expected: &str, got: &Value) -> WireError {
    WireError::new(
        "invalid_type",
        format!(
            "Invalid type for '{path}': expected {expected}, but got {} instead.",
            kind_of(got)
        ),
        Some(path),
    )
}

fn invalid_value(path: &str, got: &str, supported: &[&str]) -> WireError {
    let list = supported
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    WireError::new(
        "invalid_value",
        format!("Invalid value: '{got}'. Supported values are: {list}."),
        Some(path),
    )
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
