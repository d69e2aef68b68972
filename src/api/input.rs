//! Reading the string to shout from a request: JSON or form, with a precise reason on failure.
//!
//! Decisions on edge cases, each tested below:
//!
//! - A UTF-8 byte order mark at the start of a body is skipped (RFC 8259 lets a parser ignore
//!   it; some Windows tools send one).
//! - A `charset` parameter on the request's content type must be `utf-8` (or `us-ascii`, a
//!   subset); any other (`latin1`, ...) is a 400 naming it, rather than a silent misreading.
//! - Duplicate JSON keys: the last `data` wins, as in the original (Python's `json`).
//! - Duplicate form fields: the first `data` wins, as in the original (Werkzeug's
//!   `request.form["data"]`).
//! - Invalid percent-encoding in a form: a `%` not followed by two hex digits stays literal
//!   (as browsers and Werkzeug do); a value that is not UTF-8 once decoded (`%FF`) is a 400,
//!   not a string with U+FFFD in it, so a client never gets an answer for text it did not send.
//!
//! `ShoutInput` is a poem-openapi extractor rather than `Json<T>`/`Form<T>` so that it can (1)
//! document both content types with one schema, (2) name exactly what was wrong in the 400's
//! `detail`, (3) enforce the body limit while reading, whether or not `Content-Length` is sent,
//! and (4) keep a client of the original service working: its README's example sends a JSON
//! body under curl's default form content type, which the original accepted.

use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions, Object};

use crate::api::error::ApiError;

/// The request body: the string to reverse and capitalize.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct ShoutRequest {
    /// The string to reverse and capitalize. Any Unicode; may be empty. As a form field, send
    /// `data=<string>`. Other JSON fields are ignored.
    pub data: String,
}

impl poem_openapi::types::Example for ShoutRequest {
    fn example() -> Self {
        Self {
            data: "test".to_string(),
        }
    }
}

/// The body limits in force, set on the route as request data.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body in bytes (413 beyond).
    pub max_bytes: usize,
    /// Longest time to read the body (408 beyond).
    pub read_timeout: std::time::Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024,
            read_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// The `data` string read from a request.
#[derive(Debug)]
pub struct ShoutInput(pub String);

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// Longest piece of a client's header quoted back in a 400's detail.
const QUOTE_MAX: usize = 64;

/// `text` cut at [`QUOTE_MAX`] characters, for quoting client input back in a detail.
fn quote(text: &str) -> String {
    let mut quoted: String = text.chars().take(QUOTE_MAX).collect();
    if quoted.len() < text.len() {
        quoted.push('…');
    }
    quoted
}

/// The kind of body a `Content-Type` announces.
#[derive(Debug, PartialEq, Eq)]
enum BodyKind {
    Json,
    Form,
    Missing,
    Other(String),
    /// A supported type with a charset other than UTF-8.
    Charset(String),
}

fn body_kind(content_type: Option<&str>) -> BodyKind {
    let Some(value) = content_type else {
        return BodyKind::Missing;
    };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let kind =
        if essence == JSON || (essence.starts_with("application/") && essence.ends_with("+json")) {
            BodyKind::Json
        } else if essence == FORM {
            BodyKind::Form
        } else {
            return BodyKind::Other(quote(value));
        };
    for parameter in parts {
        let Some((name, charset)) = parameter.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("charset") {
            let charset = charset.trim().trim_matches('"');
            let utf8 = ["utf-8", "utf8", "us-ascii"]
                .iter()
                .any(|ok| charset.eq_ignore_ascii_case(ok));
            if !utf8 {
                return BodyKind::Charset(quote(charset));
            }
        }
    }
    kind
}

fn unparseable(detail: impl Into<String>) -> ApiError {
    ApiError::Unparseable(detail.into())
}

/// The shape of a valid JSON body, for the fast path: one allocation, unknown fields skipped.
#[derive(serde::Deserialize)]
struct JsonInput {
    data: String,
}

