//! The benchmark's ceiling: the work every answer needs and nothing else.
//!
//! `POST / {"data": s}` -> `{"data": uppercase(reverse_graphemes(s))}`, on poem with tokio's
//! default multi-threaded runtime, exactly like shout-proxy but without its pipeline (cache,
//! breaker, upstream), metrics, tracing or OpenAPI layer. `bench-reference [ADDR]` listens on
//! ADDR (default 127.0.0.1:18090).

use poem::http::StatusCode;
use poem::listener::TcpListener;
use poem::web::Json;
use poem::{Route, Server, handler, post};
use serde_json::{Value, json};
use unicode_segmentation::UnicodeSegmentation;

#[handler]
fn shout(Json(body): Json<Value>) -> poem::Result<Json<Value>> {
    let Some(data) = body.get("data").and_then(Value::as_str) else {
        return Err(poem::Error::from_string(
            "Data was not able to be parsed from request. Please try again.",
            StatusCode::BAD_REQUEST,
        ));
    };
    let mut reversed = String::with_capacity(data.len());
    for grapheme in data.graphemes(true).rev() {
        reversed.push_str(grapheme);
    }
    Ok(Json(json!({ "data": reversed.to_uppercase() })))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18090".to_string());
    eprintln!("bench-reference listening on {addr}");
    Server::new(TcpListener::bind(addr))
        .run(Route::new().at("/", post(shout)))
        .await
}
