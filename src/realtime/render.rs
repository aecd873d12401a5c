//! A profile rendered to each dialect's `session.update`.
//!
//! GA (OpenAI and Azure alike) nests the audio settings under `session.audio.{input,output}`,
//! needs `session.type = "realtime"` and writes formats as objects; the Azure preview uses the
//! flat beta fields (`input_audio_format: "g711_ulaw"`, `voice`, `modalities`). Two things
//! are easy to get wrong and are pinned by the golden tests below: noise reduction is an object
//! or `null`, never a boolean (an old Azure doc said boolean), and `idle_timeout_ms` exists
//! only in GA (and only when set). The model is not part of the session: it is fixed by the
//! connect URL.
//!
//! Tools have the same shape in every dialect: the profile's webhook tools, then the built-in
//! `end_call` (when enabled) and `transfer_call` (when the profile has transfer targets; its
//! `target` argument is an enum of their names, and its description lists what each is; the
//! `transfer_announcement` is not in it, the call has the model say it when it transfers).

use serde_json::{Map, Value, json};

use super::Dialect;
use crate::config::{
    AudioFormat, END_CALL_TOOL, Eagerness, NoiseReduction, ProfileConfig, TRANSFER_CALL_TOOL,
    TranscriptionConfig, TurnDetection,
};

/// What the model is told `end_call` does when the profile does not say.
pub const END_CALL_DESCRIPTION: &str = "End the telephone call (hang up). Use it when the \
    caller says goodbye or asks to end the call, after you have said goodbye.";

/// The complete `session.update` event for `profile` in `dialect`, without an `event_id` (the
/// session core adds one when it sends it).
pub fn session_update(profile: &ProfileConfig, dialect: Dialect) -> Value {
    json!({ "type": "session.update", "session": session_object(profile, dialect) })
}

/// The `session` object of [`session_update`].
pub fn session_object(profile: &ProfileConfig, dialect: Dialect) -> Value {
    let tools = tool_definitions(profile);
    let transcription = profile.transcription.as_ref().map(transcription);
    let noise_reduction = noise_reduction(profile.noise_reduction);
    match dialect {
        Dialect::OpenAiGa | Dialect::AzureGa => {
            let format = ga_format(profile.audio_format);
            json!({
                "type": "realtime",
                "instructions": profile.instructions,
                "output_modalities": ["audio"],
                "audio": {
                    "input": {
                        "format": format,
                        "noise_reduction": noise_reduction,
                        "transcription": transcription,
                        "turn_detection": turn_detection(&profile.turn_detection, dialect),
                    },
                    "output": {
                        "format": format,
                        "voice": profile.voice,
                    },
                },
                "tools": tools,
                "tool_choice": "auto",
            })
        }
        Dialect::AzurePreview => {
            let format = preview_format(profile.audio_format);
            json!({
                // The preview cannot do audio alone; text comes along as the transcript.
                "modalities": ["text", "audio"],
                "instructions": profile.instructions,
                "voice": profile.voice,
                "input_audio_format": format,
                "output_audio_format": format,
                "input_audio_noise_reduction": noise_reduction,
                "input_audio_transcription": transcription,
                "turn_detection": turn_detection(&profile.turn_detection, dialect),
                "tools": tools,
                "tool_choice": "auto",
            })
        }
    }
}

/// The `tools` array of the session: webhook tools, then the built-ins the profile enables.
pub fn tool_definitions(profile: &ProfileConfig) -> Vec<Value> {
    let mut tools: Vec<Value> = profile
        .tools
        .iter()
        .map(|t| {
            json!({
                "type": "function",
                "name": t.name.as_str(),
                "description": t.description,
                "parameters": t.parameters,
            })
        })
        .collect();
    if profile.end_call {
        tools.push(json!({
            "type": "function",
            "name": END_CALL_TOOL,
            "description": profile.end_call_description.as_deref().unwrap_or(END_CALL_DESCRIPTION),
            "parameters": { "type": "object", "properties": {} },
        }));
    }
    if !profile.transfer_targets.is_empty() {
        let mut description = String::from(
            "Transfer the caller to a person or department (the call leaves you). Targets:",
        );
        for target in &profile.transfer_targets {
            description.push_str(&format!("\n- {}: {}", target.name, target.description));
        }
        // `transfer_announcement` is not part of the description: the call asks the model to
        // say it once the function has been called, so it is said exactly once.
        let names: Vec<&str> = profile
            .transfer_targets
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        tools.push(json!({
            "type": "function",
            "name": TRANSFER_CALL_TOOL,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {
                    "target": {
                        "type": "string",
                        "enum": names,
                        "description": "Where to transfer the caller.",
                    },
                },
                "required": ["target"],
            },
        }));
    }
    tools
}

