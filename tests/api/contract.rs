//! The original service's API contract, tried from outside.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{raw_connection, spawn_app, spawn_app_with};

const ORIGINAL_MESSAGE: &str = "Data was not able to be parsed from request. Please try again.";

#[tokio::test]
async fn post_json_to_root_returns_the_reversed_capitalized_string_from_the_upstream() {
    let app = spawn_app().await;
    app.healthy_upstream().await;

    let answer = app.shout("test").await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.data(), "TSET");
    assert_eq!(answer.source(), "upstream");
    assert_eq!(answer.content_type.as_deref(), Some("application/json"));
}

#[tokio::test]
async fn all_three_paths_accept_json_and_form() {
    let app = spawn_app().await;
    app.healthy_upstream().await;

    for route in ["/", "/v1", "/v1/"] {
        let json = app
            .post(route, Some("application/json"), r#"{"data": "hello"}"#)
            .await;
        let form = app
            .post(
                route,
                Some("application/x-www-form-urlencoded"),
                "data=hello",
            )
            .await;

        for answer in [json, form] {
            assert_eq!(answer.status, 200, "{route}: {answer:?}");
            assert_eq!(answer.data(), "OLLEH", "{route}");
            assert!(
                answer.source.is_some(),
                "{route}: X-Shout-Source is missing"
            );
        }
    }
}

#[tokio::test]
async fn extra_json_fields_are_ignored() {
    let app = spawn_app().await;
    app.healthy_upstream().await;

    let answer = app
        .post_root("application/json", r#"{"data": "ab", "other": [1, 2]}"#)
        .await;

    assert_eq!((answer.status, answer.data()), (200, "BA"));
}

#[tokio::test]
async fn the_original_readme_curl_with_a_json_body_under_the_form_type_works() {
    // `curl -XPOST --data '{"data": "test"}' -H 'application/json'` sends curl's default
    // form content type, because the header it passes has no name.
    let app = spawn_app().await;
    app.healthy_upstream().await;

    let answer = app
        .post_root("application/x-www-form-urlencoded", r#"{"data": "test"}"#)
        .await;

    assert_eq!((answer.status, answer.data()), (200, "TSET"));
}

#[tokio::test]
async fn a_request_without_a_string_data_gets_400_with_the_original_message_and_a_detail() {
    let app = spawn_app().await;
    app.healthy_upstream().await;
    let cases: [(&str, Option<&str>, &[u8], &str); 8] = [
        (
            "missing field",
            Some("application/json"),
            br#"{"text": "x"}"#,
            "missing",
        ),
        (
            "data not a string",
            Some("application/json"),
            br#"{"data": 42}"#,
            "must be a string",
        ),
        (
            "data null",
            Some("application/json"),
            br#"{"data": null}"#,
            "must be a string",
        ),
        (
            "malformed JSON",
            Some("application/json"),
            br#"{"data": "#,
            "not valid JSON",
        ),
        (
            "not UTF-8",
            Some("application/json"),
            b"{\"data\": \"\xff\"}",
            "not UTF-8",
        ),
        (
            "other content type",
            Some("text/plain"),
            b"data=x",
            "text/plain",
        ),
        (
            "form without data",
            Some("application/x-www-form-urlencoded"),
            b"other=x",
            "form field",
        ),
        ("empty body", Some("application/json"), b"", "empty"),
    ];

    for (case, content_type, body, detail) in cases {
        let answer = app.post("/", content_type, body.to_vec()).await;

        assert_eq!(answer.status, 400, "{case}: {answer:?}");
        assert_eq!(answer.body["error"], ORIGINAL_MESSAGE, "{case}");
        let got = answer.body["detail"].as_str().unwrap_or_default();
        assert!(
            got.contains(detail),
            "{case}: detail {got:?} should mention {detail:?}"
        );
        assert_eq!(
            answer.content_type.as_deref(),
            Some("application/json"),
            "{case}"
        );
    }
    assert_eq!(
        app.upstream_calls().await,
        0,
        "bad requests never reach the upstream"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_gets_a_json_413() {
    let app = spawn_app_with(|s| s.max_body_bytes = 1024).await;
    app.healthy_upstream().await;
    let body = format!(r#"{{"data": "{}"}}"#, "a".repeat(2000));

    let answer = app.post_root("application/json", body).await;

    assert_eq!(answer.status, 413);
    assert!(
        answer.body["error"].as_str().unwrap().contains("1024"),
        "{answer:?}"
    );
    assert_eq!(app.shout("ok").await.status, 200, "the service keeps going");
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413_without_a_content_length() {
    let app = spawn_app_with(|s| s.max_body_bytes = 1024).await;
    let mut stream = raw_connection(&app.address).await;
    let chunk = "a".repeat(1500);
    let request = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );

    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();

    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains(r#""error""#), "{response}");
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_get_json_errors() {
    let app = spawn_app().await;

    let not_found = app
        .post("/nope", Some("application/json"), r#"{"data":"x"}"#)
        .await;
    let wrong_method = app.get(&format!("{}/v1", app.address)).await;

    assert_eq!(not_found.status, 404);
    assert!(not_found.body["error"].is_string(), "{not_found:?}");
    assert_eq!(wrong_method.status, 405);
    assert!(wrong_method.body["error"].is_string(), "{wrong_method:?}");
    let health = app
        .client
        .post(format!("{}/health", app.address))
        .send()
        .await
        .unwrap();
    let shout = app
        .client
        .get(format!("{}/", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.headers()["allow"], "GET");
    assert_eq!(shout.headers()["allow"], "POST");
}

#[tokio::test]
async fn health_answers_success_without_the_upstream() {
    let app = spawn_app().await;

    let answer = app.get(&format!("{}/health", app.address)).await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "success");
    assert_eq!(app.upstream_calls().await, 0);
}

#[tokio::test]
async fn admin_endpoints_are_not_on_the_public_port() {
    let app = spawn_app().await;

    for route in ["/metrics", "/status", "/livez", "/readyz"] {
        let answer = app.get(&format!("{}{route}", app.address)).await;
        assert_eq!(answer.status, 404, "{route} must not be public");
    }
}

#[tokio::test]
async fn every_json_answer_carries_exactly_application_json_whatever_its_status() {
    let app = spawn_app_with(|s| s.max_body_bytes = 64).await;
    app.healthy_upstream().await;
    let url = |path: &str| format!("{}{path}", app.address);
    let json = |body: &'static str| {
        app.client
            .post(url("/"))
            .header("content-type", "application/json")
            .body(body)
    };
    let requests = [
        (200, json(r#"{"data":"ok"}"#)),
        (400, json(r#"{"nodata":1}"#)),
        (
            413,
            json(r#"{"data":"this body is longer than sixty-four bytes, so it is refused"}"#),
        ),
        (404, app.client.get(url("/nope"))),
        (405, app.client.get(url("/v1"))),
        (405, app.client.delete(url("/"))),
    ];

    for (expected, request) in requests {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers().get("content-type").cloned();
        let body: serde_json::Value = response.json().await.unwrap();

        assert_eq!(status, expected, "{body}");
        assert_eq!(
            content_type.as_ref().map(|v| v.as_bytes()),
            Some(&b"application/json"[..]),
            "{expected}: {content_type:?}"
        );
    }
}

#[tokio::test]
async fn a_charset_other_than_utf8_and_invalid_percent_encoding_get_400s_naming_them() {
    let app = spawn_app().await;
    app.healthy_upstream().await;

    let latin1 = app
        .post_root("application/json; charset=latin1", r#"{"data":"x"}"#)
        .await;
    let invalid = app
        .post_root("application/x-www-form-urlencoded", "data=%FF")
        .await;
    let bom = app
        .post_root("application/json", "\u{feff}{\"data\":\"bom\"}")
        .await;

    assert_eq!(latin1.status, 400);
    assert!(
        latin1.body["detail"].as_str().unwrap().contains("latin1"),
        "{latin1:?}"
    );
    assert_eq!(invalid.status, 400);
    assert!(
        invalid.body["detail"].as_str().unwrap().contains("UTF-8"),
        "{invalid:?}"
    );
    assert_eq!((bom.status, bom.data()), (200, "MOB"));
}
