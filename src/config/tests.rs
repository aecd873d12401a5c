use super::*;

const MINIMAL: &str = r#"
[upstreams.local]
kind = "fake"

[profiles.echo]
upstream = "local"

[[routes]]
profile = "echo"
"#;

fn problems(toml: &str) -> Vec<Invalid> {
    match Config::from_toml(toml) {
        Ok(_) => panic!("expected an invalid configuration:\n{toml}"),
        Err(e) => e.problems().to_vec(),
    }
}

/// The single problem of an invalid configuration, as `(key, message)`.
fn only_problem(toml: &str) -> (String, String) {
    let p = problems(toml);
    assert_eq!(p.len(), 1, "{p:#?}");
    (p[0].key.clone(), p[0].problem.to_string())
}

#[test]
fn minimal_configuration_gets_the_documented_defaults() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(
        c.sip.listen,
        vec![
            "udp:0.0.0.0:5060".parse().unwrap(),
            "tcp:0.0.0.0:5060".parse().unwrap()
        ]
    );
    assert_eq!(c.rtp.port_range.to_string(), "20000-29999");
    assert_eq!(c.limits.max_calls.get(), 100);
    assert_eq!(c.log.level.as_str(), "info");
    assert_eq!(c.log.format, LogFormat::Text);
    let p = &c.profiles[&"echo".parse().unwrap()];
    assert_eq!(p.voice, "alloy");
    assert_eq!(p.audio_format, AudioFormat::Auto);
    assert_eq!(p.noise_reduction, NoiseReduction::Off);
    assert_eq!(
        p.turn_detection,
        TurnDetection::ServerVad(ServerVad::default())
    );
    assert!(p.turn_detection.interrupt_response());
    assert!(p.greeting.is_none() && p.transcription.is_none() && p.tools.is_empty());
    assert!(c.sip.user_agent.starts_with("sip-realtime-bridge/"));
    assert_eq!(c.sip.codecs, vec![CodecName::Pcmu, CodecName::Pcma]);
    assert_eq!(c.sip.t1, std::time::Duration::from_millis(500));
    assert_eq!(c.sip.t2, std::time::Duration::from_secs(4));
    assert!(c.sip.session_timers);
    assert_eq!((c.sip.min_se, c.sip.session_expires), (90, 1800));
    assert_eq!(
        c.limits.max_call_duration,
        std::time::Duration::from_secs(7200)
    );
}

#[test]
fn every_key_is_read_with_its_type() {
    let c = Config::from_toml(
        r#"
[log]
level = "sip_realtime_bridge=debug,warn"
format = "json"

[sip]
listen = ["udp:127.0.0.1:5070", "tcp:[::1]:5070"]
public_address = "sbc.example.com"
user_agent = "ACME bridge"

[rtp]
port_range = "40000-40099"

[limits]
max_calls = 7

[upstreams.openai]
kind = "openai"
model = "gpt-realtime-mini"
api_key_env = "OPENAI_API_KEY"
connect_timeout = "2s 500ms"

[upstreams.azure]
kind = "azure"
endpoint = "https://acme.openai.azure.com"
deployment = "rt-prod"
api_key_file = "/run/credentials/sip-realtime-bridge.service/azure-key"

[upstreams.azure-old]
kind = "azure-preview"
endpoint = "https://acme.openai.azure.com"
deployment = "rt-preview"

api_key_env = "AZURE_KEY"

[profiles.support]
upstream = "openai"
instructions = "Be brief."
voice = "marin"
audio_format = "g711_alaw"
noise_reduction = "far_field"
greeting = "Say hello."
transcription = { model = "whisper-1", language = "de", prompt = "ACME, Rechnung" }
turn_detection = { type = "server_vad", threshold = 0.7, prefix_padding_ms = 200, silence_duration_ms = 650, create_response = false, interrupt_response = false, idle_timeout_ms = 8000 }

[[profiles.support.tools]]
name = "lookup_order"
description = "Find an order by number."
parameters = { type = "object", properties = { number = { type = "string" } }, required = ["number"] }
url = "https://crm.example.com/hooks/order"

[profiles.sales]
upstream = "azure"
turn_detection = { type = "semantic_vad", eagerness = "high", interrupt_response = false }

[profiles.quiet]
upstream = "azure-old"
turn_detection = { type = "none" }

[[routes]]
name = "vip"
dialed = { prefix = "+4930" }
caller = { regex = "^\\+49170" }
profile = "sales"

[[routes]]
dialed = { regex = "^\\+4930[0-9]+$" }
profile = "support"

[[routes]]
profile = "quiet"
"#,
    )
    .unwrap();
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.sip.listen[1].transport, Transport::Tcp);
    assert_eq!(
        c.sip.public_address,
        Some(PublicAddress::Name("sbc.example.com".into()))
    );
    assert_eq!(c.rtp.port_range.pairs(), 50);
    assert_eq!(c.limits.max_calls.get(), 7);

    let UpstreamConfig::Openai(o) = &c.upstreams[&"openai".parse().unwrap()] else {
        panic!("openai upstream")
    };
    assert_eq!(o.model, "gpt-realtime-mini");
    assert_eq!(o.api_key, SecretSource::Env("OPENAI_API_KEY".into()));
    assert_eq!(o.connect_timeout, Duration::from_millis(2500));
    let UpstreamConfig::Azure(a) = &c.upstreams[&"azure".parse().unwrap()] else {
        panic!("azure upstream")
    };
    assert_eq!(a.endpoint.url().as_str(), "wss://acme.openai.azure.com/");
    assert_eq!(a.connect_timeout, Duration::from_secs(10));
    assert!(matches!(a.api_key, SecretSource::File(_)));
    let UpstreamConfig::AzurePreview(p) = &c.upstreams[&"azure-old".parse().unwrap()] else {
        panic!("azure-preview upstream")
    };
    assert_eq!(p.api_version, "2025-04-01-preview");

    let s = &c.profiles[&"support".parse().unwrap()];
    assert_eq!(s.audio_format, AudioFormat::G711Alaw);
    assert_eq!(s.noise_reduction, NoiseReduction::FarField);
    assert_eq!(
        s.transcription.as_ref().unwrap().language.as_deref(),
        Some("de")
    );
    let TurnDetection::ServerVad(v) = &s.turn_detection else {
        panic!("server_vad")
    };
    assert_eq!(
        (v.threshold, v.prefix_padding_ms, v.silence_duration_ms),
        (0.7, 200, 650)
    );
    assert_eq!(
        (v.create_response, v.interrupt_response, v.idle_timeout_ms),
        (false, false, Some(8000))
    );
    assert_eq!(
        s.tools[0].parameters["properties"]["number"]["type"],
        serde_json::json!("string")
    );
    let sales = &c.profiles[&"sales".parse().unwrap()];
    assert_eq!(
        sales.turn_detection,
        TurnDetection::SemanticVad(SemanticVad {
            eagerness: Eagerness::High,
            create_response: true,
            interrupt_response: false,
        })
    );
    assert_eq!(
        c.profiles[&"quiet".parse().unwrap()].turn_detection,
        TurnDetection::None
    );

    // First match wins; the caller matcher narrows the first route.
    assert_eq!(c.route("+4930123", "+49170555").unwrap().label(), "vip");
    assert_eq!(c.route("+4930123", "+4989555").unwrap().label(), "support");
    assert_eq!(c.route("+4930abc", "+4989555").unwrap().label(), "quiet");
    assert_eq!(c.routed_upstreams().count(), 3);
}

