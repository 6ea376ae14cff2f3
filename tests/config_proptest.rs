//! Any TOML or YAML text either loads or returns an error — never a panic: random
//! text, random documents built from the config's own vocabulary, and the example
//! file with random values put in, fields removed and unknown fields added. What
//! loads is valid and writes back to the same config.

use palisade::Config;
use palisade::config::{ConfigLoader, Format};
use proptest::prelude::*;
use serde_yaml_ng::{Mapping, Value};

fn load(text: &str, format: Format) -> Option<Config> {
    checked(
        ConfigLoader::new()
            .without_env()
            .load_str(text, format, "fuzz"),
    )
}

/// What loaded is valid and writes back to the same config; an error names the file.
fn checked(result: Result<Config, palisade::config::ConfigFileError>) -> Option<Config> {
    match result {
        Ok(config) => {
            // What loads is valid, and survives being written out and read back.
            config.validate().unwrap();
            let written = toml::to_string(&config).unwrap();
            let again = Config::parse(&written, Format::Toml).unwrap();
            assert_eq!(again, config, "written as\n{written}");
            Some(config)
        }
        Err(e) => {
            // Every error names the file.
            assert_eq!(e.path(), std::path::Path::new("fuzz"));
            assert!(e.to_string().starts_with("fuzz"));
            None
        }
    }
}

/// Loads the tree as YAML and, where TOML can express it, as TOML.
fn load_tree(tree: &Value) {
    let yaml = serde_yaml_ng::to_string(tree).unwrap();
    let from_yaml = load(&yaml, Format::Yaml);
    if let Ok(toml_text) = toml::to_string(tree) {
        let from_toml = load(&toml_text, Format::Toml);
        // The same document means the same config, whichever the syntax: what TOML
        // loads, YAML loads the same. (YAML also reads a plain scalar where a string
        // is expected, `header: false` as the header `false`, which TOML refuses.)
        if from_toml.is_some() {
            assert_eq!(
                from_yaml, from_toml,
                "as YAML:\n{yaml}\nas TOML:\n{toml_text}"
            );
        }
    }
}

fn example_tree() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/palisade.toml"
    ))
    .unwrap();
    toml::from_str(&text).unwrap()
}