fn ga_format(format: AudioFormat) -> Value {
    match format {
        // `Auto` is resolved per call before a session exists; unresolved it means pcm16.
        AudioFormat::Pcm16 | AudioFormat::Auto => json!({ "type": "audio/pcm", "rate": 24000 }),
        AudioFormat::G711Ulaw => json!({ "type": "audio/pcmu" }),
        AudioFormat::G711Alaw => json!({ "type": "audio/pcma" }),
    }
}

fn preview_format(format: AudioFormat) -> Value {
    Value::from(match format {
        AudioFormat::Pcm16 | AudioFormat::Auto => "pcm16",
        AudioFormat::G711Ulaw => "g711_ulaw",
        AudioFormat::G711Alaw => "g711_alaw",
    })
}

fn noise_reduction(nr: NoiseReduction) -> Value {
    match nr {
        NoiseReduction::NearField => json!({ "type": "near_field" }),
        NoiseReduction::FarField => json!({ "type": "far_field" }),
        NoiseReduction::Off => Value::Null,
    }
}

fn transcription(t: &TranscriptionConfig) -> Value {
    let mut object = Map::new();
    object.insert("model".into(), Value::from(t.model.as_str()));
    if let Some(language) = &t.language {
        object.insert("language".into(), Value::from(language.as_str()));
    }
    if let Some(prompt) = &t.prompt {
        object.insert("prompt".into(), Value::from(prompt.as_str()));
    }
    Value::Object(object)
}