#[test]
fn unknown_keys_are_errors_that_name_the_key() {
    let cases = [
        ("bogus = 1\n", "bogus"),
        ("[sip]\nlisten_udp = []\n", "sip.listen_udp"),
        ("[limits]\nmax_call = 3\n", "limits.max_call"),
    ];
    for (extra, key) in cases {
        let (k, msg) = only_problem(&format!("{extra}{MINIMAL}"));
        assert_eq!(k, key, "{extra}");
        assert!(msg.starts_with("unknown key"), "{msg}");
    }
    let in_route = MINIMAL.replace(
        "profile = \"echo\"\n",
        "profile = \"echo\"\nmatch = \"x\"\n",
    );
    assert_eq!(only_problem(&in_route).0, "routes.0.match");
    let in_profile = MINIMAL.replace(
        "upstream = \"local\"",
        "upstream = \"local\"\nvoices = \"x\"",
    );
    assert_eq!(only_problem(&in_profile).0, "profiles.echo.voices");
}

#[test]
fn unknown_keys_inside_tagged_tables_are_errors() {
    let (key, msg) = only_problem(&MINIMAL.replace("kind = \"fake\"", "kind = \"fake\"\nmode = 1"));
    assert_eq!(key, "upstreams.local.mode");
    assert!(
        msg.starts_with("unknown key (expected one of: reply, "),
        "{msg}"
    );
    let openai = r#"
[upstreams.o]
kind = "openai"
api_key_env = "K"
modle = "gpt-realtime"
[profiles.p]
upstream = "o"
[[routes]]
profile = "p"
"#;
    let (key, msg) = only_problem(openai);
    assert_eq!(key, "upstreams.o.modle");
    assert!(msg.contains("expected one of: url, model,"), "{msg}");
    let vad = MINIMAL.replace(
        "upstream = \"local\"",
        "upstream = \"local\"\nturn_detection = { type = \"server_vad\", treshold = 0.5 }",
    );
    let (key, msg) = only_problem(&vad);
    assert_eq!(key, "profiles.echo.turn_detection.treshold");
    assert!(msg.contains("threshold"), "{msg}");
}

#[test]
fn missing_required_keys_are_named() {
    let missing = MINIMAL.replace("upstream = \"local\"", "voice = \"x\"");
    assert_eq!(
        only_problem(&missing),
        (
            "profiles.echo.upstream".into(),
            "required key is missing".into()
        )
    );
}

#[test]
fn wrong_types_and_values_name_the_key() {
    let cases = [
        ("[limits]\nmax_calls = \"ten\"\n", "limits.max_calls", "ten"),
        ("[limits]\nmax_calls = 0\n", "limits.max_calls", "nonzero"),
        (
            "[rtp]\nport_range = \"20001-20100\"\n",
            "rtp.port_range",
            "even",
        ),
        (
            "[sip]\nlisten = [\"udp:nowhere\"]\n",
            "sip.listen.0",
            "listen address",
        ),
        ("[log]\nformat = \"xml\"\n", "log.format", "xml"),
    ];
    for (extra, key, needle) in cases {
        let (k, msg) = only_problem(&format!("{extra}{MINIMAL}"));
        assert_eq!(k, key, "{extra}");
        assert!(msg.contains(needle), "{key}: {msg}");
    }
    let fmt = MINIMAL.replace(
        "upstream = \"local\"",
        "upstream = \"local\"\naudio_format = \"opus\"",
    );
    let (k, msg) = only_problem(&fmt);
    assert_eq!(k, "profiles.echo.audio_format");
    assert!(msg.contains("g711_ulaw"), "{msg}");
    let nr = MINIMAL.replace(
        "upstream = \"local\"",
        "upstream = \"local\"\nnoise_reduction = true",
    );
    assert_eq!(only_problem(&nr).0, "profiles.echo.noise_reduction");
}

#[test]
fn out_of_range_vad_settings_are_refused() {
    for (vad, needle) in [
        ("threshold = 1.5", "threshold"),
        ("idle_timeout_ms = 1000", "idle_timeout_ms"),
        ("silence_duration_ms = 60000", "silence_duration_ms"),
    ] {
        let toml = MINIMAL.replace(
            "upstream = \"local\"",
            &format!("upstream = \"local\"\nturn_detection = {{ type = \"server_vad\", {vad} }}"),
        );
        let (key, msg) = only_problem(&toml);
        assert!(key.starts_with("profiles.echo.turn_detection"), "{key}");
        assert!(msg.contains(needle), "{msg}");
    }
}

#[test]
fn an_api_key_source_is_required_exactly_once() {
    let base = r#"
[upstreams.o]
kind = "openai"
KEY
[profiles.p]
upstream = "o"
[[routes]]
profile = "p"
"#;
    let (k, msg) = only_problem(&base.replace("KEY", ""));
    assert_eq!(k, "upstreams.o");
    assert!(msg.contains("missing api_key_env or api_key_file"), "{msg}");
    let both = base.replace("KEY", "api_key_env = \"A\"\napi_key_file = \"/k\"");
    assert!(only_problem(&both).1.contains("not both"));
    let relative = base.replace("KEY", "api_key_file = \"keys/openai\"");
    assert!(only_problem(&relative).1.contains("absolute"));
    // The *_env key names a variable; a pasted key is refused without being echoed back.
    let pasted = base.replace("KEY", "api_key_env = \"sk-live-abc\"");
    let (k, msg) = only_problem(&pasted);
    assert_eq!(k, "upstreams.o");
    assert!(msg.contains("not an environment variable name"), "{msg}");
    assert!(!msg.contains("sk-live-abc"), "{msg}");
}

