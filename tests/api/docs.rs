//! The OpenAPI document and the Swagger UI.

use crate::helpers::spawn_app;

const COMMITTED: &str = "openapi/openapi.json";

#[tokio::test]
async fn the_committed_openapi_document_matches_the_served_one() {
    let app = spawn_app().await;

    let served = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // `SHOUT_UPDATE_OPENAPI=1 cargo test openapi` rewrites the committed document.
    if std::env::var_os("SHOUT_UPDATE_OPENAPI").is_some() {
        std::fs::create_dir_all("openapi").unwrap();
        std::fs::write(COMMITTED, format!("{served}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(COMMITTED).expect("openapi/openapi.json is committed");
    assert_eq!(
        committed.trim_end(),
        served.trim_end(),
        "the served OpenAPI document changed: run `SHOUT_UPDATE_OPENAPI=1 cargo test openapi` and commit it"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_errors_examples_and_the_source_header() {
    let app = spawn_app().await;

    let doc: serde_json::Value = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let shout = &doc["paths"]["/"]["post"];
    for status in ["200", "400", "413"] {
        assert!(
            shout["responses"][status]["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{status}"
        );
    }
    assert!(shout["responses"]["200"]["headers"]["X-SHOUT-SOURCE"].is_object());
    let content = &shout["requestBody"]["content"];
    assert!(
        content["application/json"].is_object()
            && content["application/x-www-form-urlencoded"].is_object()
    );
    for schema in ["ShoutRequest", "ShoutResponse", "ErrorBody"] {
        let schema = &doc["components"]["schemas"][schema];
        assert!(schema["example"].is_object(), "{schema}");
        for (_, property) in schema["properties"].as_object().unwrap() {
            assert!(property["description"].is_string(), "{property}");
        }
    }
}

#[tokio::test]
async fn docs_serve_the_swagger_ui_and_yaml() {
    let app = spawn_app().await;

    let ui = app
        .client
        .get(format!("{}/docs", app.address))
        .send()
        .await
        .unwrap();
    let yaml = app
        .client
        .get(format!("{}/openapi.yaml", app.address))
        .send()
        .await
        .unwrap();

    assert_eq!(ui.status(), 200);
    assert!(ui.text().await.unwrap().contains("swagger-ui"));
    assert_eq!(yaml.status(), 200);
    assert!(yaml.text().await.unwrap().contains("openapi:"));
}