fn turn_detection(td: &TurnDetection, dialect: Dialect) -> Value {
    match td {
        TurnDetection::ServerVad(v) => {
            let mut object = json!({
                "type": "server_vad",
                "threshold": v.threshold,
                "prefix_padding_ms": v.prefix_padding_ms,
                "silence_duration_ms": v.silence_duration_ms,
                "create_response": v.create_response,
                "interrupt_response": v.interrupt_response,
            });
            // GA only: the preview schema has no idle timeout, and an unknown key is an error.
            if let (Some(ms), Dialect::OpenAiGa | Dialect::AzureGa, Some(map)) =
                (v.idle_timeout_ms, dialect, object.as_object_mut())
            {
                map.insert("idle_timeout_ms".into(), Value::from(ms));
            }
            object
        }
        TurnDetection::SemanticVad(v) => json!({
            "type": "semantic_vad",
            "eagerness": match v.eagerness {
                Eagerness::Low => "low",
                Eagerness::Medium => "medium",
                Eagerness::High => "high",
                Eagerness::Auto => "auto",
            },
            "create_response": v.create_response,
            "interrupt_response": v.interrupt_response,
        }),
        TurnDetection::None => Value::Null,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn profile(body: &str) -> ProfileConfig {
        let config = Config::from_toml(&format!(
            "[upstreams.u]\nkind = \"fake\"\n[profiles.p]\nupstream = \"u\"\n{body}\n\
             [[routes]]\nprofile = \"p\"\n"
        ))
        .unwrap();
        config.profiles.into_values().next().unwrap()
    }

    /// Every field set: G.711 mu-law, near-field noise reduction, transcription with language
    /// and prompt, server VAD with an idle timeout, one tool.
    fn full() -> ProfileConfig {
        profile(
            r#"
            instructions = "Be brief."
            voice = "marin"
            audio_format = "g711_ulaw"
            noise_reduction = "near_field"
            greeting = "Say hello."
            [profiles.p.transcription]
            model = "gpt-4o-transcribe"
            language = "de"
            prompt = "Bestellnummer"
            [profiles.p.turn_detection]
            type = "server_vad"
            threshold = 0.6
            prefix_padding_ms = 200
            silence_duration_ms = 400
            create_response = true
            interrupt_response = false
            idle_timeout_ms = 8000
            [[profiles.p.tools]]
            name = "lookup_order"
            description = "Find an order"
            parameters = { type = "object", properties = { id = { type = "string" } }, required = ["id"] }
            url = "https://crm.example.com/order"
            "#,
        )
    }

    /// Nothing set but the upstream: defaults (pcm16, no noise reduction, no transcription,
    /// default server VAD, no tools).
    fn minimal() -> ProfileConfig {
        profile("")
    }

    const DEFAULT_INSTRUCTIONS: &str = "You are a helpful voice assistant answering a telephone \
        call. Keep answers short and conversational.";

    fn full_tools() -> Value {
        json!([{
            "type": "function",
            "name": "lookup_order",
            "description": "Find an order",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}
        }])
    }

    fn full_ga() -> Value {
        json!({
            "type": "session.update",
            "session": {
                "type": "realtime",
                "instructions": "Be brief.",
                "output_modalities": ["audio"],
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcmu"},
                        "noise_reduction": {"type": "near_field"},
                        "transcription": {"model": "gpt-4o-transcribe", "language": "de", "prompt": "Bestellnummer"},
                        "turn_detection": {
                            "type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 200,
                            "silence_duration_ms": 400, "create_response": true,
                            "interrupt_response": false, "idle_timeout_ms": 8000
                        }
                    },
                    "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}
                },
                "tools": full_tools(),
                "tool_choice": "auto"
            }
        })
    }

    fn minimal_ga() -> Value {
        json!({
            "type": "session.update",
            "session": {
                "type": "realtime",
                "instructions": DEFAULT_INSTRUCTIONS,
                "output_modalities": ["audio"],
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "noise_reduction": null,
                        "transcription": null,
                        "turn_detection": {
                            "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                            "silence_duration_ms": 500, "create_response": true,
                            "interrupt_response": true
                        }
                    },
                    "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}
                },
                "tools": [],
                "tool_choice": "auto"
            }
        })
    }

    #[test]
    fn openai_ga_full_profile() {
        assert_eq!(session_update(&full(), Dialect::OpenAiGa), full_ga());
    }

    #[test]
    fn openai_ga_minimal_profile() {
        assert_eq!(session_update(&minimal(), Dialect::OpenAiGa), minimal_ga());
    }

    #[test]
    fn azure_ga_full_profile_is_the_openai_ga_shape() {
        assert_eq!(session_update(&full(), Dialect::AzureGa), full_ga());
    }

    #[test]
    fn azure_ga_minimal_profile_is_the_openai_ga_shape() {
        assert_eq!(session_update(&minimal(), Dialect::AzureGa), minimal_ga());
    }

    #[test]
    fn azure_preview_full_profile_is_flat_without_idle_timeout() {
        assert_eq!(
            session_update(&full(), Dialect::AzurePreview),
            json!({
                "type": "session.update",
                "session": {
                    "modalities": ["text", "audio"],
                    "instructions": "Be brief.",
                    "voice": "marin",
                    "input_audio_format": "g711_ulaw",
                    "output_audio_format": "g711_ulaw",
                    "input_audio_noise_reduction": {"type": "near_field"},
                    "input_audio_transcription": {"model": "gpt-4o-transcribe", "language": "de", "prompt": "Bestellnummer"},
                    "turn_detection": {
                        "type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 200,
                        "silence_duration_ms": 400, "create_response": true,
                        "interrupt_response": false
                    },
                    "tools": full_tools(),
                    "tool_choice": "auto"
                }
            })
        );
    }

    #[test]
    fn azure_preview_minimal_profile() {
        assert_eq!(
            session_update(&minimal(), Dialect::AzurePreview),
            json!({
                "type": "session.update",
                "session": {
                    "modalities": ["text", "audio"],
                    "instructions": DEFAULT_INSTRUCTIONS,
                    "voice": "alloy",
                    "input_audio_format": "pcm16",
                    "output_audio_format": "pcm16",
                    "input_audio_noise_reduction": null,
                    "input_audio_transcription": null,
                    "turn_detection": {
                        "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                        "silence_duration_ms": 500, "create_response": true,
                        "interrupt_response": true
                    },
                    "tools": [],
                    "tool_choice": "auto"
                }
            })
        );
    }

    /// A webhook tool, end_call with the default description, two transfer targets and an
    /// announcement (which the call speaks, not the tool description).
    fn with_built_ins() -> ProfileConfig {
        profile(
            r#"
            end_call = true
            transfer_announcement = "One moment, I am connecting you."
            [[profiles.p.tools]]
            name = "lookup_order"
            description = "Find an order"
            parameters = { type = "object", properties = { id = { type = "string" } }, required = ["id"] }
            url = "https://crm.example.com/order"
            [[profiles.p.transfer_targets]]
            name = "operator"
            description = "The front desk"
            uri = "sip:100@pbx.example.com"
            [[profiles.p.transfer_targets]]
            name = "billing"
            description = "Invoices and payments"
            uri = "sip:200@pbx.example.com"
            "#,
        )
    }

    fn built_in_tools() -> Value {
        json!([
            full_tools()[0],
            {
                "type": "function",
                "name": "end_call",
                "description": "End the telephone call (hang up). Use it when the caller says \
                    goodbye or asks to end the call, after you have said goodbye.",
                "parameters": {"type": "object", "properties": {}}
            },
            {
                "type": "function",
                "name": "transfer_call",
                "description": "Transfer the caller to a person or department (the call leaves \
                    you). Targets:\n- operator: The front desk\n- billing: Invoices and \
                    payments",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "target": {
                            "type": "string",
                            "enum": ["operator", "billing"],
                            "description": "Where to transfer the caller."
                        }
                    },
                    "required": ["target"]
                }
            }
        ])
    }

    #[test]
    fn built_in_tools_follow_webhook_tools_in_every_dialect() {
        let p = with_built_ins();
        for dialect in [Dialect::OpenAiGa, Dialect::AzureGa, Dialect::AzurePreview] {
            let update = session_update(&p, dialect);
            assert_eq!(update["session"]["tools"], built_in_tools(), "{dialect:?}");
            assert_eq!(
                update["session"]["tool_choice"],
                json!("auto"),
                "{dialect:?}"
            );
        }
    }

    #[test]
    fn end_call_alone_with_its_own_description_and_transfer_without_announcement() {
        let p = profile("end_call = true\nend_call_description = \"Hang up when done.\"");
        assert_eq!(
            session_update(&p, Dialect::AzurePreview)["session"]["tools"],
            json!([{
                "type": "function",
                "name": "end_call",
                "description": "Hang up when done.",
                "parameters": {"type": "object", "properties": {}}
            }])
        );
        let p = profile(
            "[[profiles.p.transfer_targets]]\nname = \"sales\"\ndescription = \"Sales team\"\n\
             uri = \"sip:sales@pbx.example.com\"",
        );
        let tools = session_update(&p, Dialect::OpenAiGa)["session"]["tools"].clone();
        assert_eq!(tools.as_array().unwrap().len(), 1);
        assert_eq!(tools[0]["name"], json!("transfer_call"));
        assert_eq!(
            tools[0]["description"],
            json!(
                "Transfer the caller to a person or department (the call leaves you). \
                 Targets:\n- sales: Sales team"
            )
        );
        assert_eq!(
            tools[0]["parameters"]["properties"]["target"]["enum"],
            json!(["sales"])
        );
    }

    #[test]
    fn semantic_vad_alaw_far_field_and_no_vad_render_in_both_shapes() {
        let semantic = profile(
            "audio_format = \"g711_alaw\"\nnoise_reduction = \"far_field\"\n\
             [profiles.p.turn_detection]\ntype = \"semantic_vad\"\neagerness = \"low\"",
        );
        let ga = session_update(&semantic, Dialect::OpenAiGa);
        assert_eq!(
            ga["session"]["audio"]["input"],
            json!({
                "format": {"type": "audio/pcma"},
                "noise_reduction": {"type": "far_field"},
                "transcription": null,
                "turn_detection": {"type": "semantic_vad", "eagerness": "low",
                                   "create_response": true, "interrupt_response": true}
            })
        );
        let preview = session_update(&semantic, Dialect::AzurePreview);
        assert_eq!(preview["session"]["input_audio_format"], json!("g711_alaw"));
        assert_eq!(
            preview["session"]["input_audio_noise_reduction"],
            json!({"type": "far_field"})
        );
        assert_eq!(
            preview["session"]["turn_detection"],
            json!({"type": "semantic_vad", "eagerness": "low",
                   "create_response": true, "interrupt_response": true})
        );

        let push_to_talk = profile("[profiles.p.turn_detection]\ntype = \"none\"");
        let ga = session_update(&push_to_talk, Dialect::AzureGa);
        assert_eq!(
            ga["session"]["audio"]["input"]["turn_detection"],
            Value::Null
        );
        let preview = session_update(&push_to_talk, Dialect::AzurePreview);
        assert_eq!(preview["session"]["turn_detection"], Value::Null);
    }
}