#[test]
fn insecure_upstream_urls_are_refused() {
    let toml = r#"
[upstreams.o]
kind = "openai"
url = "ws://api.example.com/v1/realtime"
api_key_env = "K"
[profiles.p]
upstream = "o"
[[routes]]
profile = "p"
"#;
    let (k, msg) = only_problem(toml);
    assert!(k.starts_with("upstreams.o"), "{k}");
    assert!(msg.contains("loopback"), "{msg}");
}

#[test]
fn references_must_exist() {
    let bad_upstream = MINIMAL.replace("upstream = \"local\"", "upstream = \"nope\"");
    let (k, msg) = only_problem(&bad_upstream);
    assert_eq!(k, "profiles.echo.upstream");
    assert_eq!(msg, "no upstream named `nope` (defined: local)");
    let bad_profile = MINIMAL.replace("profile = \"echo\"", "profile = \"missing\"");
    let (k, msg) = only_problem(&bad_profile);
    assert_eq!(k, "routes[0].profile");
    assert_eq!(msg, "no profile named `missing` (defined: echo)");
}

#[test]
fn routes_are_required_and_a_catch_all_must_come_last() {
    let no_routes = MINIMAL.replace("[[routes]]\nprofile = \"echo\"\n", "");
    assert_eq!(
        only_problem(&no_routes),
        ("routes".into(), Problem::NoRoutes.to_string())
    );
    let shadowing =
        format!("{MINIMAL}\n[[routes]]\ndialed = {{ prefix = \"1\" }}\nprofile = \"echo\"\n");
    let (k, msg) = only_problem(&shadowing);
    assert_eq!(k, "routes[0]");
    assert!(msg.contains("can never match"), "{msg}");
}

#[test]
fn tools_are_checked() {
    let tools = MINIMAL.replace(
        "upstream = \"local\"",
        r#"upstream = "local"
tools = [
  { name = "a", description = "first", url = "https://x.example/a" },
  { name = "a", description = "again", url = "https://x.example/a" },
  { name = "b", description = "", parameters = "x", url = "https://x.example/b" },
]"#,
    );
    let keys: Vec<String> = problems(&tools).into_iter().map(|p| p.key).collect();
    assert_eq!(
        keys,
        [
            "profiles.echo.tools[1].name",
            "profiles.echo.tools[2].description",
            "profiles.echo.tools[2].parameters"
        ]
    );
    let bad_name = MINIMAL.replace(
        "upstream = \"local\"",
        "upstream = \"local\"\ntools = [{ name = \"has space\", description = \"d\", url = \"https://x.example/\" }]",
    );
    assert_eq!(only_problem(&bad_name).0, "profiles.echo.tools.0.name");
}

#[test]
fn several_problems_are_reported_together() {
    let toml = MINIMAL
        .replace("upstream = \"local\"", "upstream = \"nope\"\nvoice = \"\"")
        .replace("[[routes]]\nprofile = \"echo\"\n", "");
    let keys: Vec<String> = problems(&toml).into_iter().map(|p| p.key).collect();
    assert_eq!(
        keys,
        ["profiles.echo.upstream", "profiles.echo.voice", "routes"]
    );
}

#[test]
fn duplicate_listen_addresses_are_refused() {
    let toml =
        format!("[sip]\nlisten = [\"udp:127.0.0.1:5060\", \"udp:127.0.0.1:5060\"]\n{MINIMAL}");
    assert_eq!(only_problem(&toml).0, "sip.listen[1]");
    let none = format!("[sip]\nlisten = []\n{MINIMAL}");
    assert_eq!(
        only_problem(&none),
        ("sip.listen".into(), Problem::NoListen.to_string())
    );
}

#[test]
fn sip_timers_codecs_and_limits_are_checked() {
    for (section, body, key) in [
        ("sip", "codecs = []", "sip.codecs"),
        ("sip", "codecs = [\"pcma\", \"pcma\"]", "sip.codecs[1]"),
        ("sip", "t1 = \"0s\"", "sip.t1"),
        ("sip", "t1 = \"11s\"\nt2 = \"20s\"", "sip.t1"),
        ("sip", "t1 = \"2s\"\nt2 = \"1s\"", "sip.t2"),
        ("sip", "min_se = 89\nsession_expires = 1800", "sip.min_se"),
        (
            "sip",
            "min_se = 600\nsession_expires = 300",
            "sip.session_expires",
        ),
        (
            "limits",
            "max_call_duration = \"0s\"",
            "limits.max_call_duration",
        ),
        (
            "limits",
            "max_call_duration = \"8days\"",
            "limits.max_call_duration",
        ),
    ] {
        let toml = format!("[{section}]\n{body}\n{MINIMAL}");
        assert_eq!(only_problem(&toml).0, key, "{body}");
    }
    let c = Config::from_toml(&format!(
        "[sip]\ncodecs = [\"pcma\"]\nt1 = \"200ms\"\nmin_se = 120\nsession_expires = 120\n\
         [limits]\nmax_call_duration = \"90s\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.sip.codecs, vec![CodecName::Pcma]);
    let opus =
        Config::from_toml(&format!("[sip]\ncodecs = [\"opus\", \"pcmu\"]\n{MINIMAL}")).unwrap();
    assert_eq!(opus.sip.codecs, vec![CodecName::Opus, CodecName::Pcmu]);
    assert_eq!(c.sip.t1, std::time::Duration::from_millis(200));
    assert_eq!(c.sip.min_se, 120);
    assert_eq!(
        c.limits.max_call_duration,
        std::time::Duration::from_secs(90)
    );
    assert!(
        only_problem(&format!("[sip]\ncodecs = [\"g729\"]\n{MINIMAL}"))
            .0
            .starts_with("sip.codecs")
    );
}

#[test]
fn secrets_of_routed_upstreams_are_checked_and_unused_ones_are_not() {
    let toml = r#"
[upstreams.used]
kind = "openai"
api_key_env = "SRB_TEST_SURELY_UNSET_KEY_1"
[upstreams.spare]
kind = "openai"
api_key_env = "SRB_TEST_SURELY_UNSET_KEY_2"
[profiles.p]
upstream = "used"
[profiles.q]
upstream = "spare"
[[routes]]
profile = "p"
"#;
    let c = Config::from_toml(toml).unwrap();
    let problems = c.check_secrets();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "upstreams.used.api_key_env");
    assert!(matches!(problems[0].error, SecretError::EnvMissing(_)));
}

#[test]
fn toml_syntax_errors_are_reported() {
    let p = problems("[sip\nlisten = 1");
    assert_eq!(p.len(), 1);
    assert!(
        p[0].problem.to_string().contains("TOML"),
        "{}",
        p[0].problem
    );
}

#[test]
fn shipped_configuration_files_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["conf/bridge.toml", "conf/demo.toml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        if let Err(e) = Config::from_toml(&text) {
            panic!("{file}:\n{e}");
        }
    }
}

