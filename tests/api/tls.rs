//! An `https://` upstream: a local TLS fake shoutcloud whose certificate is signed by a test CA
//! that only `--upstream-ca-file` makes trusted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use wiremock::MockServer;

use crate::helpers::{spawn_with_settings, test_settings};

/// A TLS shoutcloud on loopback, and the PEM of the CA that signed its certificate.
struct TlsShoutcloud {
    address: SocketAddr,
    ca_pem: String,
    /// Requests that completed the TLS handshake and were answered.
    answered: Arc<AtomicUsize>,
}

async fn spawn_tls_shoutcloud() -> TlsShoutcloud {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();

    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let counter = counter.clone();
                    async move {
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let input = body["INPUT"].as_str().unwrap().to_string();
                        let answer =
                            serde_json::json!({"INPUT": input, "OUTPUT": input.to_uppercase()});
                        counter.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                            answer.to_string(),
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    TlsShoutcloud {
        address,
        ca_pem: ca.pem(),
        answered,
    }
}

fn write_pem(name: &str, pem: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("shout-proxy-{}-{name}.pem", std::process::id()));
    std::fs::write(&path, pem).unwrap();
    path
}

#[tokio::test]
async fn an_https_upstream_trusted_through_the_ca_file_answers() {
    let fake = spawn_tls_shoutcloud().await;
    let ca_file = write_pem("trusted-ca", &fake.ca_pem);
    let unused = MockServer::start().await;
    let mut settings = test_settings(&unused);
    settings.upstream_url = format!("https://{}/V1/SHOUT", fake.address);
    settings.upstream_ca_file = Some(ca_file);
    let app = spawn_with_settings(unused, settings).await;

    let answer = app.shout("tls").await;

    assert_eq!((answer.data(), answer.source()), ("SLT", "upstream"));
    assert_eq!(fake.answered.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_https_upstream_with_an_untrusted_certificate_is_never_used() {
    let fake = spawn_tls_shoutcloud().await;
    let unused = MockServer::start().await;
    let mut settings = test_settings(&unused);
    settings.upstream_url = format!("https://{}/V1/SHOUT", fake.address);
    let app = spawn_with_settings(unused, settings).await;

    let answer = app.shout("tls").await;

    assert_eq!((answer.data(), answer.source()), ("SLT", "fallback"));
    assert_eq!(fake.answered.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_ca_file_without_a_certificate_is_refused_at_start_by_flag_name() {
    let unused = MockServer::start().await;
    let mut settings = test_settings(&unused);
    settings.upstream_ca_file = Some(write_pem("empty", "not a certificate\n"));

    let error = settings.validate().unwrap_err().to_string();

    assert!(error.contains("--upstream-ca-file"), "{error}");
}