/// Every key of a tree.
fn keys(tree: &Value, out: &mut Vec<String>) {
    match tree {
        Value::Mapping(m) => {
            for (k, v) in m {
                if let Some(k) = k.as_str()
                    && !out.iter().any(|o| o == k)
                {
                    out.push(k.to_owned());
                }
                keys(v, out);
            }
        }
        Value::Sequence(s) => s.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

/// The paths of every node of a tree (keys and indexes).
fn paths(tree: &Value, at: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(at.clone());
    match tree {
        Value::Mapping(m) => {
            for (k, v) in m {
                at.push(k.clone());
                paths(v, at, out);
                at.pop();
            }
        }
        Value::Sequence(s) => {
            for (i, v) in s.iter().enumerate() {
                at.push(Value::from(i as u64));
                paths(v, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn node<'a>(tree: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
    let mut node = tree;
    for step in path {
        node = match node {
            Value::Mapping(m) => m.get_mut(step)?,
            Value::Sequence(s) => s.get_mut(step.as_u64()? as usize)?,
            _ => return None,
        };
    }
    Some(node)
}

/// The words a config uses: every key and enum word of the example, and more.
fn vocabulary() -> Vec<String> {
    let mut words = Vec::new();
    keys(&example_tree(), &mut words);
    for w in [
        "count",
        "time",
        "fixed",
        "percentile",
        "aimd",
        "gradient2",
        "static",
        "file",
        "dns",
        "etcd",
        "peak_ewma",
        "pending",
        "fail_fast",
        "gate",
        "shed",
        "bulkhead_full",
        "failure",
        "rejected",
        "timeout",
        "peer",
        "header",
        "constant",
        "exponential",
        "full_jitter",
        "equal_jitter",
        "decorrelated_jitter",
        "after",
        "length",
        "buckets",
        "tolerance",
        "smoothing",
        "increase",
    ] {
        words.push(w.to_owned());
    }
    words
}

fn leaf() -> impl Strategy<Value = Value> {
    let words = vocabulary();
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-3i64..300).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (0.0f64..2.0).prop_map(Value::from),
        "[0-9]{1,22}(ns|us|ms|s|m|h|d|y)?".prop_map(Value::from),
        prop::sample::select(vec![
            "0s",
            "1ns",
            "1ms",
            "30s",
            "5m",
            "1h",
            "584years",
            "99999999999999999999s",
            "",
            "127.0.0.1:80",
            "host:0",
            "[::1]:9000",
            "x-api-key",
            "x api",
            "/",
            "\u{1F600}:1"
        ])
        .prop_map(Value::from),
        prop::sample::select(words).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ]
}

/// Random documents whose keys come from the config's vocabulary.
fn document() -> impl Strategy<Value = Value> {
    let words = vocabulary();
    leaf().prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec(
                (
                    prop_oneof![
                        4 => prop::sample::select(words.clone()),
                        1 => "[a-z_-]{1,8}",
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|entries| {
                let mut m = Mapping::new();
                for (k, v) in entries {
                    m.insert(Value::from(k), v);
                }
                Value::Mapping(m)
            }),
        ]
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Put a random value at the node.
    Replace(prop::sample::Index, Value),
    /// Remove the node from its table.
    Remove(prop::sample::Index),
    /// Add a field (known to the config elsewhere, or not at all) to the node.
    Add(prop::sample::Index, String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let words = vocabulary();
    prop_oneof![
        3 => (any::<prop::sample::Index>(), leaf()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Remove),
        1 => (
            any::<prop::sample::Index>(),
            prop_oneof![prop::sample::select(words), "[a-z_]{1,8}"],
            leaf()
        )
            .prop_map(|(i, k, v)| Mutation::Add(i, k, v)),
    ]
}

fn mutate(tree: &mut Value, m: &Mutation) {
    let mut all = Vec::new();
    paths(tree, &mut Vec::new(), &mut all);
    match m {
        Mutation::Replace(i, v) => {
            if let Some(n) = node(tree, &i.get(&all).clone()) {
                *n = v.clone();
            }
        }
        Mutation::Remove(i) => {
            let path = i.get(&all).clone();
            if let Some((last, parent)) = path.split_last()
                && let Some(Value::Mapping(m)) = node(tree, parent)
            {
                m.remove(last);
            }
        }
        Mutation::Add(i, k, v) => {
            if let Some(Value::Mapping(m)) = node(tree, &i.get(&all).clone()) {
                m.insert(Value::from(k.as_str()), v.clone());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_text_loads_or_errs(text in ".{0,300}") {
        load(&text, Format::Toml);
        load(&text, Format::Yaml);
    }

    #[test]
    fn config_like_text_loads_or_errs(text in "[a-z_\\[\\]{}=:\"'\\-0-9., #\n|>&*!~]{0,300}") {
        load(&text, Format::Toml);
        load(&text, Format::Yaml);
    }

    #[test]
    fn random_documents_load_or_err(tree in document()) {
        load_tree(&tree);
    }

    #[test]
    fn the_example_with_random_changes_loads_or_errs(
        mutations in prop::collection::vec(mutation(), 1..5)
    ) {
        let mut tree = example_tree();
        for m in &mutations {
            mutate(&mut tree, m);
        }
        load_tree(&tree);
    }

    #[test]
    fn random_env_overrides_load_or_err(
        path in prop::collection::vec(prop::sample::select(vocabulary()), 1..5),
        value in ".{0,20}",
    ) {
        let var = format!("PALISADE__{}", path.join("__").to_uppercase());
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/palisade.toml")).unwrap();
        checked(
            ConfigLoader::new()
                .env_vars([(var, value)])
                .load_str(&text, Format::Toml, "fuzz"),
        );
    }
}

#[test]
fn the_example_itself_passes_the_checks() {
    let config = load_tree_checked(&example_tree());
    assert!(config.downstreams.len() >= 5);
}

fn load_tree_checked(tree: &Value) -> Config {
    load_tree(tree);
    load(&toml::to_string(tree).unwrap(), Format::Toml).unwrap()
}

#[test]
fn deep_nesting_is_a_quick_error_not_a_crash() {
    let e = Config::parse(&format!("a = {}", "[".repeat(100_000)), Format::Toml).unwrap_err();
    assert!(e.to_string().starts_with("<inline>:1:"), "{e}");
    // The YAML parser would take minutes over this; it is refused up front.
    let e = Config::parse(&"[".repeat(100_000), Format::Yaml).unwrap_err();
    assert_eq!(
        e.to_string(),
        "<inline>:1:65: collections nested deeper than 64 levels"
    );
    let e = Config::parse(&"{a: ".repeat(100_000), Format::Yaml).unwrap_err();
    assert_eq!(
        e.to_string(),
        "<inline>:1:257: collections nested deeper than 64 levels"
    );
    // Block nesting stops at the parser's recursion limit.
    let e = Config::parse(&format!("{}x", "- ".repeat(100_000)), Format::Yaml).unwrap_err();
    assert!(e.to_string().contains("recursion limit exceeded"), "{e}");
}

#[test]
fn yaml_alias_bombs_are_refused() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let prev = format!("*a{}", i - 1);
        text.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            [prev.as_str(); 10].join(", ")
        ));
    }
    text.push_str("downstreams: *a11\n");
    let e = Config::parse(&text, Format::Yaml).unwrap_err();
    assert!(e.to_string().starts_with("<inline>:"), "{e}");
    assert!(e.to_string().contains("repetition limit exceeded"), "{e}");
}

/// The example with each of its nodes, one at a time, set to null and removed: a
/// field whose default differs from "unset" must still write back to the same
/// config (the proptest above found one such field).
#[test]
fn every_node_of_the_example_set_to_null_or_removed_loads_or_errs() {
    let tree = example_tree();
    let mut all = Vec::new();
    paths(&tree, &mut Vec::new(), &mut all);
    for path in all {
        let mut nulled = tree.clone();
        *node(&mut nulled, &path).unwrap() = Value::Null;
        let result = std::panic::catch_unwind(|| load_tree(&nulled));
        assert!(result.is_ok(), "with {path:?} set to null");
        if let Some((last, parent)) = path.split_last()
            && let Some(Value::Mapping(m)) = node(&mut tree.clone(), parent).cloned().as_mut()
        {
            let mut removed = tree.clone();
            m.remove(last);
            *node(&mut removed, parent).unwrap() = Value::Mapping(m.clone());
            let result = std::panic::catch_unwind(|| load_tree(&removed));
            assert!(result.is_ok(), "with {path:?} removed");
        }
    }
}
