//! Keep-alive to backends: sequential requests through the proxy reuse one
//! upstream connection instead of opening one per request.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use common::{Client, Proxy, full, two_pool_config};

/// A backend answering with a Content-Length body; counts the connections it accepted.
async fn counting_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    let mut resp = Response::new(full("stable\n"));
                    *resp.status_mut() = StatusCode::OK;
                    Ok::<_, Infallible>(resp)
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_upstream_connection() {
    let (stable, accepted) = counting_backend().await;
    let (canary, _) = counting_backend().await;
    let proxy = Proxy::start(&two_pool_config(stable, canary, 0.0, ""));
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..20 {
        let got = client.get("/", &[("cookie", "cutover_id=user-1")]).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body, "stable\n");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "upstream connections opened for 20 sequential requests");
}