#[test]
fn demo_configuration_needs_no_api_key_and_listens_on_loopback() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("conf/demo.toml")).unwrap();
    let c = Config::from_toml(&text).unwrap();
    assert!(c.check_secrets().is_empty());
    assert!(c.routed_upstreams().all(|(_, u)| u.api_key().is_none()));
    let listen: Vec<String> = c.sip.listen.iter().map(Listen::to_string).collect();
    assert_eq!(listen, ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]);
}

#[test]
fn fake_upstream_options_are_read_and_checked_at_load() {
    let toml = MINIMAL.replace(
        "kind = \"fake\"",
        "kind = \"fake\"\nspeed = 8.0\nsession_max_duration = \"2m\"\n\
         reply = { kind = \"tone\", frequency_hz = 600, duration_ms = 300 }\n\
         tool_script = [{ turn = 2, name = \"lookup\", arguments = { id = 7 } }]",
    );
    let c = Config::from_toml(&toml).unwrap();
    let UpstreamConfig::Fake(fake) = &c.upstreams[&"local".parse().unwrap()] else {
        panic!("fake upstream")
    };
    assert_eq!(fake.options.speed, 8.0);
    assert_eq!(
        fake.options.session_max_duration,
        Some(Duration::from_secs(120))
    );
    assert_eq!(fake.options.tool_script.len(), 1);

    let slow = MINIMAL.replace("kind = \"fake\"", "kind = \"fake\"\nspeed = 0.0");
    let (key, msg) = only_problem(&slow);
    assert_eq!(key, "upstreams.local");
    assert!(msg.contains("speed"), "{msg}");

    let missing = MINIMAL.replace(
        "kind = \"fake\"",
        "kind = \"fake\"\nreply = { kind = \"file\", path = \"/nonexistent/reply.wav\" }",
    );
    let (key, msg) = only_problem(&missing);
    assert_eq!(key, "upstreams.local");
    assert!(msg.contains("/nonexistent/reply.wav"), "{msg}");
}

#[test]
fn auto_audio_format_passes_g711_through_and_decodes_opus() {
    use crate::sip::sdp::Codec;
    assert_eq!(
        AudioFormat::Auto.for_codec(Codec::Pcmu),
        AudioFormat::G711Ulaw
    );
    assert_eq!(
        AudioFormat::Auto.for_codec(Codec::Pcma),
        AudioFormat::G711Alaw
    );
    assert_eq!(AudioFormat::Auto.for_codec(Codec::Opus), AudioFormat::Pcm16);
    // A fixed format is kept whatever the call's codec.
    assert_eq!(
        AudioFormat::Pcm16.for_codec(Codec::Pcmu),
        AudioFormat::Pcm16
    );
    assert_eq!(
        AudioFormat::G711Alaw.for_codec(Codec::Pcmu),
        AudioFormat::G711Alaw
    );
    let c = Config::from_toml(
        "[upstreams.f]\nkind = \"fake\"\n[profiles.p]\nupstream = \"f\"\naudio_format = \"auto\"\n[[routes]]\nprofile = \"p\"\n",
    )
    .unwrap();
    assert_eq!(
        c.profiles.values().next().unwrap().audio_format,
        AudioFormat::Auto
    );
}

#[test]
fn dtmf_and_answer_timeout_defaults_and_checks() {
    let base = "[upstreams.f]\nkind = \"fake\"\n[[routes]]\nprofile = \"p\"\n[profiles.p]\nupstream = \"f\"\n";
    let c = Config::from_toml(base).unwrap();
    let p = c.profiles.values().next().unwrap();
    assert!(p.dtmf.enabled && p.dtmf.create_response);
    assert_eq!(
        p.dtmf.text('5'),
        "The caller pressed 5 on the telephone keypad."
    );
    assert_eq!(c.limits.answer_timeout, Duration::from_secs(10));

    let c = Config::from_toml(&format!(
        "{base}dtmf = {{ template = \"Taste {{digit}} gedrueckt\", create_response = false }}\n"
    ))
    .unwrap();
    let p = c.profiles.values().next().unwrap();
    assert_eq!(p.dtmf.text('#'), "Taste # gedrueckt");
    assert!(!p.dtmf.create_response);

    let bad =
        Config::from_toml(&format!("{base}dtmf = {{ template = \"no digit\" }}\n")).unwrap_err();
    assert!(
        bad.to_string().contains("profiles.p.dtmf.template"),
        "{bad}"
    );
    let bad =
        Config::from_toml(&format!("[limits]\nanswer_timeout = \"100ms\"\n{base}")).unwrap_err();
    assert!(bad.to_string().contains("limits.answer_timeout"), "{bad}");
}

