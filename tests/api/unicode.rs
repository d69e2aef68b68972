//! Unicode: graphemes stay whole, full case mapping, the empty string.

use crate::helpers::spawn_app;

#[tokio::test]
async fn combining_accents_flags_and_zwj_emoji_stay_whole() {
    let app = spawn_app().await;
    app.healthy_upstream().await;

    let answer = app.shout("e\u{301}t🇫🇷👩‍👩‍👦").await;

    assert_eq!(answer.data(), "👩‍👩‍👦🇫🇷TE\u{301}");
}

#[tokio::test]
async fn sharp_s_becomes_double_s_with_or_without_the_upstream() {
    let app = spawn_app().await;

    let fallback = app.shout("straße").await;
    app.healthy_upstream().await;
    let upstream = app.shout("maße").await;

    assert_eq!(
        (fallback.data(), fallback.source()),
        ("ESSARTS", "fallback")
    );
    assert_eq!((upstream.data(), upstream.source()), ("ESSAM", "upstream"));
}

#[tokio::test]
async fn the_empty_string_is_valid() {
    let app = spawn_app().await;
    app.healthy_upstream().await;

    let answer = app.shout("").await;

    assert_eq!((answer.status, answer.data()), (200, ""));
}

#[tokio::test]
async fn form_fields_are_percent_decoded() {
    let app = spawn_app().await;
    app.healthy_upstream().await;

    let answer = app
        .post(
            "/",
            Some("application/x-www-form-urlencoded"),
            "data=%C3%A9t%C3%A9+x",
        )
        .await;

    assert_eq!(answer.data(), "X ÉTÉ");
}

/// An upstream with other case tables: each character of `INPUT` mapped by `map`.
fn mapping_shoutcloud(
    map: fn(char) -> String,
) -> impl Fn(&wiremock::Request) -> wiremock::ResponseTemplate {
    move |request| {
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        let input = body["INPUT"].as_str().unwrap();
        let output: String = input.chars().map(map).collect();
        wiremock::ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"INPUT": input, "OUTPUT": output}))
    }
}

#[tokio::test]
async fn look_alikes_from_the_upstream_never_reach_a_client_or_the_cache() {
    for (input, expected, map) in [
        // U+212A KELVIN SIGN for K.
        (
            "kayak link",
            "KNIL KAYAK",
            (|c: char| match c {
                'k' => "\u{212A}".to_string(),
                c => c.to_uppercase().collect(),
            }) as fn(char) -> String,
        ),
        // U+1E9E for ß, where we give SS.
        ("straße", "ESSARTS", |c: char| match c {
            'ß' => "\u{1E9E}".to_string(),
            c => c.to_uppercase().collect(),
        }),
        // U+0264 left as is, where we give U+A7CB.
        ("\u{264}x", "X\u{A7CB}", |c: char| match c {
            '\u{264}' => c.to_string(),
            c => c.to_uppercase().collect(),
        }),
    ] {
        let app = spawn_app().await;
        crate::helpers::shout_call()
            .respond_with(mapping_shoutcloud(map))
            .expect(2)
            .mount(&app.upstream)
            .await;

        let first = app.shout(input).await;
        let again = app.shout(input).await;

        for answer in [&first, &again] {
            assert_eq!(
                (answer.data(), answer.source()),
                (expected, "fallback"),
                "{input}"
            );
        }
        let scrape = app.metrics().await;
        assert_eq!(
            crate::helpers::sample(&scrape, "shout_upstream_disagreements_total"),
            2.0,
            "{input}"
        );
        assert_eq!(crate::helpers::sample(&scrape, "shout_cache_entries"), 0.0);
    }
}
