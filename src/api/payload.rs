//! [`JsonBody`]: poem-openapi's `Json` payload with the content type the original service's
//! clients expect.
//!
//! poem-openapi sends and documents JSON as `application/json; charset=utf-8`; the original's
//! clients compare `Content-Type` to `application/json` exactly, and JSON is UTF-8 by definition
//! (RFC 8259), so the parameter says nothing. This payload sends and documents the bare type.
//! (`api::observe` also rewrites any JSON content type that poem produces on its own.)

use poem::{IntoResponse, Response};
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ToJSON, Type};

/// The content type of every JSON answer.
pub const JSON: &str = "application/json";

/// A JSON response body sent as `Content-Type: application/json`.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = JSON;

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: ToJSON> IntoResponse for JsonBody<T> {
    fn into_response(self) -> Response {
        let body = self.0.to_json_string();
        Response::builder().content_type(JSON).body(body)
    }
}