#[test]
fn upstream_stall_timeout_and_max_queued_audio_defaults_and_checks() {
    let base = "[upstreams.f]\nkind = \"fake\"\n[[routes]]\nprofile = \"p\"\n[profiles.p]\nupstream = \"f\"\n";
    let c = Config::from_toml(base).unwrap();
    assert_eq!(c.limits.upstream_stall_timeout, Duration::from_secs(30));
    assert_eq!(c.limits.max_queued_audio, Duration::from_secs(120));
    let c = Config::from_toml(&format!(
        "[limits]\nupstream_stall_timeout = \"10s\"\nmax_queued_audio = \"20s\"\n{base}"
    ))
    .unwrap();
    assert_eq!(c.limits.upstream_stall_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.max_queued_audio, Duration::from_secs(20));
    for (key, value, range) in [
        ("upstream_stall_timeout", "1s", "between 5s and 10m"),
        ("upstream_stall_timeout", "1h", "between 5s and 10m"),
        ("max_queued_audio", "1s", "between 5s and 30m"),
        ("max_queued_audio", "2h", "between 5s and 30m"),
    ] {
        let bad = Config::from_toml(&format!("[limits]\n{key} = \"{value}\"\n{base}")).unwrap_err();
        let text = bad.to_string();
        assert!(
            text.contains(&format!("limits.{key}")) && text.contains(range),
            "{text}"
        );
    }
    // A fake's fault is one of the known kinds.
    let bad = Config::from_toml(
        "[upstreams.f]\nkind = \"fake\"\nfault = { kind = \"melt\" }\n[[routes]]\nprofile = \"p\"\n\
         [profiles.p]\nupstream = \"f\"\n",
    )
    .unwrap_err();
    assert!(bad.to_string().contains("melt"), "{bad}");
}

