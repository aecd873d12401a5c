//! The guides cannot drift from what they describe: the Kamailio routing in
//! docs/deploying.md is the configuration `tests/kamailio.rs` runs, and every TOML example in
//! the README and the guides is a configuration the daemon accepts (a `# fragment` on top of a
//! minimal upstream, profile and route), and every `srb_` metric they name is one the daemon
//! exports (a histogram through its `_bucket`, `_sum` or `_count` series only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;

use sip_realtime_bridge::config::Config;

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The fenced code blocks of `markdown` in language `lang`, each with its first line number.
fn blocks(markdown: &str, lang: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut current: Option<(usize, String, usize)> = None;
    for (n, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut current {
            None => {
                if trimmed.strip_prefix("```") == Some(lang) {
                    current = Some((n + 2, String::new(), indent));
                }
            }
            Some((start, text, indent)) => {
                if trimmed == "```" {
                    found.push((*start, std::mem::take(text)));
                    current = None;
                } else {
                    text.push_str(line.get(*indent..).unwrap_or(line.trim_start()));
                    text.push('\n');
                }
            }
        }
    }
    found
}

#[test]
fn the_guides_kamailio_routing_is_the_tested_configuration() {
    let guide = repo_file("docs/deploying.md");
    let cfg = repo_file("tests/kamailio/kamailio.cfg");
    let found = blocks(&guide, "kamailio");
    assert!(found.len() >= 2, "docs/deploying.md has no kamailio blocks");
    for (line, block) in found {
        assert!(
            cfg.contains(&block),
            "docs/deploying.md:{line}: this block is not in tests/kamailio/kamailio.cfg \
             (copy it from there):\n{block}"
        );
    }
}

const MINIMAL: &str = r#"
[upstreams.openai]
kind = "openai"
api_key_env = "OPENAI_API_KEY"

[profiles.assistant]
upstream = "openai"
"#;

#[test]
fn every_toml_example_in_the_docs_is_accepted() {
    let mut checked = 0;
    for file in ["README.md", "docs/deploying.md", "docs/testing.md"] {
        for (line, block) in blocks(&repo_file(file), "toml") {
            let config = if block.starts_with("# fragment") {
                let mut whole = format!("{block}\n{MINIMAL}");
                if !block.contains("[[routes]]") {
                    whole.push_str("\n[[routes]]\nprofile = \"assistant\"\n");
                }
                whole
            } else {
                block.clone()
            };
            if let Err(e) = Config::from_toml(&config) {
                panic!("{file}:{line}: the daemon refuses this example:\n{e}\n---\n{block}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 2, "only {checked} TOML examples found");
}

/// The `srb_` words of `text`, each with what it names: the family, and the series suffix
/// (`_bucket`, `_sum`, `_count`) when it names one of a family's series.
fn metric_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("srb_") {
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        words.push(tail[..len].to_owned());
        rest = &tail[len..];
    }
    words
}

#[test]
fn every_metric_the_docs_name_is_exported() {
    // `# TYPE name kind` for every family, as /metrics renders them before any call.
    let rendered = sip_realtime_bridge::metrics::Metrics::new().render();
    let families: std::collections::BTreeMap<&str, &str> = rendered
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert!(families.len() > 10, "{rendered}");
    let mut checked = 0;
    for file in ["README.md", "docs/deploying.md"] {
        for word in metric_words(&repo_file(file)) {
            let series = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                word.strip_suffix(suffix)
                    .filter(|f| families.contains_key(f))
            });
            let ok = match series {
                Some(family) => families[family] == "histogram",
                None => families.contains_key(word.as_str()),
            };
            assert!(
                ok,
                "{file} names `{word}`, which /metrics does not export as such; it has {:?}",
                families.keys().collect::<Vec<_>>()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} metric names found in the docs"
    );
}
