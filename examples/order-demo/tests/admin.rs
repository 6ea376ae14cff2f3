//! The admin API and the stores' idempotency, on a real all-in-one system.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use order_demo::faults::ADMIN_TOKEN_HEADER;
use order_demo::runner::Profile;
use order_demo::stack::{self, Mode};
use order_demo::store::{self, Db, Reserve};
use order_demo::system::System;

async fn put(addr: SocketAddr, token: Option<&str>, body: &str) -> (u16, String) {
    let mut req = http::Request::put(format!("http://{addr}/admin/faults"));
    if let Some(t) = token {
        req = req.header(ADMIN_TOKEN_HEADER, t);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a valid request");
    let res = stack::http_client().request(req).await.expect("an answer");
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.expect("a body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token_and_names_a_bad_field() {
    let config = Profile::test().system_config(Mode::Palisade, 1);
    let token = config.admin_token.clone();
    let system = System::start(config).await.expect("the system starts");
    let inventory = system.servers("inventory")[0].addr();

    let (status, _) = put(
        inventory,
        None,
        r#"{"error": {"percent": 100, "status": 503}}"#,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = put(
        inventory,
        Some("wrong"),
        r#"{"error": {"percent": 100, "status": 503}}"#,
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = put(inventory, Some(&token), r#"{"error": {"percent": 120}}"#).await;
    assert_eq!(status, 400);
    assert!(body.contains("error.percent"), "{body}");
    let (status, body) = put(inventory, Some(&token), r#"{"eror": {}}"#).await;
    assert_eq!(status, 400);
    assert!(body.contains("unknown field"), "{body}");

    // A valid config takes effect on that replica only.
    let (status, _) = put(
        inventory,
        Some(&token),
        r#"{"error": {"percent": 100, "status": 503}}"#,
    )
    .await;
    assert_eq!(status, 200);
    let req = stack::post_json(
        "/stock/reserve",
        &serde_json::json!({"order_id": "x", "sku": 1, "qty": 1}),
        "x:stock",
    )
    .expect("a request");
    let mut req = req;
    *req.uri_mut() = format!("http://{inventory}/stock/reserve")
        .parse()
        .expect("a uri");
    let res = stack::http_client().request(req).await.expect("an answer");
    assert_eq!(res.status(), 503);
    assert!(system.faults("inventory", 0).is_some_and(|f| f.is_active()));
    assert!(
        system
            .faults("inventory", 1)
            .is_some_and(|f| !f.is_active())
    );

    // A negative hold would credit the balance it is taken from: refused, naming
    // the field, and nothing is held.
    let hold = |path: &str, addr: SocketAddr, body: serde_json::Value| {
        let mut req = stack::post_json(path, &body, "neg").expect("a request");
        *req.uri_mut() = format!("http://{addr}{path}").parse().expect("a uri");
        req
    };
    let customer = system.servers("customer")[0].addr();
    let inventory_ok = system.servers("inventory")[1].addr();
    for (path, addr, body, field) in [
        (
            "/credit/reserve",
            customer,
            serde_json::json!({"order_id": "neg-1", "customer_id": 1, "amount": i64::MIN}),
            "amount",
        ),
        (
            "/stock/reserve",
            inventory_ok,
            serde_json::json!({"order_id": "neg-2", "sku": 1, "qty": -1}),
            "qty",
        ),
    ] {
        let res = stack::http_client()
            .request(hold(path, addr, body))
            .await
            .expect("an answer");
        assert_eq!(res.status(), 422, "{path}");
        let body = res.into_body().collect().await.expect("a body").to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.starts_with(&format!("{field}: -")), "{body}");
    }
    system.shutdown();
}

#[test]
fn holds_are_idempotent_and_a_release_first_leaves_a_tombstone() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let db = Db::open(&dir.path().join("t.db"), store::HOLDS_SCHEMA).expect("the store opens");
    store::seed_balance(&db, 1, 100).expect("seeded");

    assert_eq!(
        store::reserve(&db, "a", 1, 30, true).expect("reserve"),
        Reserve::Held
    );
    assert_eq!(
        store::reserve(&db, "a", 1, 30, true).expect("retry"),
        Reserve::Held
    );
    assert_eq!(store::total_balance(&db).expect("balance"), 70);
    store::release(&db, "a", true).expect("release");
    store::release(&db, "a", true).expect("release again");
    assert_eq!(store::total_balance(&db).expect("balance"), 100);

    // A release that overtakes its reserve: the late reserve is refused.
    store::release(&db, "b", true).expect("release first");
    assert_eq!(
        store::reserve(&db, "b", 1, 30, true).expect("late reserve"),
        Reserve::AlreadyReleased
    );
    assert_eq!(store::total_balance(&db).expect("balance"), 100);
    assert_eq!(
        store::reserve(&db, "c", 1, 101, true).expect("too much"),
        Reserve::Insufficient
    );
    assert_eq!(
        store::reserve(&db, "d", 9, 1, true).expect("unknown"),
        Reserve::UnknownKey
    );
    assert_eq!(store::total_held(&db).expect("held"), 0);

    // Reopening finds everything committed.
    drop(db);
    let db = Db::open(&dir.path().join("t.db"), store::HOLDS_SCHEMA).expect("reopens");
    assert_eq!(store::total_balance(&db).expect("balance"), 100);
}
