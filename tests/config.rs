//! `palisade::Config`: the example file, every validation error a user can meet
//! (each message asserted whole), unknown fields at any depth, syntax errors with
//! line and column, and environment overrides.

use std::path::PathBuf;
use std::time::Duration;

use palisade::Config;
use palisade::config::{
    ConfigFileError, ConfigLoader, DiscoveryConfig, FallbackOn, Format, HedgeDelayConfig,
    KeySource, LoadMetric,
};
use palisade::core::RejectionKind;

fn example_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/palisade.toml"
    ))
}

fn example() -> Config {
    ConfigLoader::new()
        .without_env()
        .load(example_path())
        .unwrap()
}

fn toml_err(text: &str) -> String {
    ConfigLoader::new()
        .without_env()
        .load_str(text, Format::Toml, "palisade.toml")
        .unwrap_err()
        .to_string()
}

fn yaml_err(text: &str) -> String {
    ConfigLoader::new()
        .without_env()
        .load_str(text, Format::Yaml, "palisade.yaml")
        .unwrap_err()
        .to_string()
}

/// The keys of a section as its type serializes with every optional field unset:
/// the list of policies grows with the types, so a new one missing from the example
/// fails the test.
fn keys_of<T: serde::Serialize>(value: &T) -> Vec<String> {
    let v = serde_yaml_ng::to_value(value).unwrap();
    v.as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

fn is_set(v: &serde_yaml_ng::Value, key: &str) -> bool {
    v.get(key).is_some_and(|v| !v.is_null())
}

#[test]
fn the_example_sets_every_section() {
    let config = example();
    let tree = serde_yaml_ng::to_value(&config).unwrap();

    let downstreams = tree["downstreams"].as_mapping().unwrap();
    for section in keys_of(&palisade::config::DownstreamConfig::default()) {
        assert!(
            downstreams.values().any(|d| is_set(d, &section)),
            "no downstream in examples/palisade.toml sets `{section}`"
        );
    }
    for section in keys_of(&palisade::config::InboundConfig::default()) {
        assert!(
            is_set(&tree["inbound"], &section),
            "examples/palisade.toml sets no `inbound.{section}`"
        );
    }
    for field in keys_of(&palisade::config::MetricsConfig::default()) {
        assert!(
            is_set(&tree["metrics"], &field),
            "examples/palisade.toml sets no `metrics.{field}`"
        );
    }
    // Every discovery source and load metric is shown.
    let sources: Vec<&str> = config
        .downstreams
        .values()
        .filter_map(|d| d.balance.as_ref())
        .map(|b| match b.discovery {
            DiscoveryConfig::Static { .. } => "static",
            DiscoveryConfig::File { .. } => "file",
            DiscoveryConfig::Dns { .. } => "dns",
            DiscoveryConfig::Etcd { .. } => "etcd",
        })
        .collect();
    for source in ["static", "file", "dns", "etcd"] {
        assert!(
            sources.contains(&source),
            "no `{source}` discovery in the example"
        );
    }
    let loads: Vec<LoadMetric> = config
        .downstreams
        .values()
        .filter_map(|d| d.balance.as_ref().map(|b| b.load))
        .collect();
    assert!(loads.contains(&LoadMetric::PeakEwma) && loads.contains(&LoadMetric::Pending));

    // A few values, read as written.
    let customer = &config.downstreams["customer"];
    assert_eq!(customer.timeout, Some(Duration::from_millis(500)));
    assert_eq!(customer.breaker.as_ref().unwrap().minimum_calls, 20);
    assert_eq!(
        customer.fallback.as_ref().unwrap().on,
        [
            FallbackOn::Failure,
            FallbackOn::Rejection(RejectionKind::CircuitOpen),
            FallbackOn::Rejection(RejectionKind::Timeout),
            FallbackOn::Rejection(RejectionKind::NoEndpoints),
        ]
    );
    assert!(
        customer
            .fallback
            .as_ref()
            .unwrap()
            .triggers(Some(RejectionKind::CircuitOpen))
    );
    assert!(
        !customer
            .fallback
            .as_ref()
            .unwrap()
            .triggers(Some(RejectionKind::RateLimited))
    );
    let catalog = &config.downstreams["catalog"];
    assert_eq!(
        catalog.hedge.unwrap().delay,
        HedgeDelayConfig::Percentile {
            percentile: 0.95,
            min: Duration::from_millis(5)
        }
    );
    let inbound = config.inbound.as_ref().unwrap();
    assert_eq!(
        inbound.rate_limit.as_ref().unwrap().key,
        KeySource::Header("x-api-key".into())
    );
    assert_eq!(
        config.metrics.listen,
        Some("127.0.0.1:9000".parse().unwrap())
    );
}

/// Every field of every section, as a key path (`breaker.window.size`), with the
/// section's own defaults filled in: a section's fields grow with its type, so a
/// field added to a policy and missing from the example fails the test. Fields of
/// an enum variant other than the default one (AIMD's, a time window's) are
/// documented in the example's comments and not checked here.
fn field_paths(section: &str, value: serde_yaml_ng::Value) -> Vec<String> {
    fn walk(v: &serde_yaml_ng::Value, prefix: String, out: &mut Vec<String>) {
        match v.as_mapping() {
            Some(m) if !m.is_empty() => {
                for (k, v) in m {
                    walk(v, format!("{prefix}.{}", k.as_str().unwrap()), out);
                }
            }
            _ => out.push(prefix),
        }
    }
    let mut out = Vec::new();
    walk(&value, section.to_owned(), &mut out);
    out
}

/// `tree` has a value (not null) at the dotted `path`.
fn is_set_at(tree: &serde_yaml_ng::Value, path: &str) -> bool {
    path.split('.')
        .try_fold(tree, |v, key| v.get(key))
        .is_some_and(|v| !v.is_null())
}

fn default_tree<T: serde::Serialize>(value: T) -> serde_yaml_ng::Value {
    serde_yaml_ng::to_value(value).unwrap()
}

/// A section type's defaults around the fields it requires.
fn tree_with_required<T: serde::Serialize + serde::de::DeserializeOwned>(
    yaml: &str,
) -> serde_yaml_ng::Value {
    default_tree(serde_yaml_ng::from_str::<T>(yaml).unwrap())
}

#[test]
fn the_example_sets_every_field_of_every_section() {
    use palisade::breaker::BreakerConfig;
    use palisade::config::{
        BalanceConfig, CacheConfig, DeadlineConfig, FallbackConfig, HedgeConfig,
        InboundDeadlineConfig, KeyedRateLimitConfig, ShedConfig,
    };
    use palisade::limit::adaptive::AdaptiveLimitConfig;
    use palisade::limit::bulkhead::BulkheadConfig;
    use palisade::limit::rate::RateLimitConfig;
    use palisade::limit::throttle::ThrottleConfig;
    use palisade::retry::RetryConfig;

    // The file as written: a loaded config has every default filled in.
    let text = std::fs::read_to_string(example_path()).unwrap();
    let raw: toml::Value = toml::from_str(&text).unwrap();
    let tree = serde_yaml_ng::to_value(raw).unwrap();
    let downstreams: Vec<&serde_yaml_ng::Value> =
        tree["downstreams"].as_mapping().unwrap().values().collect();

    let sections = [
        ("breaker", default_tree(BreakerConfig::default())),
        ("retry", default_tree(RetryConfig::default())),
        ("hedge", default_tree(HedgeConfig::default())),
        ("deadline", default_tree(DeadlineConfig::default())),
        ("rate_limit", default_tree(RateLimitConfig::default())),
        ("bulkhead", default_tree(BulkheadConfig::default())),
        ("adaptive", default_tree(AdaptiveLimitConfig::default())),
        ("throttle", default_tree(ThrottleConfig::default())),
        (
            "balance",
            tree_with_required::<BalanceConfig>(
                "discovery: { source: static, endpoints: ['127.0.0.1:1'] }",
            ),
        ),
        ("cache", default_tree(CacheConfig::default())),
        ("fallback", default_tree(FallbackConfig::default())),
    ];
    let mut missing = Vec::new();
    for (section, defaults) in sections {
        for path in field_paths(section, defaults) {
            // The adaptive limit's default algorithm is set on the inbound side.
            let inbound = section == "adaptive" && is_set_at(&tree["inbound"], &path);
            if !inbound && !downstreams.iter().any(|d| is_set_at(d, &path)) {
                missing.push(format!("downstreams.*.{path}"));
            }
        }
    }
    let inbound_sections = [
        ("rate_limit", default_tree(KeyedRateLimitConfig::default())),
        ("shed", default_tree(ShedConfig::default())),
        ("adaptive", default_tree(AdaptiveLimitConfig::default())),
        (
            "deadline",
            tree_with_required::<InboundDeadlineConfig>("max: 10s"),
        ),
    ];
    for (section, defaults) in inbound_sections {
        for path in field_paths(section, defaults) {
            if !is_set_at(&tree["inbound"], &path) {
                missing.push(format!("inbound.{path}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "examples/palisade.toml does not set {missing:?}"
    );
}

/// The example, written in YAML.
const EXAMPLE_YAML: &str = r#"
metrics:
  enabled: true
  listen: 127.0.0.1:9000
inbound:
  name: orders-api
  rate_limit:
    key: { header: x-api-key }
    max_keys: 10000
    idle_timeout: 10m
    limit: { rate: 50, per: 1s, burst: 100, max_wait: 10ms }
  shed:
    max_in_flight: 200
    queue_target: 50ms
    retry_after: 1s
  adaptive:
    algorithm:
      kind: gradient2
      tolerance: 1.5
      smoothing: 0.2
      queue_size: 4
      long_window: 600
      short_window: 10
    min_limit: 10
    max_limit: 500
    initial_limit: 50
    rejection: shed
  deadline:
    max: 10s
    default_timeout: 5s
downstreams:
  customer:
    timeout: 500ms
    deadline: { margin: 5ms, min_remaining: 20ms }
    breaker:
      window: { kind: count, size: 100 }
      failure_rate_threshold: 0.5
      minimum_calls: 20
      slow_call_rate_threshold: 0.8
      slow_call_duration: 2s
      consecutive_failures: 10
      wait_in_open: 30s
      wait_multiplier: 2.0
      max_wait_in_open: 5m
      wait_jitter: 0.2
      half_open_probes: 5
      half_open_successes: 3
      max_wait_in_half_open: 1m
      mode: fail_fast
    retry:
      max_attempts: 3
      max_retry_after: 2s
      backoff: { strategy: full_jitter, base: 50ms, multiplier: 2.0, max: 2s }
      budget: { deposit_ratio: 0.2, min_retries_per_sec: 10, max_balance: 100 }
    rate_limit: { rate: 200, per: 1s, burst: 50, max_wait: 20ms }
    bulkhead: { max_concurrent: 32, max_queue: 16, max_wait: 100ms }
    throttle: { k: 2.0, window: 2m, buckets: 120 }
    cache:
      fresh_ttl: 30s
      max_stale: 5m
      max_weight_bytes: 67108864
      serve_fresh_from_cache: false
    fallback:
      on: [failure, circuit_open, timeout, no_endpoints]
  catalog:
    timeout: 300ms
    hedge:
      delay: { kind: percentile, percentile: 0.95, min: 5ms }
      max_hedges: 1
    retry: { max_attempts: 2 }
    adaptive:
      algorithm: { kind: aimd, backoff_ratio: 0.9, latency_threshold: 500ms, increase: 1.0 }
      min_limit: 5
      max_limit: 100
      initial_limit: 20
      rejection: bulkhead_full
    balance:
      load: peak_ewma
      slow_start: 10s
      discovery: { source: static, endpoints: ["127.0.0.1:8081", "127.0.0.1:8082"] }
      outlier:
        consecutive_failures: 5
        failure_rate: 0.5
        base_ejection: 30s
        max_ejection: 5m
        max_ejection_percent: 50
  inventory:
    timeout: 1s
    balance:
      discovery: { source: dns, name: "inventory.internal:8080", min_ttl: 1s, max_ttl: 5m }
      load: pending
  payment:
    timeout: 2s
    balance:
      discovery: { source: etcd, endpoints: ["127.0.0.1:2379"], prefix: /services/payment/ }
  shipment:
    balance:
      discovery: { source: file, path: /etc/palisade/shipment.endpoints }
"#;

#[test]
fn the_yaml_form_of_the_example_loads_the_same_config() {
    let yaml = ConfigLoader::new()
        .without_env()
        .load_str(EXAMPLE_YAML, Format::Yaml, "palisade.yaml")
        .unwrap();
    assert_eq!(yaml, example());
}

#[test]
fn a_loaded_config_writes_back_to_the_same_config() {
    let config = example();
    let toml_text = toml::to_string(&config).unwrap();
    assert_eq!(Config::parse(&toml_text, Format::Toml).unwrap(), config);
    let yaml_text = serde_yaml_ng::to_string(&config).unwrap();
    assert_eq!(Config::parse(&yaml_text, Format::Yaml).unwrap(), config);
}

#[test]
fn files_load_by_extension() {
    let dir = std::env::temp_dir().join(format!("palisade-config-ext-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let yml = dir.join("palisade.yml");
    std::fs::write(&yml, "downstreams:\n  customer:\n    timeout: 1s\n").unwrap();
    let c = ConfigLoader::new().without_env().load(&yml).unwrap();
    assert_eq!(
        c.downstreams["customer"].timeout,
        Some(Duration::from_secs(1))
    );
    let upper = dir.join("palisade.YAML");
    std::fs::write(&upper, "downstreams: {}\n").unwrap();
    assert!(
        ConfigLoader::new()
            .without_env()
            .load(&upper)
            .unwrap()
            .downstreams
            .is_empty()
    );

    let json = dir.join("palisade.json");
    std::fs::write(&json, "{}").unwrap();
    let e = ConfigLoader::new().without_env().load(&json).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: unknown config format; the file name must end in .toml, .yaml or .yml",
            json.display()
        )
    );
    let missing = dir.join("missing.toml");
    let e = ConfigLoader::new()
        .without_env()
        .load(&missing)
        .unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(e.path(), missing);
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read the file: ", missing.display())),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn empty_documents_are_the_default_config() {
    assert_eq!(Config::parse("", Format::Toml).unwrap(), Config::default());
    assert_eq!(Config::parse("", Format::Yaml).unwrap(), Config::default());
    assert_eq!(
        Config::parse("# nothing\n", Format::Yaml).unwrap(),
        Config::default()
    );
    assert!(Config::default().metrics.enabled);
}

#[test]
fn syntax_errors_give_line_and_column() {
    assert_eq!(
        toml_err("[metrics]\nenabled = true\n[downstreams.customer\n"),
        "palisade.toml:3:22: unclosed table, expected `]`"
    );
    let e = ConfigLoader::new()
        .without_env()
        .load_str(
            "downstreams:\n  customer: [\n",
            Format::Yaml,
            "palisade.yaml",
        )
        .unwrap_err();
    assert!(matches!(e, ConfigFileError::Syntax { .. }), "{e:?}");
    assert_eq!(e.location(), Some((3, 1)));
    assert!(e.to_string().starts_with("palisade.yaml:3:1: "), "{e}");
    let e = yaml_err("a: b\n  c: d\n");
    assert!(
        e.starts_with("palisade.yaml:2:4: mapping values are not allowed"),
        "{e}"
    );
}

#[test]
fn wrong_types_name_the_field_and_where_it_is() {
    assert_eq!(
        toml_err("[downstreams.customer.breaker]\nfailure_rate_threshold = \"high\"\n"),
        "palisade.toml:2:26: downstreams.customer.breaker.failure_rate_threshold: invalid type: string \"high\", expected f64"
    );
    assert_eq!(
        toml_err("[downstreams.customer]\ntimeout = \"soon\"\n"),
        "palisade.toml:2:11: downstreams.customer.timeout: invalid value: string \"soon\", expected a duration"
    );
    assert_eq!(
        yaml_err("downstreams:\n  customer:\n    retry:\n      max_attempts: -1\n"),
        "palisade.yaml:4:21: downstreams.customer.retry.max_attempts: invalid type: integer `-1`, expected u32"
    );
    assert_eq!(
        yaml_err("downstreams:\n  customer: [1, 2]\n"),
        "palisade.yaml:2:13: downstreams.customer: invalid type: sequence, expected struct DownstreamConfig"
    );
    assert_eq!(
        toml_err("[downstreams.customer.fallback]\non = [\"failure\", \"sometimes\"]\n"),
        "palisade.toml:2:6: downstreams.customer.fallback.on[1]: unknown fallback trigger `sometimes`, expected `failure`, `rejected` or one of circuit_open, rate_limited, bulkhead_full, timeout, deadline_exceeded, budget_exhausted, shed, no_endpoints"
    );
    assert_eq!(
        toml_err("[inbound.deadline]\ndefault_timeout = \"1s\"\n"),
        "palisade.toml:1:1: inbound.deadline: missing field `max`"
    );
    assert_eq!(
        toml_err("[downstreams.customer.balance]\nload = \"pending\"\n"),
        "palisade.toml:1:1: downstreams.customer.balance: missing field `discovery`"
    );
    assert_eq!(
        toml_err("[metrics]\nlisten = \"localhost\"\n"),
        "palisade.toml:2:10: metrics.listen: invalid socket address syntax"
    );
}

#[test]
fn unknown_fields_are_errors_at_any_depth() {
    assert_eq!(
        toml_err("version = 2\n"),
        "palisade.toml:1:1: version: unknown field `version`, expected one of `downstreams`, `inbound`, `metrics`"
    );
    assert_eq!(
        toml_err("[downstreams.customer]\ncircuit_breaker = {}\n"),
        "palisade.toml:2:1: downstreams.customer.circuit_breaker: unknown field `circuit_breaker`, expected one of `breaker`, `retry`, `hedge`, `timeout`, `deadline`, `rate_limit`, `bulkhead`, `adaptive`, `throttle`, `balance`, `cache`, `fallback`"
    );
    let e = toml_err("[downstreams.customer.breaker]\nfailure_rate = 0.5\n");
    assert!(
        e.starts_with("palisade.toml:2:1: downstreams.customer.breaker.failure_rate: unknown field `failure_rate`, expected one of `window`, `failure_rate_threshold`"),
        "{e}"
    );
    // Inside a tagged table, the path still ends at the unknown field.
    assert_eq!(
        toml_err(
            "[downstreams.customer.breaker]\nwindow = { kind = \"count\", size = 10, extra = 1 }\n"
        ),
        "palisade.toml:2:10: downstreams.customer.breaker.window.extra: unknown field `extra`, expected `size`"
    );
    assert_eq!(
        toml_err(
            "[downstreams.customer.balance.outlier]\nejection = \"1s\"\n[downstreams.customer.balance.discovery]\nsource = \"static\"\nendpoints = [\"a:1\"]\n"
        ),
        "palisade.toml:2:1: downstreams.customer.balance.outlier.ejection: unknown field `ejection`, expected one of `consecutive_failures`, `failure_rate`, `base_ejection`, `max_ejection`, `max_ejection_percent`"
    );
    assert_eq!(
        yaml_err("downstreams:\n  customer:\n    retry:\n      budget:\n        ratio: 0.1\n"),
        "palisade.yaml:5:9: downstreams.customer.retry.budget.ratio: unknown field `ratio`, expected one of `deposit_ratio`, `min_retries_per_sec`, `max_balance`"
    );
    assert_eq!(
        yaml_err("inbound:\n  rate_limit:\n    limit: { rate: 5, burstiness: 2 }\n"),
        "palisade.yaml:3:23: inbound.rate_limit.limit.burstiness: unknown field `burstiness`, expected one of `rate`, `per`, `burst`, `max_wait`"
    );
    assert_eq!(
        yaml_err(
            "downstreams:\n  c:\n    balance:\n      discovery: { source: dns, name: \"a:1\", ttl: 1s }\n"
        ),
        "palisade.yaml:4:7: downstreams.c.balance.discovery.ttl: unknown field `ttl`, expected one of `name`, `min_ttl`, `max_ttl`"
    );
}

/// Each validation error, as the user reads it: the file, the field path from the
/// top of the document, the problem.
#[test]
fn every_validation_error_names_file_field_and_problem() {
    let cases: &[(&str, &str)] = &[
        // downstream names
        (
            "[downstreams.\"customer api\"]\n",
            "palisade.toml: downstreams.customer api: name \"customer api\" has ' '; only ASCII letters, digits, '_', '-' and '.' are allowed",
        ),
        // breaker
        (
            "[downstreams.customer.breaker]\nfailure_rate_threshold = 1.5\n",
            "palisade.toml: downstreams.customer.breaker.failure_rate_threshold: 1.5 is not within 0..=1",
        ),
        (
            "[downstreams.customer.breaker]\nwindow = { kind = \"count\", size = 0 }\n",
            "palisade.toml: downstreams.customer.breaker.window.size: 0 is not within 1..=524288",
        ),
        (
            "[downstreams.customer.breaker]\nmax_wait_in_open = \"1s\"\n",
            "palisade.toml: downstreams.customer.breaker.max_wait_in_open: 1s is shorter than wait_in_open (30s)",
        ),
        // retry
        (
            "[downstreams.customer.retry]\nmax_attempts = 0\n",
            "palisade.toml: downstreams.customer.retry.max_attempts: must be at least 1 (1 means no retries)",
        ),
        (
            "[downstreams.customer.retry]\nbudget = { deposit_ratio = 2.0 }\n",
            "palisade.toml: downstreams.customer.retry.budget.deposit_ratio: 2 is not within 0..=1",
        ),
        (
            "[downstreams.customer.retry]\nbackoff = { base = \"1s\", max = \"10ms\" }\n",
            "palisade.toml: downstreams.customer.retry.backoff.max: 10ms is shorter than backoff.base (1s)",
        ),
        (
            "[downstreams.customer.retry]\nbackoff = { strategy = \"constant\", base = \"18446744073709551615s\", max = \"18446744073709551615s\" }\n",
            "palisade.toml: downstreams.customer.retry.backoff.max: 18446744073709551615s is longer than a day",
        ),
        (
            "[downstreams.customer.retry]\nmax_retry_after = \"2days\"\n",
            "palisade.toml: downstreams.customer.retry.max_retry_after: 172800s is longer than a day",
        ),
        // hedge
        (
            "[downstreams.customer.hedge]\nmax_hedges = 0\n",
            "palisade.toml: downstreams.customer.hedge.max_hedges: 0 is not within 1..=8",
        ),
        (
            "[downstreams.customer.hedge]\ndelay = { kind = \"percentile\", percentile = 1.0 }\n",
            "palisade.toml: downstreams.customer.hedge.delay.percentile: 1 is not within 0 < p < 1",
        ),
        (
            "[downstreams.customer.hedge]\ndelay = { kind = \"fixed\", after = \"0s\" }\n",
            "palisade.toml: downstreams.customer.hedge.delay: must be greater than zero",
        ),
        (
            "[downstreams.customer.hedge]\ndelay = { kind = \"fixed\", after = \"2h\" }\n",
            "palisade.toml: downstreams.customer.hedge.delay: 7200s is longer than an hour",
        ),
        (
            "[downstreams.customer.hedge]\ndelay = { kind = \"percentile\", percentile = 0.9, min = \"2h\" }\n",
            "palisade.toml: downstreams.customer.hedge.delay.min: 7200s is longer than an hour",
        ),
        // timeout and deadline
        (
            "[downstreams.customer]\ntimeout = \"0s\"\n",
            "palisade.toml: downstreams.customer.timeout: must be more than zero",
        ),
        (
            "[downstreams.customer.deadline]\nmargin = \"20ms\"\nmin_remaining = \"10ms\"\n",
            "palisade.toml: downstreams.customer.deadline.min_remaining: 10ms is not more than margin (20ms)",
        ),
        // limits
        (
            "[downstreams.customer.rate_limit]\nrate = 0\n",
            "palisade.toml: downstreams.customer.rate_limit.rate: must be at least 1",
        ),
        (
            "[downstreams.customer.rate_limit]\nrate = 1\nper = \"600y\"\n",
            "palisade.toml: downstreams.customer.rate_limit.per: a burst of 1 at 1 per 18934560000s takes more than 100 years to refill",
        ),
        (
            "[downstreams.customer.bulkhead]\nmax_concurrent = 0\n",
            "palisade.toml: downstreams.customer.bulkhead.max_concurrent: must be at least 1",
        ),
        (
            "[downstreams.customer.adaptive]\nmin_limit = 50\nmax_limit = 10\n",
            "palisade.toml: downstreams.customer.adaptive.min_limit: 50 is larger than max_limit (10)",
        ),
        (
            "[downstreams.customer.bulkhead]\n[downstreams.customer.adaptive]\n",
            "palisade.toml: downstreams.customer.adaptive: cannot be set together with bulkhead; choose one concurrency limit",
        ),
        (
            "[downstreams.customer.throttle]\nk = 0.5\n",
            "palisade.toml: downstreams.customer.throttle.k: 0.5 must be a finite number >= 1",
        ),
        // balance
        (
            "[downstreams.c.balance]\ndiscovery = { source = \"static\", endpoints = [] }\n",
            "palisade.toml: downstreams.c.balance.discovery.endpoints: must name at least one endpoint",
        ),
        (
            "[downstreams.c.balance]\ndiscovery = { source = \"static\", endpoints = [\"a:1\", \"nohost\"] }\n",
            "palisade.toml: downstreams.c.balance.discovery.endpoints[1]: \"nohost\" is not host:port",
        ),
        (
            "[downstreams.c.balance]\ndiscovery = { source = \"static\", endpoints = [\"a:0\"] }\n",
            "palisade.toml: downstreams.c.balance.discovery.endpoints[0]: \"a:0\" is not host:port",
        ),
        (
            "[downstreams.c.balance]\ndiscovery = { source = \"file\", path = \"\" }\n",
            "palisade.toml: downstreams.c.balance.discovery.path: must not be empty",
        ),
        (
            "[downstreams.c.balance]\ndiscovery = { source = \"dns\", name = \"catalog\" }\n",
            "palisade.toml: downstreams.c.balance.discovery.name: \"catalog\" is not host:port",
        ),
        (
            "[downstreams.c.balance]\ndiscovery = { source = \"dns\", name = \"c:80\", min_ttl = \"0s\" }\n",
            "palisade.toml: downstreams.c.balance.discovery.min_ttl: must be greater than zero",
        ),
        (
            "[downstreams.c.balance]\ndiscovery = { source = \"dns\", name = \"c:80\", min_ttl = \"1m\", max_ttl = \"1s\" }\n",
            "palisade.toml: downstreams.c.balance.discovery.max_ttl: 1s is shorter than min_ttl (60s)",
        ),
        (
            "[downstreams.c.balance]\ndiscovery = { source = \"etcd\", endpoints = [\"e:2379\"], prefix = \"\" }\n",
            "palisade.toml: downstreams.c.balance.discovery.prefix: must not be empty",
        ),
        (
            "[downstreams.c.balance]\ndiscovery = { source = \"etcd\", endpoints = [], prefix = \"/s/\" }\n",
            "palisade.toml: downstreams.c.balance.discovery.endpoints: must name at least one endpoint",
        ),
        (
            "[downstreams.c.balance]\ndiscovery = { source = \"file\", path = \"/e\" }\nslow_start = \"0s\"\n",
            "palisade.toml: downstreams.c.balance.slow_start: must be greater than zero (leave it unset to turn slow start off)",
        ),
        (
            "[downstreams.c.balance]\ndiscovery = { source = \"file\", path = \"/e\" }\noutlier = { consecutive_failures = 0 }\n",
            "palisade.toml: downstreams.c.balance.outlier.consecutive_failures: is 0 (off) and failure_rate is unset, so no endpoint could ever be ejected",
        ),
        (
            "[downstreams.c.balance]\ndiscovery = { source = \"file\", path = \"/e\" }\noutlier = { failure_rate = 1.5 }\n",
            "palisade.toml: downstreams.c.balance.outlier.failure_rate: 1.5 is not within 0..=1",
        ),
        (
            "[downstreams.c.balance]\ndiscovery = { source = \"file\", path = \"/e\" }\noutlier = { base_ejection = \"0s\" }\n",
            "palisade.toml: downstreams.c.balance.outlier.base_ejection: must be greater than zero",
        ),
        (
            "[downstreams.c.balance]\ndiscovery = { source = \"file\", path = \"/e\" }\noutlier = { max_ejection = \"1s\" }\n",
            "palisade.toml: downstreams.c.balance.outlier.max_ejection: 1s is shorter than base_ejection (30s)",
        ),
        (
            "[downstreams.c.balance]\ndiscovery = { source = \"file\", path = \"/e\" }\noutlier = { max_ejection_percent = 101 }\n",
            "palisade.toml: downstreams.c.balance.outlier.max_ejection_percent: 101 is not within 0..=100",
        ),
        // cache and fallback
        (
            "[downstreams.c.cache]\nmax_weight_bytes = 0\n",
            "palisade.toml: downstreams.c.cache.max_weight_bytes: must be at least 1",
        ),
        (
            "[downstreams.c.cache]\nfresh_ttl = \"0s\"\nserve_fresh_from_cache = true\n",
            "palisade.toml: downstreams.c.cache.fresh_ttl: must be greater than zero when serve_fresh_from_cache is true",
        ),
        (
            "[downstreams.c.cache]\nfresh_ttl = \"0s\"\nmax_stale = \"0s\"\n",
            "palisade.toml: downstreams.c.cache.max_stale: must be greater than zero when fresh_ttl is zero, or the cache would never be read",
        ),
        (
            "[downstreams.c.fallback]\non = []\n",
            "palisade.toml: downstreams.c.fallback.on: must name at least one trigger (remove the fallback section to turn it off)",
        ),
        (
            "[downstreams.c.fallback]\non = [\"timeout\", \"failure\", \"timeout\"]\n",
            "palisade.toml: downstreams.c.fallback.on[2]: `timeout` is listed twice",
        ),
        // inbound
        (
            "[inbound]\nname = \"\"\n",
            "palisade.toml: inbound.name: name is empty",
        ),
        (
            "[inbound.rate_limit]\nkey = { header = \"x api key\" }\n",
            "palisade.toml: inbound.rate_limit.key.header: \"x api key\" is not a valid header name",
        ),
        (
            "[inbound.rate_limit]\nmax_keys = 0\n",
            "palisade.toml: inbound.rate_limit.max_keys: capacity must be at least 1",
        ),
        (
            "[inbound.rate_limit]\nidle_timeout = \"0s\"\n",
            "palisade.toml: inbound.rate_limit.idle_timeout: idle timeout must be greater than zero",
        ),
        (
            "[inbound.rate_limit]\nlimit = { rate = 0 }\n",
            "palisade.toml: inbound.rate_limit.limit.rate: must be at least 1",
        ),
        (
            "[inbound.rate_limit]\nlimit = { rate = 1, max_wait = \"2days\" }\n",
            "palisade.toml: inbound.rate_limit.limit.max_wait: 172800s is longer than a day",
        ),
        (
            "[inbound.shed]\nmax_in_flight = 0\n",
            "palisade.toml: inbound.shed.max_in_flight: must be at least 1",
        ),
        (
            "[inbound.shed]\nqueue_target = \"0s\"\n",
            "palisade.toml: inbound.shed.queue_target: must be greater than zero",
        ),
        (
            "[inbound.adaptive]\nrejection = \"timeout\"\n",
            "palisade.toml: inbound.adaptive.rejection: `timeout` does not describe a concurrency limit; use `bulkhead_full` (client side) or `shed` (server side)",
        ),
        (
            "[inbound.deadline]\nmax = \"0s\"\n",
            "palisade.toml: inbound.deadline.max: must be more than zero",
        ),
        (
            "[inbound.deadline]\nmax = \"1s\"\ndefault_timeout = \"2s\"\n",
            "palisade.toml: inbound.deadline.default_timeout: 2s is more than max (1s)",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(&toml_err(text), want, "for\n{text}");
    }
}

#[test]
fn validation_errors_carry_the_field_and_the_file() {
    let e = ConfigLoader::new()
        .without_env()
        .load_str(
            "[downstreams.customer.breaker]\nfailure_rate_threshold = 1.5\n",
            Format::Toml,
            "/etc/palisade.toml",
        )
        .unwrap_err();
    assert_eq!(e.path(), std::path::Path::new("/etc/palisade.toml"));
    assert_eq!(
        e.field(),
        Some("downstreams.customer.breaker.failure_rate_threshold")
    );
    assert_eq!(e.location(), None);
}

#[test]
fn lists_and_maps_are_bounded() {
    let many: Vec<String> = (0..1025).map(|i| format!("\"h{i}:80\"")).collect();
    assert_eq!(
        toml_err(&format!(
            "[downstreams.c.balance]\ndiscovery = {{ source = \"static\", endpoints = [{}] }}\n",
            many.join(",")
        )),
        "palisade.toml: downstreams.c.balance.discovery.endpoints: 1025 endpoints are more than 1024"
    );
    let mut text = String::new();
    for i in 0..1025 {
        text.push_str(&format!("[downstreams.d{i}]\n"));
    }
    assert_eq!(
        toml_err(&text),
        "palisade.toml: downstreams: 1025 downstreams are more than 1024"
    );
}

// ---- environment overrides ------------------------------------------------------------

fn with_env(vars: &[(&str, &str)], text: &str) -> Result<Config, ConfigFileError> {
    ConfigLoader::new()
        .env_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .load_str(text, Format::Toml, "palisade.toml")
}

#[test]
fn env_overrides_set_fields_at_any_depth() {
    let base = "[downstreams.customer.breaker]\nfailure_rate_threshold = 0.5\n[downstreams.order-api]\ntimeout = \"1s\"\n";
    let c = with_env(
        &[
            (
                "PALISADE__DOWNSTREAMS__CUSTOMER__BREAKER__FAILURE_RATE_THRESHOLD",
                "0.3",
            ),
            (
                "PALISADE__DOWNSTREAMS__CUSTOMER__BREAKER__WINDOW__SIZE",
                "50",
            ),
            (
                "PALISADE__DOWNSTREAMS__CUSTOMER__BREAKER__WINDOW__KIND",
                "count",
            ),
            ("PALISADE__DOWNSTREAMS__CUSTOMER__TIMEOUT", "250ms"),
            // `_` matches the `-` of an existing name.
            ("PALISADE__DOWNSTREAMS__ORDER_API__TIMEOUT", "2s"),
            ("PALISADE__METRICS__ENABLED", "false"),
            ("PALISADE__METRICS__LISTEN", "127.0.0.1:9100"),
            // Not ours.
            ("OTHER__METRICS__ENABLED", "true"),
            ("PALISADE_METRICS_ENABLED", "true"),
        ],
        base,
    )
    .unwrap();
    let customer = &c.downstreams["customer"];
    let breaker = customer.breaker.as_ref().unwrap();
    assert_eq!(breaker.failure_rate_threshold, 0.3);
    assert_eq!(
        breaker.window,
        palisade::breaker::WindowConfig::Count { size: 50 }
    );
    assert_eq!(customer.timeout, Some(Duration::from_millis(250)));
    assert_eq!(
        c.downstreams["order-api"].timeout,
        Some(Duration::from_secs(2))
    );
    assert!(!c.downstreams.contains_key("order_api"));
    assert!(!c.metrics.enabled);
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9100".parse().unwrap()));
}

#[test]
fn env_overrides_add_sections_lists_and_unset_optionals() {
    let c = with_env(
        &[
            (
                "PALISADE__DOWNSTREAMS__INVENTORY__BALANCE__DISCOVERY__SOURCE",
                "static",
            ),
            (
                "PALISADE__DOWNSTREAMS__INVENTORY__BALANCE__DISCOVERY__ENDPOINTS",
                "[127.0.0.1:81, 127.0.0.1:82]",
            ),
            (
                "PALISADE__DOWNSTREAMS__INVENTORY__FALLBACK__ON",
                "[failure, shed]",
            ),
            (
                "PALISADE__DOWNSTREAMS__CUSTOMER__BREAKER__SLOW_CALL_DURATION",
                "",
            ),
        ],
        "[downstreams.customer.breaker]\nslow_call_duration = \"1s\"\n",
    )
    .unwrap();
    let inventory = &c.downstreams["inventory"];
    assert_eq!(
        inventory.balance.as_ref().unwrap().discovery,
        DiscoveryConfig::Static {
            endpoints: vec!["127.0.0.1:81".into(), "127.0.0.1:82".into()]
        }
    );
    assert_eq!(
        inventory.fallback.as_ref().unwrap().on,
        [
            FallbackOn::Failure,
            FallbackOn::Rejection(RejectionKind::Shed)
        ]
    );
    assert_eq!(
        c.downstreams["customer"]
            .breaker
            .as_ref()
            .unwrap()
            .slow_call_duration,
        None
    );
}

#[test]
fn env_overrides_are_validated_and_blamed() {
    let e = with_env(
        &[(
            "PALISADE__DOWNSTREAMS__CUSTOMER__BREAKER__FAILURE_RATE_THRESHOLD",
            "1.5",
        )],
        "[downstreams.customer.breaker]\n",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "palisade.toml: downstreams.customer.breaker.failure_rate_threshold: 1.5 is not within 0..=1 (set by PALISADE__DOWNSTREAMS__CUSTOMER__BREAKER__FAILURE_RATE_THRESHOLD)"
    );
    let e = with_env(
        &[("PALISADE__DOWNSTREAMS__CUSTOMER__RETRY__MAX_ATTEMPT", "2")],
        "",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "palisade.toml: downstreams.customer.retry.max_attempt: unknown field `max_attempt`, expected one of `max_attempts`, `backoff`, `budget`, `max_retry_after` (set by PALISADE__DOWNSTREAMS__CUSTOMER__RETRY__MAX_ATTEMPT)"
    );
    let e = with_env(&[("PALISADE__DOWNSTREAMS__CUSTOMER__TIMEOUT", "fast")], "").unwrap_err();
    assert_eq!(
        e.to_string(),
        "palisade.toml: downstreams.customer.timeout: invalid value: string \"fast\", expected a duration (set by PALISADE__DOWNSTREAMS__CUSTOMER__TIMEOUT)"
    );
    // A file error is not blamed on an unrelated override.
    let e = with_env(
        &[("PALISADE__METRICS__ENABLED", "true")],
        "[downstreams.customer.retry]\nmax_attempts = 0\n",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "palisade.toml: downstreams.customer.retry.max_attempts: must be at least 1 (1 means no retries)"
    );
}

#[test]
fn malformed_env_overrides_are_refused_with_the_variable() {
    let e = with_env(&[("PALISADE__DOWNSTREAMS____TIMEOUT", "1s")], "").unwrap_err();
    assert_eq!(
        e.to_string(),
        "palisade.toml: PALISADE__DOWNSTREAMS____TIMEOUT: the name has an empty path segment (two `__` in a row, or one at the end)"
    );
    let e = with_env(
        &[("PALISADE__DOWNSTREAMS__CUSTOMER__TIMEOUT__SECONDS", "1")],
        "[downstreams.customer]\ntimeout = \"1s\"\n",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "palisade.toml: PALISADE__DOWNSTREAMS__CUSTOMER__TIMEOUT__SECONDS: `downstreams.customer.timeout` is not a table, so it has no `seconds`"
    );
}

#[test]
fn env_prefix_is_configurable() {
    let c = ConfigLoader::new()
        .env_prefix("ORDERS")
        .env_vars([
            ("ORDERS__METRICS__ENABLED", "false"),
            ("PALISADE__METRICS__LISTEN", "not an address"),
        ])
        .load_str("", Format::Yaml, "palisade.yaml")
        .unwrap();
    assert!(!c.metrics.enabled);
    assert_eq!(c.metrics.listen, None);
}

// ---- what changed between two versions ------------------------------------------------

#[test]
fn diff_lists_changed_downstreams_sections_inbound_and_metrics() {
    use palisade::config::{ChangeKind, Section, SectionChange};

    let old = example();
    assert!(old.diff(&old).is_empty());

    let mut new = old.clone();
    // customer: breaker retuned, bulkhead removed, hedge added.
    let customer = new.downstreams.get_mut("customer").unwrap();
    customer.breaker.as_mut().unwrap().failure_rate_threshold = 0.3;
    customer.bulkhead = None;
    customer.hedge = Some(Default::default());
    // inventory gone, search new.
    new.downstreams.remove("inventory");
    new.downstreams.insert("search".into(), Default::default());
    // inbound: shed retuned, deadline removed.
    let inbound = new.inbound.as_mut().unwrap();
    inbound.shed.as_mut().unwrap().max_in_flight = 50;
    inbound.deadline = None;
    new.metrics.enabled = false;

    let diff = old.diff(&new);
    assert!(!diff.is_empty());
    assert_eq!(diff.added, ["search"]);
    assert_eq!(diff.removed, ["inventory"]);
    assert_eq!(diff.changed.len(), 1);
    let change = |section, kind| SectionChange { section, kind };
    assert_eq!(
        diff.sections_of("customer"),
        [
            change(Section::Breaker, ChangeKind::Changed),
            change(Section::Hedge, ChangeKind::Added),
            change(Section::Bulkhead, ChangeKind::Removed),
        ]
    );
    assert_eq!(
        diff.sections_of("customer")
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["breaker changed", "hedge added", "bulkhead removed"]
    );
    assert!(diff.sections_of("catalog").is_empty());
    assert_eq!(
        diff.inbound,
        [
            change(Section::Shed, ChangeKind::Changed),
            change(Section::Deadline, ChangeKind::Removed),
        ]
    );
    assert!(diff.metrics);

    // Inbound appearing shows as its sections being added.
    let mut bare = old.clone();
    bare.inbound = None;
    let diff = bare.diff(&old);
    assert_eq!(
        diff.inbound
            .iter()
            .map(|c| (c.section, c.kind))
            .collect::<Vec<_>>(),
        [
            (Section::RateLimit, ChangeKind::Added),
            (Section::Shed, ChangeKind::Added),
            (Section::Adaptive, ChangeKind::Added),
            (Section::Deadline, ChangeKind::Added),
        ]
    );
}

#[test]
fn formats_follow_the_extension() {
    use std::path::Path;
    assert_eq!(
        Format::from_path(Path::new("a/palisade.toml")),
        Some(Format::Toml)
    );
    assert_eq!(
        Format::from_path(Path::new("palisade.TOML")),
        Some(Format::Toml)
    );
    assert_eq!(
        Format::from_path(Path::new("palisade.yaml")),
        Some(Format::Yaml)
    );
    assert_eq!(
        Format::from_path(Path::new("palisade.yml")),
        Some(Format::Yaml)
    );
    assert_eq!(Format::from_path(Path::new("palisade.json")), None);
    assert_eq!(Format::from_path(Path::new("palisade")), None);
}

#[test]
fn key_sources_read_the_same_in_toml_and_yaml() {
    let key = |text: &str, format| {
        Config::parse(text, format).map(|c| c.inbound.unwrap().rate_limit.unwrap().key)
    };
    assert_eq!(
        key("[inbound.rate_limit]\nkey = \"peer\"\n", Format::Toml).unwrap(),
        KeySource::Peer
    );
    assert_eq!(
        key("inbound:\n  rate_limit:\n    key: peer\n", Format::Yaml).unwrap(),
        KeySource::Peer
    );
    assert_eq!(
        key(
            "inbound:\n  rate_limit:\n    key: { header: x-client }\n",
            Format::Yaml
        )
        .unwrap(),
        KeySource::Header("x-client".into())
    );
    assert_eq!(
        key("[inbound.rate_limit]\nkey = \"route\"\n", Format::Toml)
            .unwrap_err()
            .to_string(),
        "<inline>:2:7: inbound.rate_limit.key: unknown key source `route`, expected \"peer\" or { header = \"<name>\" }"
    );
    assert_eq!(
        key(
            "[inbound.rate_limit]\nkey = { cookie = \"id\" }\n",
            Format::Toml
        )
        .unwrap_err()
        .to_string(),
        "<inline>:2:7: inbound.rate_limit.key.cookie: unknown field `cookie`, expected `header`"
    );
}
