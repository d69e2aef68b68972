//! Clients of the service: a well-behaved HTTP one that checks every answer against the
//! crate's own transform, and raw TCP ones for hostile-client checks (bytes with pauses, then
//! watch when the server closes).

use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use shout_proxy::shout::transform::{reverse_graphemes, shout_locally};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The canonical answer, from the crate.
pub fn expected(input: &str) -> String {
    shout_locally(&reverse_graphemes(input))
}

/// What one request got.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub correct: bool,
    /// `X-Shout-Source`, empty when absent.
    pub source: String,
    pub latency_ms: f64,
    /// Why it was not correct (bounded), empty when it was.
    pub error: String,
}

/// Sends shouts over a keep-alive pool.
#[derive(Clone)]
pub struct Shouter {
    http: reqwest::Client,
    url: String,
}

impl Shouter {
    pub fn new(url: &str) -> Result<Shouter> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(Shouter { http, url: url.trim_end_matches('/').to_owned() })
    }

    /// Request `i` for `text`: JSON or form by parity, over `/`, `/v1`, `/v1/` in turn.
    pub async fn shout(&self, i: usize, text: &str) -> Outcome {
        let path = ["/", "/v1", "/v1/"][i % 3];
        let request = self.http.post(format!("{}{path}", self.url));
        let request = match i % 2 {
            0 => request.json(&serde_json::json!({"data": text})),
            _ => request.form(&[("data", text)]),
        };
        let started = Instant::now();
        let answer = async {
            let response = request.send().await?;
            let source = response.headers().get("x-shout-source").and_then(|v| v.to_str().ok()).unwrap_or("");
            anyhow::Ok((response.status().as_u16(), source.to_owned(), response.bytes().await?))
        };
        let answer = answer.await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let right =
            |body: &[u8]| serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v["data"] == expected(text));
        let (correct, source, error) = match answer {
            Ok((200, source, body)) if right(&body) => (true, source, String::new()),
            Ok((status, source, body)) => {
                (false, source, format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(120)])))
            }
            Err(e) => (false, String::new(), e.to_string()),
        };
        Outcome { correct, source, latency_ms, error }
    }

    /// Requests one after another, one starting at most every `pace` (request n for `{tag} #n`),
    /// until `done` says so of the outcomes so far (checked after each).
    pub async fn paced(&self, tag: &str, pace: Duration, mut done: impl FnMut(&[Outcome]) -> bool) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        // `done` is asked after each answer and again before the next request starts, so a stop
        // that depends on time never lets one more request out.
        while outcomes.is_empty() || !done(&outcomes) {
            let next = tokio::time::sleep(pace);
            outcomes.push(self.shout(outcomes.len(), &format!("{tag} #{}", outcomes.len())).await);
            if done(&outcomes) {
                break;
            }
            next.await;
        }
        outcomes
    }

    /// Every text once, `concurrency` at a time (request `i` for `texts[i]`), in completion order.
    pub async fn all(&self, texts: &[String], concurrency: usize) -> Vec<Outcome> {
        let calls = texts.iter().enumerate().map(|(i, t)| self.shout(i, t));
        futures_util::stream::iter(calls).buffer_unordered(concurrency).collect().await
    }
}

/// Nearest-rank percentile (`q` in 0..=1) of unsorted values; NaN when empty.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
}

/// A raw TCP connection for hostile-client checks.
pub struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    /// Connects to `url` (`http://HOST:PORT`) and writes `first`.
    pub async fn open(url: &str, first: &[u8]) -> Result<RawClient> {
        let mut stream = TcpStream::connect(url.trim_start_matches("http://")).await?;
        stream.write_all(first).await?;
        Ok(RawClient { stream })
    }

    /// Writes `byte` `times` times, `pause` before each. A write error means the server closed.
    pub async fn trickle(&mut self, byte: u8, times: usize, pause: Duration) -> std::io::Result<()> {
        for _ in 0..times {
            tokio::time::sleep(pause).await;
            self.stream.write_all(&[byte]).await?;
        }
        Ok(())
    }

    /// Waits up to `within` for the server to close (EOF or reset), keeping (up to 64 KiB of)
    /// whatever it sends first. `Some(bytes sent)` when it closed, `None` when still open.
    pub async fn closed_within(&mut self, within: Duration) -> Option<Vec<u8>> {
        let (mut read, mut first_64_kib) = (Vec::new(), (&mut self.stream).take(65536));
        match tokio::time::timeout(within, first_64_kib.read_to_end(&mut read)).await {
            Ok(Ok(..65536) | Err(_)) => Some(read), // EOF or a reset: closed
            _ => None,                              // still open at the deadline, or 64 KiB and still sending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_answers_come_from_the_crate() {
        assert_eq!(expected("test"), "TSET");
        assert_eq!(expected("straße"), "ESSARTS");
        assert_eq!(expected("e\u{301}x"), "XE\u{301}");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
