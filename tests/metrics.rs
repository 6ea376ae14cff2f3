//! The breaker's Prometheus exposition: every series registered at zero when the
//! breaker is built, names in Palisade's scheme, values following the state machine.

use std::time::Duration;

use palisade::breaker::CircuitBreakerLayer;
use tower::{Layer, Service, ServiceExt};

fn line(text: &str, prefix: &str) -> f64 {
    let l = text
        .lines()
        .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no series {prefix} in\n{text}"));
    l[prefix.len()..].trim().parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn series_are_zero_filled_and_follow_the_breaker() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let layer = metrics::with_local_recorder(&recorder, || {
        CircuitBreakerLayer::builder("customer")
            .count_window(10)
            .minimum_calls(4)
            .failure_rate_threshold(0.5)
            .slow_calls(Duration::from_millis(500), 1.0)
            .wait_in_open(Duration::from_secs(10))
            .wait_jitter(0.0)
            .build()
            .unwrap()
    });

    // Right after build: everything present, at zero, closed = 1.
    let text = handle.render();
    let d = r#"downstream="customer""#;
    for state in [
        "closed",
        "open",
        "half_open",
        "forced_open",
        "disabled",
        "metrics_only",
    ] {
        let want = if state == "closed" { 1.0 } else { 0.0 };
        assert_eq!(
            line(
                &text,
                &format!(r#"palisade_breaker_state{{{d},state="{state}"}}"#)
            ),
            want
        );
    }
    for outcome in ["success", "failure", "ignored"] {
        assert_eq!(
            line(
                &text,
                &format!(r#"palisade_breaker_calls_total{{{d},outcome="{outcome}"}}"#)
            ),
            0.0
        );
    }
    for outcome in ["success", "failure"] {
        assert_eq!(
            line(
                &text,
                &format!(r#"palisade_breaker_slow_calls_total{{{d},outcome="{outcome}"}}"#)
            ),
            0.0
        );
    }
    assert_eq!(
        line(
            &text,
            &format!(r#"palisade_breaker_not_permitted_calls_total{{{d}}}"#)
        ),
        0.0
    );
    assert_eq!(
        line(
            &text,
            &format!(r#"palisade_breaker_transitions_total{{{d},from="closed",to="open"}}"#)
        ),
        0.0
    );
    assert_eq!(
        line(
            &text,
            &format!(r#"palisade_breaker_failure_rate_ratio{{{d}}}"#)
        ),
        0.0
    );
    assert!(
        text.contains("# HELP palisade_breaker_calls_total "),
        "{text}"
    );
    assert!(
        text.contains("# TYPE palisade_breaker_calls_total counter"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE palisade_breaker_state gauge"),
        "{text}"
    );

    let mut svc = layer.layer(tower::service_fn(|(fail, slow): (bool, bool)| async move {
        if slow {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        if fail {
            Err(std::io::Error::other("down"))
        } else {
            Ok(())
        }
    }));
    for req in [(false, false), (false, true), (true, false), (true, false)] {
        let _ = svc.ready().await.unwrap().call(req).await;
    }
    for _ in 0..3 {
        let _ = svc.ready().await.unwrap().call((false, false)).await;
    }
    let text = handle.render();
    assert_eq!(
        line(
            &text,
            &format!(r#"palisade_breaker_calls_total{{{d},outcome="success"}}"#)
        ),
        2.0
    );
    assert_eq!(
        line(
            &text,
            &format!(r#"palisade_breaker_calls_total{{{d},outcome="failure"}}"#)
        ),
        2.0
    );
    assert_eq!(
        line(
            &text,
            &format!(r#"palisade_breaker_slow_calls_total{{{d},outcome="success"}}"#)
        ),
        1.0
    );
    assert_eq!(
        line(
            &text,
            &format!(r#"palisade_breaker_not_permitted_calls_total{{{d}}}"#)
        ),
        3.0
    );
    assert_eq!(
        line(
            &text,
            &format!(r#"palisade_breaker_state{{{d},state="open"}}"#)
        ),
        1.0
    );
    assert_eq!(
        line(
            &text,
            &format!(r#"palisade_breaker_state{{{d},state="closed"}}"#)
        ),
        0.0
    );
    assert_eq!(
        line(
            &text,
            &format!(r#"palisade_breaker_transitions_total{{{d},from="closed",to="open"}}"#)
        ),
        1.0
    );
    assert!(
        line(
            &text,
            &format!(r#"palisade_breaker_last_transition_timestamp_seconds{{{d}}}"#)
        ) > 1.7e9
    );

    // The open wait ends: half-open without any call, then a probe closes it.
    tokio::time::advance(Duration::from_secs(10)).await;
    tokio::task::yield_now().await;
    let text = handle.render();
    assert_eq!(
        line(
            &text,
            &format!(r#"palisade_breaker_state{{{d},state="half_open"}}"#)
        ),
        1.0
    );
    for _ in 0..5 {
        svc.ready()
            .await
            .unwrap()
            .call((false, false))
            .await
            .unwrap();
    }
    let text = handle.render();
    assert_eq!(
        line(
            &text,
            &format!(r#"palisade_breaker_state{{{d},state="closed"}}"#)
        ),
        1.0
    );
    assert_eq!(
        line(
            &text,
            &format!(r#"palisade_breaker_state{{{d},state="half_open"}}"#)
        ),
        0.0
    );
    assert_eq!(
        line(
            &text,
            &format!(r#"palisade_breaker_transitions_total{{{d},from="half_open",to="closed"}}"#)
        ),
        1.0
    );

    // Dropping the breaker takes it out of the state gauge.
    drop(svc);
    drop(layer);
    let text = handle.render();
    assert_eq!(
        line(
            &text,
            &format!(r#"palisade_breaker_state{{{d},state="closed"}}"#)
        ),
        0.0
    );
}

#[test]
fn seconds_histograms_get_palisade_buckets() {
    let recorder = palisade::prometheus::builder().unwrap().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        metrics::histogram!("palisade_test_wait_seconds", "downstream" => "d").record(0.003);
    });
    let text = handle.render();
    assert!(
        text.contains(r#"palisade_test_wait_seconds_bucket{downstream="d",le="0.0025"} 0"#),
        "{text}"
    );
    assert!(
        text.contains(r#"palisade_test_wait_seconds_bucket{downstream="d",le="0.005"} 1"#),
        "{text}"
    );
}