#[test]
fn accounts_parse_with_defaults_and_are_checked() {
    let base = "[upstreams.f]\nkind = \"fake\"\n[profiles.p]\nupstream = \"f\"\n";
    let c = Config::from_toml(&format!(
        "[[sip.accounts]]\nname = \"pbx\"\nregistrar = \"sip:pbx.example.com\"\nusername = \"2001\"\n\
         password_env = \"PBX_PASSWORD\"\n\
         [[sip.accounts]]\nname = \"pbx2\"\nregistrar = \"sip:[2001:db8::1]:5080;transport=tcp\"\n\
         username = \"2002\"\nauth_username = \"auth-2002\"\npassword_file = \"/run/pw\"\n\
         expires = 120\noutbound_proxy = \"sip:10.0.0.1:5070\"\ntransport = \"tcp\"\ncontact_user = \"bot\"\n\
         {base}[[routes]]\naccount = \"pbx2\"\nprofile = \"p\"\n[[routes]]\nprofile = \"p\"\n"
    ))
    .unwrap();
    let [a, b] = c.sip.accounts.as_slice() else {
        panic!()
    };
    assert_eq!(
        (a.registrar_host.as_str(), a.registrar_port),
        ("pbx.example.com", 5060)
    );
    assert_eq!(
        (a.auth_username.as_str(), a.contact_user.as_str()),
        ("2001", "2001")
    );
    assert_eq!((a.expires, a.transport), (600, Transport::Udp));
    assert_eq!(
        (b.registrar_host.as_str(), b.registrar_port),
        ("2001:db8::1", 5080)
    );
    assert_eq!(b.outbound_proxy, Some(("10.0.0.1".to_owned(), 5070)));
    assert_eq!(
        (b.auth_username.as_str(), b.contact_user.as_str()),
        ("auth-2002", "bot")
    );
    // Routing by account: the first route only takes calls through pbx2.
    assert_eq!(
        c.route_via(Some("pbx2"), "x", "y")
            .unwrap()
            .account
            .as_ref()
            .unwrap()
            .as_str(),
        "pbx2"
    );
    assert!(
        c.route_via(Some("pbx"), "x", "y")
            .unwrap()
            .account
            .is_none()
    );
    assert!(c.route("x", "y").unwrap().account.is_none());

    for (bad, key) in [
        (
            "registrar = \"sips:pbx\"\nusername = \"1\"\npassword_env = \"P\"",
            "sip.accounts",
        ),
        (
            "registrar = \"sip:pbx\"\nusername = \"a b\"\npassword_env = \"P\"",
            "sip.accounts",
        ),
        ("registrar = \"sip:pbx\"\nusername = \"1\"", "sip.accounts"),
        (
            "registrar = \"sip:pbx\"\nusername = \"1\"\npassword_env = \"P\"\nexpires = 10",
            "sip.accounts",
        ),
    ] {
        let e = Config::from_toml(&format!(
            "[[sip.accounts]]\nname = \"a\"\n{bad}\n{base}[[routes]]\nprofile = \"p\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains(key), "{e}");
    }
    let e = Config::from_toml(&format!(
        "{base}[[routes]]\naccount = \"nope\"\nprofile = \"p\"\n[[routes]]\nprofile = \"p\"\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("routes[0].account"), "{e}");
    let twice = "[[sip.accounts]]\nname = \"a\"\nregistrar = \"sip:pbx\"\nusername = \"1\"\npassword_env = \"P\"\n";
    let e = Config::from_toml(&format!(
        "{twice}{}{base}[[routes]]\nprofile = \"p\"\n",
        twice.replace("name = \"a\"", "name = \"b\"")
    ))
    .unwrap_err();
    assert!(
        e.to_string().contains("sip.accounts[1].contact_user"),
        "{e}"
    );
}

/// MINIMAL with `body` added to the profile (before its sub-tables).
fn with_profile(body: &str) -> String {
    MINIMAL.replace(
        "upstream = \"local\"",
        &format!("upstream = \"local\"\n{body}"),
    )
}

fn echo(config: &Config) -> &ProfileConfig {
    &config.profiles[&"echo".parse().unwrap()]
}

#[test]
fn webhook_tools_get_url_timeout_and_headers() {
    let c = Config::from_toml(&with_profile(
        r#"
[[profiles.echo.tools]]
name = "lookup_order"
description = "Find an order"
url = "https://crm.example.com/hooks/order?tenant=7"
timeout = "2500ms"
headers = { Authorization = { value_env = "CRM_TOKEN" }, X-Tenant = { value = "acme" }, X-Key = { value_file = "/run/credentials/crm" } }

[[profiles.echo.tools]]
name = "local"
description = "On this host"
url = "http://127.0.0.1:8080/tool"
"#,
    ))
    .unwrap();
    let tools = &echo(&c).tools;
    let t = &tools[0];
    assert_eq!(
        t.url.url().as_str(),
        "https://crm.example.com/hooks/order?tenant=7"
    );
    assert_eq!(t.timeout, Duration::from_millis(2500));
    let headers: Vec<(&str, &HeaderValue)> =
        t.headers.iter().map(|(k, v)| (k.as_str(), v)).collect();
    assert_eq!(
        headers,
        [
            (
                "Authorization",
                &HeaderValue::Secret(SecretSource::Env("CRM_TOKEN".into()))
            ),
            (
                "X-Key",
                &HeaderValue::Secret(SecretSource::File("/run/credentials/crm".into()))
            ),
            ("X-Tenant", &HeaderValue::Plain("acme".into())),
        ]
    );
    // Defaults: 5 s, no headers; http:// to loopback is fine.
    assert_eq!(tools[1].timeout, Duration::from_secs(5));
    assert!(tools[1].headers.is_empty());
    assert_eq!(echo(&c).tool("local").unwrap().url.url().scheme(), "http");
    // Header values never reach Debug output.
    let debug = format!("{:?}", t.headers);
    assert!(!debug.contains("acme"), "{debug}");
    assert!(debug.contains("env:CRM_TOKEN"), "{debug}");
}

#[test]
fn webhook_tool_problems_are_named() {
    let tool = |extra: &str| {
        with_profile(&format!(
            "[[profiles.echo.tools]]\nname = \"t\"\ndescription = \"d\"\n{extra}"
        ))
    };
    for (extra, needle) in [
        ("", "has no url"),
        ("url = \"http://crm.example.com/x\"", "only to a loopback"),
        ("url = \"ftp://127.0.0.1/x\"", "not http or https"),
        (
            "url = \"https://u:p@crm.example.com/\"",
            "headers, not in the URL",
        ),
        (
            "url = \"https://crm.example.com/?token=abc\"",
            "looks like a credential",
        ),
        (
            "url = \"https://x.example/\"\ntimeout = \"50ms\"",
            "between 100ms and 60s",
        ),
        (
            "url = \"https://x.example/\"\ntimeout = \"61s\"",
            "between 100ms and 60s",
        ),
        (
            "url = \"https://x.example/\"\nheaders = { Host = { value = \"a\" } }",
            "set by the bridge",
        ),
        (
            "url = \"https://x.example/\"\nheaders = { \"bad name\" = { value = \"a\" } }",
            "not an HTTP header name",
        ),
        (
            "url = \"https://x.example/\"\nheaders = { X-A = { value = \"a\" }, x-a = { value = \"b\" } }",
            "given twice",
        ),
        (
            "url = \"https://x.example/\"\nheaders = { X-A = { value = \"a\\nb\" } }",
            "printable ASCII",
        ),
        (
            "url = \"https://x.example/\"\nheaders = { X-A = { value = \"a\", value_env = \"B\" } }",
            "only one of",
        ),
        (
            "url = \"https://x.example/\"\nheaders = { X-A = {} }",
            "give one of",
        ),
        (
            "url = \"https://x.example/\"\nheaders = { X-A = { value_file = \"key\" } }",
            "absolute path",
        ),
        (
            "url = \"https://x.example/\"\nheaders = { X-A = { value_env = \"sk-123\" } }",
            "not an environment variable name",
        ),
    ] {
        let (key, msg) = only_problem(&tool(extra));
        assert!(key.starts_with("profiles.echo.tools"), "{extra}: {key}");
        assert!(msg.contains(needle), "{extra}: {msg}");
    }
    // A header value is never echoed in an error.
    let (_, msg) = only_problem(&tool(
        "url = \"https://x.example/\"\nheaders = { X-A = { value = \"sk-secret\\r\\n\" } }",
    ));
    assert!(!msg.contains("sk-secret"), "{msg}");
}

#[test]
fn built_in_names_cannot_be_webhook_tools() {
    for (name, needle) in [
        ("end_call", "end_call = true"),
        ("transfer_call", "transfer_targets"),
    ] {
        let (key, msg) = only_problem(&with_profile(&format!(
            "[[profiles.echo.tools]]\nname = \"{name}\"\ndescription = \"d\"\nurl = \"https://x.example/\""
        )));
        assert_eq!(key, "profiles.echo.tools.0", "{msg}");
        assert!(msg.contains("built-in") && msg.contains(needle), "{msg}");
    }
}

#[test]
fn built_in_tools_transfer_targets_and_digit_actions() {
    let c = Config::from_toml(&with_profile(
        r##"end_call = true
end_call_description = "Hang up after saying goodbye."
transfer_announcement = "One moment, I am connecting you."
[[profiles.echo.transfer_targets]]
name = "operator"
description = "The front desk"
uri = "sip:100@pbx.example.com"
[[profiles.echo.transfer_targets]]
name = "billing"
description = "Invoices and payments"
uri = "sips:billing@pbx.example.com;transport=tls"
[profiles.echo.dtmf.actions]
"0" = { transfer = "operator" }
"#" = { end_call = true }
"b" = { transfer = "billing" }
"##,
    ))
    .unwrap();
    let p = echo(&c);
    assert!(p.end_call);
    assert_eq!(
        p.end_call_description.as_deref(),
        Some("Hang up after saying goodbye.")
    );
    assert_eq!(p.transfer_targets.len(), 2);
    assert_eq!(
        p.transfer_target("billing").unwrap().uri.as_str(),
        "sips:billing@pbx.example.com;transport=tls"
    );
    assert!(p.transfer_target("sales").is_none());
    let actions: Vec<(char, &DigitAction)> = p
        .dtmf
        .actions
        .iter()
        .map(|(d, a)| (d.as_char(), a))
        .collect();
    assert_eq!(
        actions,
        [
            ('#', &DigitAction::EndCall),
            ('0', &DigitAction::Transfer("operator".parse().unwrap())),
            ('B', &DigitAction::Transfer("billing".parse().unwrap())),
        ]
    );

    // Defaults: nothing built in, no targets, no actions.
    let c = Config::from_toml(MINIMAL).unwrap();
    let p = echo(&c);
    assert!(!p.end_call && p.end_call_description.is_none());
    assert!(p.transfer_targets.is_empty() && p.transfer_announcement.is_none());
    assert!(p.dtmf.actions.is_empty());
}

#[test]
fn transfer_and_digit_problems_are_named() {
    let target = |name: &str, uri: &str| {
        format!(
            "[[profiles.echo.transfer_targets]]\nname = \"{name}\"\ndescription = \"d\"\nuri = \"{uri}\"\n"
        )
    };
    let op = target("operator", "sip:100@pbx.example.com");

    let twice = with_profile(&format!("{op}{op}"));
    assert_eq!(
        only_problem(&twice),
        (
            "profiles.echo.transfer_targets[1].name".into(),
            "transfer target `operator` is defined twice".into()
        )
    );

    let unknown = with_profile(&format!(
        "{op}[profiles.echo.dtmf.actions]\n\"0\" = {{ transfer = \"sales\" }}\n"
    ));
    let (key, msg) = only_problem(&unknown);
    assert_eq!(key, "profiles.echo.dtmf.actions.\"0\".transfer");
    assert_eq!(msg, "no transfer target named `sales` (defined: operator)");

    for (body, key_start, needle) in [
        (
            target("x", "tel:+4930123"),
            "profiles.echo.transfer_targets",
            "sip: or sips:",
        ),
        (
            target("x", "sip:100@pbx.example.com>;evil"),
            "profiles.echo.transfer_targets",
            "angle brackets",
        ),
        (
            target("has space", "sip:1@h"),
            "profiles.echo.transfer_targets",
            "not a valid name",
        ),
        (
            "[profiles.echo.dtmf.actions]\n\"E\" = { end_call = true }\n".to_owned(),
            "profiles.echo.dtmf.actions",
            "not a keypad key",
        ),
        (
            "[profiles.echo.dtmf.actions]\n\"12\" = { end_call = true }\n".to_owned(),
            "profiles.echo.dtmf.actions",
            "not a keypad key",
        ),
        (
            "[profiles.echo.dtmf.actions]\n\"1\" = { end_call = false }\n".to_owned(),
            "profiles.echo.dtmf.actions",
            "does nothing",
        ),
        (
            format!("{op}[profiles.echo.dtmf.actions]\n\"1\" = {{ end_call = true, transfer = \"operator\" }}\n"),
            "profiles.echo.dtmf.actions",
            "not both",
        ),
        (
            "[profiles.echo.dtmf.actions]\n\"1\" = {}\n".to_owned(),
            "profiles.echo.dtmf.actions",
            "end_call = true",
        ),
        (
            "end_call_description = \"Bye\"".to_owned(),
            "profiles.echo.end_call_description",
            "needs end_call = true",
        ),
        (
            "end_call = true\nend_call_description = \" \"".to_owned(),
            "profiles.echo.end_call_description",
            "must not be empty",
        ),
        (
            "transfer_announcement = \"Hold on\"".to_owned(),
            "profiles.echo.transfer_announcement",
            "no transfer_targets",
        ),
        (
            format!("transfer_announcement = \"\"\n{op}"),
            "profiles.echo.transfer_announcement",
            "must not be empty",
        ),
        (
            "[[profiles.echo.transfer_targets]]\nname = \"x\"\ndescription = \"\"\nuri = \"sip:1@h\"\n"
                .to_owned(),
            "profiles.echo.transfer_targets[0].description",
            "must not be empty",
        ),
    ] {
        let (key, msg) = only_problem(&with_profile(&body));
        assert!(key.starts_with(key_start), "{body}: {key}");
        assert!(msg.contains(needle), "{body}: {msg}");
    }
}

#[test]
fn check_secrets_covers_webhook_headers_of_routed_profiles() {
    let c = Config::from_toml(&with_profile(
        r#"[[profiles.echo.tools]]
name = "t"
description = "d"
url = "https://x.example/"
headers = { X-Key = { value_env = "SRB_TEST_SURELY_UNSET_WEBHOOK_KEY" }, X-Plain = { value = "p" } }
"#,
    ))
    .unwrap();
    let problems = c.check_secrets();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        problems[0].to_string(),
        "profiles.echo.tools[0].headers.X-Key.value_env: environment variable \
         SRB_TEST_SURELY_UNSET_WEBHOOK_KEY is not set"
    );
}

#[test]
fn rate_limit_and_invite_acl_defaults_and_checks() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(
        c.limits.rate,
        RateLimitConfig {
            requests_per_second: 200,
            burst: 400,
            ban: Duration::from_secs(60)
        }
    );
    assert!(c.sip.allow_invite_from.is_empty());

    let c = Config::from_toml(&format!(
        "[sip]\nallow_invite_from = [\"10.0.0.0/8\", \"192.168.1.20\", \"2001:db8::/32\"]\n\
         [limits]\nrate = {{ requests_per_second = 20, burst = 40, ban = \"2m\" }}\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(c.limits.rate.limit().per_second, 20);
    assert_eq!(c.limits.rate.burst, 40);
    assert_eq!(c.limits.rate.ban, Duration::from_secs(120));
    let acl: Vec<String> = c
        .sip
        .allow_invite_from
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(acl, ["10.0.0.0/8", "192.168.1.20/32", "2001:db8::/32"]);

    // 0 disables the limit: the other keys are then not checked.
    let off = format!("[limits]\nrate = {{ requests_per_second = 0, burst = 0 }}\n{MINIMAL}");
    assert_eq!(Config::from_toml(&off).unwrap().limits.rate.burst, 0);

    for (body, key) in [
        ("rate = { burst = 0 }", "limits.rate.burst"),
        ("rate = { ban = \"0s\" }", "limits.rate.ban"),
        ("rate = { ban = \"2days\" }", "limits.rate.ban"),
        (
            "rate = { requests_per_second = 2000000 }",
            "limits.rate.requests_per_second",
        ),
        ("rate = { per_second = 5 }", "limits.rate.per_second"),
    ] {
        let toml = format!("[limits]\n{body}\n{MINIMAL}");
        assert_eq!(only_problem(&toml).0, key, "{body}");
    }
    for (bad, what) in [
        ("10.0.0.1/8", "10.0.0.0/8"),
        ("10.0.0.0/33", "at most 32"),
        ("pbx.example.com", "not a network"),
    ] {
        let toml = format!("[sip]\nallow_invite_from = [\"{bad}\"]\n{MINIMAL}");
        let (key, message) = only_problem(&toml);
        assert!(key.starts_with("sip.allow_invite_from"), "{key}");
        assert!(message.contains(what), "{message}");
    }
}

#[test]
fn admin_defaults_to_loopback_9091_and_is_checked() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert!(c.admin.enabled);
    assert_eq!(c.admin.listen, "127.0.0.1:9091".parse().unwrap());

    let c = Config::from_toml(&format!(
        "[admin]\nlisten = \"[::1]:9100\"\nenabled = false\n{MINIMAL}"
    ))
    .unwrap();
    assert!(!c.admin.enabled);
    assert_eq!(c.admin.listen, "[::1]:9100".parse().unwrap());

    let (key, _) = only_problem(&format!("[admin]\nlisten = \"localhost\"\n{MINIMAL}"));
    assert_eq!(key, "admin.listen");
    let (key, msg) = only_problem(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n{MINIMAL}"));
    assert_eq!(
        (key.as_str(), msg.as_str()),
        ("admin.listen", "needs a port (not 0)")
    );
    let (key, _) = only_problem(&format!("[admin]\nlisen = \"127.0.0.1:9\"\n{MINIMAL}"));
    assert_eq!(key, "admin.lisen");
    // The SIP TCP socket's port on an overlapping address.
    let (key, msg) = only_problem(&format!(
        "[sip]\nlisten = [\"tcp:0.0.0.0:5060\"]\n[admin]\nlisten = \"127.0.0.1:5060\"\n{MINIMAL}"
    ));
    assert_eq!(key, "admin.listen");
    assert!(msg.contains("sip.listen"), "{msg}");
    // A UDP socket on the same port is no clash; a disabled endpoint is not checked.
    Config::from_toml(&format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:9091\"]\n{MINIMAL}"
    ))
    .unwrap();
    Config::from_toml(&format!(
        "[admin]\nenabled = false\nlisten = \"127.0.0.1:0\"\n{MINIMAL}"
    ))
    .unwrap();
}

#[test]
fn every_table_with_a_problem_is_reported_at_once() {
    let p = problems(
        r#"
[log]
level = "verbose"

[limits]
max_calls = "ten"

[upstreams.local]
kind = "fake"

[upstreams.broken]
kind = "openai"
api_key_env = "OPENAI_API_KEY"
model = 5

[profiles.echo]
upstream = "local"
voice = 7

[profiles.good]
upstream = "nowhere"

[[routes]]
profile = "echo"

[[routes]]
dialed = 5
profile = "good"

[extra]
x = 1
"#,
    );
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "extra",
        "log.level",
        "limits.max_calls",
        // Inside a tagged table (`kind = ...`) serde's errors stop at the table.
        "upstreams.broken",
        "profiles.echo.voice",
        "profiles.good.upstream",
        "routes.1.dialed",
    ] {
        assert!(keys.contains(&key), "{key} missing from {p:#?}");
    }
    // The route to the profile that did not parse is not reported as a second problem.
    assert!(
        !p.iter()
            .any(|p| p.problem.to_string().contains("no profile named `echo`")),
        "{p:#?}"
    );
    assert_eq!(p.len(), 7, "{p:#?}");
    // Each names where it came from.
    assert!(p.iter().all(|p| p.to_string().contains("(from ")), "{p:#?}");
}

#[test]
fn messages_name_the_fix_not_a_rust_type() {
    // A bare reply kind is the table it names.
    let c =
        Config::from_toml(&MINIMAL.replace("kind = \"fake\"", "kind = \"fake\"\nreply = \"tone\""))
            .unwrap();
    let UpstreamConfig::Fake(f) = &c.upstreams[&"local".parse::<Name>().unwrap()] else {
        panic!("fake")
    };
    assert!(matches!(
        f.options.reply,
        crate::fake_realtime::FakeReply::Tone {
            frequency_hz: 440,
            ..
        }
    ));
    for (reply, says) in [
        ("\"file\"", "reply = { kind = \"file\", path = "),
        ("\"beep\"", "unknown reply `beep`"),
        ("5", "\"echo\", { kind = \"tone\""),
    ] {
        let (key, message) = only_problem(&MINIMAL.replace(
            "kind = \"fake\"",
            &format!("kind = \"fake\"\nreply = {reply}"),
        ));
        assert!(key.starts_with("upstreams.local"), "{key}: {message}");
        assert!(message.contains(says), "{reply}: {message}");
        assert!(!message.contains("FakeReply"), "{message}");
    }
    // Another tagged table given as a string: the message shows the table form.
    let (key, message) = only_problem(&format!(
        "{MINIMAL}\n[profiles.other]\nupstream = \"local\"\nturn_detection = \"server_vad\"\n"
    ));
    assert_eq!(key, "profiles.other.turn_detection");
    assert!(!message.contains("enum"), "{message}");
    assert!(message.contains("{ type = \"...\" }"), "{message}");

    let azure = |endpoint: &str| {
        only_problem(&format!(
            "[upstreams.az]\nkind = \"azure\"\nendpoint = \"{endpoint}\"\ndeployment = \"d\"\n\
             api_key_env = \"AZURE_OPENAI_API_KEY\"\n[profiles.p]\nupstream = \"az\"\n\
             [[routes]]\nprofile = \"p\"\n"
        ))
    };
    let (key, message) = azure("myres.openai.azure.com");
    assert_eq!(key, "upstreams.az");
    assert!(message.starts_with("endpoint: "), "{message}");
    assert!(
        message.contains("write it with https://")
            && message.contains("`https://myres.openai.azure.com`"),
        "{message}"
    );
    let (_, message) = azure("http://myres.openai.azure.com");
    assert!(message.contains("plain http://"), "{message}");
    let (key, message) =
        azure("https://myres.openai.azure.com/openai/v1/realtime?model=gpt-realtime");
    assert!(key.starts_with("upstreams.az"), "{key}");
    assert!(
        message.contains("such as `https://myres.openai.azure.com`")
            && message.contains("/openai/v1/realtime?model=DEPLOYMENT"),
        "{message}"
    );
    // The endpoint as the portal shows it (with or without the slash) is fine.
    for ok in [
        "https://myres.openai.azure.com",
        "https://myres.openai.azure.com/",
    ] {
        Config::from_toml(&format!(
            "[upstreams.az]\nkind = \"azure\"\nendpoint = \"{ok}\"\ndeployment = \"d\"\n\
             api_key_env = \"AZURE_OPENAI_API_KEY\"\n[profiles.p]\nupstream = \"az\"\n\
             [[routes]]\nprofile = \"p\"\n"
        ))
        .unwrap();
    }
}
