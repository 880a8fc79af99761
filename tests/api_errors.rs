//! Bad input gets a clear 4xx with a machine-readable body, and nothing is written.

use anyhow::Result;
use keel_tests::{Api, DevCluster};
use serde_json::{json, Value};

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_4xx_errors() -> Result<()> {
    let dev = DevCluster::up("apierrors", 3, "10.77.3.0/24", 18445)?;
    let api = dev.client(&dev.info.endpoint).await?;
    let anon = Api::new(&dev.info.endpoint, &dev.info.ca_cert)?;

    // Authentication.
    let a = anon.call("GET", "/api/v1/settings", None).await?;
    assert_eq!(
        (a.status, code(&a.body)),
        (401, "unauthenticated"),
        "{}",
        a.body
    );
    let mut forged = anon.clone();
    forged.token = Some("eyJzdWIiOiJhZG1pbiJ9.AAAA".into());
    let a = forged.call("GET", "/api/v1/settings", None).await?;
    assert_eq!(a.status, 401, "{}", a.body);
    let health = anon.call("GET", "/api/v1/health", None).await?;
    assert_eq!(health.status, 200);
    assert_eq!(health.body["phase"], "member");

    // Settings: bad key, bad JSON, unknown field, wrong type, null, missing body.
    // `keel dev up` writes its own settings first; none of the bad requests may add to them.
    let before = api.call("GET", "/api/v1/settings", None).await?;
    assert_eq!(before.status, 200, "{}", before.body);
    type Case<'a> = (&'a str, Option<&'a str>, u16, &'a str, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "/api/v1/settings/Not%20A%20Key",
            Some(r#"{"value":1}"#),
            400,
            "invalid_field",
            Some("key"),
        ),
        (
            "/api/v1/settings/ok.key",
            Some("{not json"),
            400,
            "bad_request",
            None,
        ),
        (
            "/api/v1/settings/ok.key",
            Some(r#"{"value":1,"colour":"red"}"#),
            400,
            "bad_request",
            None,
        ),
        (
            "/api/v1/settings/ok.key",
            Some(r#"{"value":1,"version":"seven"}"#),
            400,
            "bad_request",
            Some("version"),
        ),
        (
            "/api/v1/settings/ok.key",
            Some(r#"{"value":null}"#),
            400,
            "invalid_field",
            Some("value"),
        ),
        ("/api/v1/settings/ok.key", None, 400, "bad_request", None),
    ];
    for (path, body, status, want_code, field) in cases {
        let a = api.raw("PUT", path, body.map(str::to_string), &[]).await?;
        assert_eq!(a.status, status, "{path} {body:?}: {}", a.body);
        assert_eq!(code(&a.body), want_code, "{path} {body:?}: {}", a.body);
        assert!(!a.body["error"]["message"].as_str().unwrap_or("").is_empty());
        if let Some(f) = field {
            assert_eq!(a.body["error"]["field"], f, "{path} {body:?}: {}", a.body);
        }
    }
    // Nothing was written by any of them.
    let list = api.call("GET", "/api/v1/settings", None).await?;
    assert_eq!(list.body["items"], before.body["items"], "{}", list.body);
    assert!(
        list.body["items"]
            .as_array()
            .is_some_and(|items| items.iter().all(|i| i["key"] != "ok.key")),
        "{}",
        list.body
    );

    // Version conflicts are 409; If-Match works too.
    let a = api.put_setting("cas.key", json!(1)).await?;
    assert_eq!(a.status, 200);
    let v = a.body["version"].as_u64().unwrap_or(0);
    let stale = api
        .call(
            "PUT",
            "/api/v1/settings/cas.key",
            Some(json!({"value": 2, "version": v + 5})),
        )
        .await?;
    assert_eq!(
        (stale.status, code(&stale.body)),
        (409, "version_conflict"),
        "{}",
        stale.body
    );
    let create_only = api
        .call(
            "PUT",
            "/api/v1/settings/cas.key",
            Some(json!({"value": 2, "version": 0})),
        )
        .await?;
    assert_eq!(create_only.status, 409);
    let if_match = api
        .raw(
            "PUT",
            "/api/v1/settings/cas.key",
            Some(r#"{"value":3}"#.into()),
            &[("if-match", &v.to_string())],
        )
        .await?;
    assert_eq!(if_match.status, 200, "{}", if_match.body);
    let bad_match = api
        .raw(
            "PUT",
            "/api/v1/settings/cas.key",
            Some(r#"{"value":3}"#.into()),
            &[("if-match", "x")],
        )
        .await?;
    assert_eq!(bad_match.status, 400);
    let del_stale = api
        .call(
            "DELETE",
            &format!("/api/v1/settings/cas.key?version={v}"),
            None,
        )
        .await?;
    assert_eq!(del_stale.status, 409, "{}", del_stale.body);
    let after = api.call("GET", "/api/v1/settings/cas.key", None).await?;
    assert_eq!(after.body["value"], json!(3));

    // Not found, unknown route, wrong method, bad query.
    let a = api
        .call("GET", "/api/v1/settings/missing.key", None)
        .await?;
    assert_eq!((a.status, code(&a.body)), (404, "not_found"));
    let a = api
        .call("DELETE", "/api/v1/settings/missing.key", None)
        .await?;
    assert_eq!(a.status, 404);
    let a = api.call("GET", "/api/v1/nodes/nosuchnode", None).await?;
    assert_eq!(a.status, 404);
    let a = api.call("GET", "/api/v1/nope", None).await?;
    assert_eq!((a.status, code(&a.body)), (404, "not_found"));
    let a = api.call("GET", "/api/v1/events?since=abc", None).await?;
    assert_eq!(a.status, 400, "{}", a.body);
    let a = api
        .raw(
            "POST",
            "/api/v1/cluster/remove",
            Some(r#"{"name":"Bad_Name"}"#.into()),
            &[],
        )
        .await?;
    assert_eq!(a.status, 400, "{}", a.body);
    let big = format!(r#"{{"value":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let a = api
        .raw("PUT", "/api/v1/settings/big.key", Some(big), &[])
        .await?;
    assert_eq!(a.status, 413, "{}", a.body);

    // A join with a forged proof is refused.
    let join = json!({"cluster": "dev", "name": "evil", "address": "10.77.3.99", "csr": "x", "nonce": "00", "proof": "00"});
    let a = anon
        .call("POST", "/api/v1/cluster/join", Some(join))
        .await?;
    assert_eq!(a.status, 403, "{}", a.body);

    // Login: wrong password is 401; repeated failures are rate-limited with Retry-After.
    let mut last = 0;
    let mut retry = None;
    for _ in 0..8 {
        let a = anon
            .call(
                "POST",
                "/api/v1/auth/login",
                Some(json!({"username": "admin", "password": "wrong-password"})),
            )
            .await?;
        last = a.status;
        retry = a.retry_after.clone();
        if a.status == 429 {
            break;
        }
        assert_eq!(a.status, 401, "{}", a.body);
    }
    assert_eq!(last, 429);
    assert!(retry.is_some(), "429 carries Retry-After");
    let a = anon
        .call(
            "POST",
            "/api/v1/auth/login",
            Some(json!({"username": "admin"})),
        )
        .await?;
    assert_eq!(a.status, 400, "{}", a.body);

    // Server-sent events replay the changes from a revision and carry the resource.
    let seen = api
        .events_until(
            "/api/v1/events?since=0",
            "cas.key",
            std::time::Duration::from_secs(10),
        )
        .await?;
    assert!(
        seen.replace("event: ", "event:").contains("event:change"),
        "{seen}"
    );
    assert!(seen.contains("\"op\":\"create\""), "{seen}");

    // The OpenAPI document is served.
    let doc = anon.call("GET", "/api/v1/openapi.json", None).await?;
    assert_eq!(doc.status, 200);
    assert!(doc.body["paths"]["/api/v1/settings/{key}"].is_object());
    Ok(())
}