/// The `data` string of a JSON body. Valid bodies take the typed fast path; anything else is
/// parsed again as a `Value` to say precisely what is wrong.
fn from_json(text: &str) -> Result<String, ApiError> {
    if let Ok(input) = serde_json::from_str::<JsonInput>(text) {
        return Ok(input.data);
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| unparseable(format!("the body is not valid JSON: {e}")))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(unparseable(format!(
            "the JSON body must be an object, not {}",
            json_kind(&value)
        )));
    };
    match object.remove("data") {
        Some(serde_json::Value::String(data)) => Ok(data),
        Some(other) => Err(unparseable(format!(
            "field `data` must be a string, not {}",
            json_kind(&other)
        ))),
        None => Err(unparseable("field `data` is missing from the JSON object")),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The first `data` field of a form, decoded strictly: `None` when there is none, an error when
/// its value is not UTF-8 once percent-decoded.
fn form_data(text: &str) -> Option<Result<String, ApiError>> {
    let pair = text.split('&').find(|pair| {
        let key = pair.split('=').next().unwrap_or_default().replace('+', " ");
        percent_encoding::percent_decode_str(&key).decode_utf8_lossy() == "data"
    })?;
    let value = pair.split_once('=').map_or("", |(_, value)| value);
    let value = value.replace('+', " ");
    Some(
        percent_encoding::percent_decode_str(&value)
            .decode_utf8()
            .map(|decoded| decoded.into_owned())
            .map_err(|_| unparseable("form field `data` is not UTF-8 once percent-decoded")),
    )
}

/// The `data` field of a form body, or of a JSON body sent under the form content type.
fn from_form(text: &str) -> Result<String, ApiError> {
    // The original service's README sends `{"data": ...}` with curl's default form type. A
    // body that is such a JSON object is read as JSON first: read as a form, a string holding
    // `&data=` would smuggle in a field of its own.
    let looks_like_json = text.trim_start().starts_with('{');
    if looks_like_json && let Ok(data) = from_json(text) {
        return Ok(data);
    }
    if let Some(data) = form_data(text) {
        return data;
    }
    if looks_like_json {
        return from_json(text);
    }
    Err(unparseable("form field `data` is missing"))
}

/// Reads `data` from `body` as its content type says.
pub fn parse_body(content_type: Option<&str>, body: &[u8]) -> Result<String, ApiError> {
    let parse: fn(&str) -> Result<String, ApiError> = match body_kind(content_type) {
        BodyKind::Json => from_json,
        BodyKind::Form => from_form,
        BodyKind::Missing => from_untyped,
        BodyKind::Other(other) => {
            return Err(unparseable(format!(
                "content type `{other}` is not supported; send {JSON} or {FORM}"
            )));
        }
        BodyKind::Charset(charset) => {
            return Err(unparseable(format!(
                "charset `{charset}` is not supported; send UTF-8"
            )));
        }
    };
    if body.is_empty() {
        return Err(unparseable("the request body is empty"));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| unparseable(format!("the body is not UTF-8: {e}")))?;
    parse(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// A body without a content type is read as JSON.
fn from_untyped(text: &str) -> Result<String, ApiError> {
    from_json(text).map_err(|e| {
        unparseable(format!(
            "no content type was sent and the body is not JSON with a string `data` ({e})"
        ))
    })
}

async fn read_body(request: &Request, body: &mut RequestBody) -> Result<bytes::Bytes, ApiError> {
    let limits = request
        .data::<crate::api::ApiContext>()
        .map(|c| c.limits)
        .unwrap_or_default();
    let limit = limits.max_bytes;
    let too_large = ApiError::TooLarge { limit };
    if let Some(length) = request.header(poem::http::header::CONTENT_LENGTH) {
        if length.trim().parse::<u64>().is_ok_and(|n| n > limit as u64) {
            return Err(too_large);
        }
    }
    let body = body
        .take()
        .map_err(|e| ApiError::Internal(format!("request body taken twice: {e}")))?;
    match tokio::time::timeout(limits.read_timeout, body.into_bytes_limit(limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(poem::error::ReadBodyError::PayloadTooLarge)) => Err(too_large),
        Ok(Err(e)) => Err(unparseable(format!("the body could not be read: {e}"))),
        Err(_) => Err(ApiError::Other(
            poem::http::StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body was not received within {:?}",
                limits.read_timeout
            ),
        )),
    }
}

impl<'a> ApiExtractor<'a> for ShoutInput {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        ShoutRequest::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        let schema: MetaSchemaRef = ShoutRequest::schema_ref();
        Some(MetaRequest {
            description: Some("The string to reverse and capitalize, as JSON or as a form field."),
            content: vec![
                MetaMediaType {
                    content_type: JSON,
                    schema: schema.clone(),
                },
                MetaMediaType {
                    content_type: FORM,
                    schema,
                },
            ],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _options: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let bytes = read_body(request, body).await?;
        Ok(ShoutInput(parse_body(request.content_type(), &bytes)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(result: Result<String, ApiError>) -> String {
        match result {
            Err(ApiError::Unparseable(detail)) => detail,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn reads_json_and_ignores_other_fields() {
        assert_eq!(
            parse_body(Some(JSON), br#"{"data":"test","x":1}"#).ok(),
            Some("test".into())
        );
    }

    #[test]
    fn reads_form_fields_with_percent_encoding() {
        assert_eq!(
            parse_body(Some(FORM), b"x=1&data=h%C3%A9llo+w").ok(),
            Some("héllo w".into())
        );
    }

    #[test]
    fn json_sent_as_form_is_read_as_json_even_when_its_string_looks_like_a_form() {
        let body = br#"{"data": "rock&data=roll"}"#;
        assert_eq!(
            parse_body(Some(FORM), body).ok(),
            Some("rock&data=roll".into())
        );
    }

    #[test]
    fn accepts_json_sent_as_form_like_the_original_readme_does() {
        assert_eq!(
            parse_body(Some(FORM), br#"{"data": "test"}"#).ok(),
            Some("test".into())
        );
    }

    #[test]
    fn names_each_cause() {
        assert!(detail(parse_body(Some(JSON), br#"{"x":1}"#)).contains("missing"));
        assert!(detail(parse_body(Some(JSON), br#"{"data":5}"#)).contains("a number"));
        assert!(detail(parse_body(Some(JSON), br#"{"data":"#)).contains("not valid JSON"));
        assert!(detail(parse_body(Some(JSON), b"[1]")).contains("an array"));
        assert!(detail(parse_body(Some("text/plain"), b"data=x")).contains("text/plain"));
        assert!(detail(parse_body(Some(JSON), b"\xff\xfe")).contains("UTF-8"));
        assert!(detail(parse_body(Some(JSON), b"")).contains("empty"));
        assert!(
            detail(parse_body(Some(FORM), b"other=1")).contains("form field `data` is missing")
        );
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped() {
        assert_eq!(
            parse_body(Some(JSON), "\u{feff}{\"data\":\"bom\"}".as_bytes()).ok(),
            Some("bom".into())
        );
        assert_eq!(
            parse_body(Some(FORM), "\u{feff}data=bom".as_bytes()).ok(),
            Some("bom".into())
        );
    }

    #[test]
    fn a_charset_other_than_utf8_is_refused_by_name() {
        let latin1 = detail(parse_body(
            Some("application/json; charset=latin1"),
            br#"{"data":"x"}"#,
        ));
        assert!(latin1.contains("charset `latin1`"), "{latin1}");
        for ok in [
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/json; charset=us-ascii",
        ] {
            assert_eq!(
                parse_body(Some(ok), br#"{"data":"x"}"#).ok(),
                Some("x".into()),
                "{ok}"
            );
        }
    }

    #[test]
    fn the_last_duplicate_json_key_wins_like_the_original() {
        assert_eq!(
            parse_body(Some(JSON), br#"{"data":"first","data":"last"}"#).ok(),
            Some("last".into())
        );
    }

    #[test]
    fn the_first_duplicate_form_field_wins_like_the_original() {
        assert_eq!(
            parse_body(Some(FORM), b"data=first&data=last").ok(),
            Some("first".into())
        );
    }

    #[test]
    fn percent_decoding_that_is_not_utf8_is_refused_and_a_lone_percent_is_literal() {
        let invalid = detail(parse_body(Some(FORM), b"data=%FF"));
        assert!(invalid.contains("not UTF-8"), "{invalid}");
        assert_eq!(
            parse_body(Some(FORM), b"data=100%25+%zz").ok(),
            Some("100% %zz".into())
        );
    }

    #[test]
    fn a_long_content_type_is_quoted_back_cut() {
        let long = format!("text/{}", "x".repeat(1000));
        let detail = detail(parse_body(Some(&long), b"data=x"));
        assert!(detail.len() < 300, "{}", detail.len());
    }

    #[test]
    fn content_type_parameters_and_json_suffixes_are_understood() {
        assert_eq!(
            body_kind(Some("application/json; charset=utf-8")),
            BodyKind::Json
        );
        assert_eq!(body_kind(Some("application/vnd.api+json")), BodyKind::Json);
        assert_eq!(
            body_kind(Some("Application/X-WWW-Form-Urlencoded")),
            BodyKind::Form
        );
    }
}
