//! Spawning the real app against a fake upstream, and small request helpers.

use std::time::Duration;

use serde_json::{Value, json};
use shout_proxy::{Application, Settings};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// A running app and its fake upstream.
pub struct TestApp {
    /// `http://127.0.0.1:PORT` of the public listener.
    pub address: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin_address: String,
    /// The fake shoutcloud.
    pub upstream: MockServer,
    /// A client for the app.
    pub client: reqwest::Client,
    /// Sends the stop signal.
    pub stop: Option<oneshot::Sender<()>>,
    /// The app's run task.
    pub running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// An answer as a client sees it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub source: Option<String>,
    pub content_type: Option<String>,
    pub body: Value,
}

impl Answer {
    pub fn data(&self) -> &str {
        self.body["data"]
            .as_str()
            .unwrap_or_else(|| panic!("no data in {:?}", self.body))
    }

    pub fn source(&self) -> &str {
        self.source.as_deref().expect("X-Shout-Source header")
    }
}

/// Settings for tests: both listeners on port 0, upstream at `upstream`, short drain.
pub fn test_settings(upstream: &MockServer) -> Settings {
    let mut settings = Settings::defaults();
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.admin_listen = "127.0.0.1:0".parse().unwrap();
    settings.upstream_url = format!("{}/V1/SHOUT", upstream.uri());
    settings.drain_ms = 0;
    settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let upstream = MockServer::start().await;
    let mut settings = test_settings(&upstream);
    tweak(&mut settings);
    spawn_with_settings(upstream, settings).await
}

pub async fn spawn_with_settings(upstream: MockServer, settings: Settings) -> TestApp {
    shout_proxy::install_tls_provider();
    let app = Application::build(settings).await.expect("the app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let admin_address = format!("http://127.0.0.1:{}", app.admin_port());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        admin_address,
        upstream,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        stop: Some(stop),
        running,
    }
}

/// A shoutcloud answer: `OUTPUT` is the uppercase of `INPUT`.
pub fn shoutcloud(request: &Request) -> ResponseTemplate {
    let body: Value = serde_json::from_slice(&request.body).expect("the app sends JSON");
    let input = body["INPUT"]
        .as_str()
        .expect("INPUT is a string")
        .to_string();
    ResponseTemplate::new(200)
        .set_body_json(json!({"INPUT": input, "OUTPUT": input.to_uppercase()}))
}

/// A shoutcloud that answers correctly after `delay_ms`.
pub fn slow_shoutcloud(delay_ms: u64) -> impl Fn(&Request) -> ResponseTemplate {
    move |request| shoutcloud(request).set_delay(Duration::from_millis(delay_ms))
}

/// A matcher for calls to the shout endpoint.
pub fn shout_call() -> wiremock::MockBuilder {
    Mock::given(method("POST")).and(path("/V1/SHOUT"))
}

impl TestApp {
    pub async fn healthy_upstream(&self) {
        shout_call()
            .respond_with(shoutcloud)
            .mount(&self.upstream)
            .await;
    }

    /// A correct shoutcloud that must be called exactly `calls` times: wiremock checks the
    /// count when the app (and its upstream) is dropped, so a call too many or too few fails.
    pub async fn healthy_upstream_expecting(&self, calls: u64) {
        shout_call()
            .respond_with(shoutcloud)
            .expect(calls)
            .mount(&self.upstream)
            .await;
    }

    async fn answer(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let source = header("x-shout-source");
        let content_type = header("content-type");
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            source,
            content_type,
            body,
        }
    }

    pub async fn post(
        &self,
        route: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let mut request = self
            .client
            .post(format!("{}{route}", self.address))
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        Self::answer(request.send().await.expect("the app answers")).await
    }

    /// `POST /` with `body` as it is, under `content_type`.
    pub async fn post_root(&self, content_type: &str, body: impl Into<reqwest::Body>) -> Answer {
        self.post("/", Some(content_type), body).await
    }

    /// `POST /` with `{"data": data}`.
    pub async fn shout(&self, data: &str) -> Answer {
        self.post(
            "/",
            Some("application/json"),
            json!({ "data": data }).to_string(),
        )
        .await
    }

    pub async fn get(&self, url: &str) -> Answer {
        Self::answer(self.client.get(url).send().await.expect("the app answers")).await
    }

    pub async fn status(&self) -> Value {
        self.get(&format!("{}/status", self.admin_address))
            .await
            .body
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin_address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Upstream calls received so far.
    pub async fn upstream_calls(&self) -> usize {
        self.upstream
            .received_requests()
            .await
            .map_or(0, |r| r.len())
    }
}

/// A raw TCP connection to a listener's `http://127.0.0.1:PORT`, for tests that write HTTP/1
/// by hand (split heads, trickled bytes, framing a client library would not send).
pub async fn raw_connection(address: &str) -> TcpStream {
    let port: u16 = address
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {address}"));
    TcpStream::connect(("127.0.0.1", port)).await.unwrap()
}

/// The value of the sample `name{labels}` in a Prometheus scrape (0 when absent).
pub fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}
