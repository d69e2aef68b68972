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
