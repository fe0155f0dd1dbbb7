//! `cutover demo`: two built-in versions of a tiny app behind the proxy, so a
//! newcomer sees sticky weighted routing, beta cookies and live weight
//! changes in one minute.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::config;
use crate::proxy::Shared;
use crate::routing::{Version, cookies, hash};
use crate::server::{self, Inherited, Source};

/// The demo's working directory (admin socket).
pub fn demo_dir() -> PathBuf {
    std::env::temp_dir().join("cutover-demo")
}

/// The demo's route and its two pools, shared by the single and fleet demos.
pub(crate) fn routes_section(stable: SocketAddr, canary: SocketAddr, weight: f64) -> String {
    format!(
        r#"
[[routes]]
name = "web"
stable = "app-v1"
canary = "app-v2"
weight = {weight}

[pools.app-v1]
backends = ["{stable}"]

[pools.app-v2]
backends = ["{canary}"]
"#
    )
}

fn demo_config(listen: SocketAddr, stable: SocketAddr, canary: SocketAddr, weight: f64, metrics: SocketAddr) -> String {
    let admin = demo_dir().join("admin.sock");
    format!(
        r#"
[server]
listen = ["{listen}"]
workers = 1
drain_timeout = "2s"

[beta]
enroll_path = "/.cutover/beta"

[admin]
listen = "unix:{admin}"

[metrics]
listen = "{metrics}"

[log]
access = "off"
"#,
        admin = admin.display()
    ) + &routes_section(stable, canary, weight)
}

/// Serves one demo app version on an ephemeral port.
pub(crate) async fn app(
    version: Version,
    shared: Arc<std::sync::OnceLock<Arc<Shared>>>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let page = page(version, addr, &req, shared.get());
                    async move {
                        let mut resp = Response::new(Full::new(Bytes::from(page)));
                        resp.headers_mut().insert(
                            header::CONTENT_TYPE,
                            header::HeaderValue::from_static("text/plain; charset=utf-8"),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(addr)
}

/// A demo page. Its first line is the version's name; the page never names
/// the other version.
fn page(version: Version, addr: SocketAddr, req: &Request<Incoming>, shared: Option<&Arc<Shared>>) -> String {
    let found = cookies::find(req.headers(), "cutover_id", "cutover_beta");
    let (weight, halted) = shared
        .map(|s| {
            let snap = s.snapshot.load();
            snap.rules.routes.first().map_or((0.0, false), |r| (r.weight.percent(), r.halted))
        })
        .unwrap_or((0.0, false));
    let number = match version {
        Version::Stable => "1",
        Version::Canary => "2",
    };
    let mut out = format!("{}\n\nHello from version {number} of the demo app ({addr}).\n", version.as_str());
    match found.user.and_then(|k| std::str::from_utf8(k).ok()) {
        Some(key) => {
            let bucket = hash::bucket("web", key.as_bytes());
            out.push_str(&format!("Your user key (cookie cutover_id): {key}\n"));
            out.push_str(&format!(
                "Your bucket on route \"web\": {bucket} of 0..9999. Buckets below weight x 100 get version 2.\n"
            ));
        }
        None => out.push_str(
            "First visit: the proxy just set your cutover_id cookie. Send it back (curl -b/-c) to see your bucket.\n",
        ),
    }
    if let Some(beta) = found.beta {
        out.push_str(&format!("Beta cookie: cutover_beta={}\n", String::from_utf8_lossy(beta)));
    }
    out.push_str(&format!("Route weight now: {weight}%{}\n", if halted { " (rolled back: halted)" } else { "" }));
    if let Some(v) = req.headers().get("x-cutover-version").and_then(|v| v.to_str().ok()) {
        out.push_str(&format!("X-Cutover-Version sent by the proxy: {v}\n"));
    }
    out
}

/// Runs the demo until Ctrl-C. `listen` is the proxy address.
pub fn run(listen: SocketAddr, weight: f64) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cutover demo: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        let shared = Arc::new(std::sync::OnceLock::new());
        let (stable, canary) =
            match (app(Version::Stable, shared.clone()).await, app(Version::Canary, shared.clone()).await) {
                (Ok(s), Ok(c)) => (s, c),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("cutover demo: cannot start the demo apps: {e}");
                    return 1;
                }
            };
        let metrics_addr = std::net::TcpListener::bind("127.0.0.1:9464")
            .map(|_| SocketAddr::from(([127, 0, 0, 1], 9464)))
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let text = demo_config(listen, stable, canary, weight, metrics_addr);
        let config = match config::parse(&text, "demo config", &demo_dir()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cutover demo: {e}");
                return 1;
            }
        };
        let running = match tokio::task::spawn_blocking(move || {
            server::start(Source::Embedded(Box::new(config)), Inherited::default(), None)
        })
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                eprintln!("cutover demo: {e}");
                if matches!(e, server::StartError::Bind { .. }) {
                    eprintln!(
                        "(is another demo or program using {listen}? try `cutover demo --listen 127.0.0.1:8081`)"
                    );
                }
                return 1;
            }
            Err(e) => {
                eprintln!("cutover demo: {e}");
                return 1;
            }
        };
        let _ = shared.set(running.shared.clone());
        print!("{}", guide(&running, stable, canary, weight));
        let _ = tokio::signal::ctrl_c().await;
        println!("\nstopping the demo");
        let _ = tokio::task::spawn_blocking(move || running.shutdown()).await;
        0
    })
}

fn guide(running: &server::Running, stable: SocketAddr, canary: SocketAddr, weight: f64) -> String {
    let proxy = running.proxy_addrs.first().copied().unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let admin = match &running.admin {
        Some(server::AdminAddress::Unix(p)) => format!("unix:{}", p.display()),
        Some(server::AdminAddress::Tcp(a)) => a.to_string(),
        None => "-".into(),
    };
    let metrics = running.metrics_addr.map_or("-".to_string(), |a| format!("http://{a}/metrics"));
    let ctl = format!("cargo run --release -- ctl --admin {admin}");
    format!(
        r#"
cutover demo: two versions of an app behind one proxy
  proxy       http://{proxy}   route "web": stable = app-v1, canary = app-v2, weight {weight}%
  version 1   http://{stable}   (pool app-v1)
  version 2   http://{canary}   (pool app-v2)
  admin       {admin}
  metrics     {metrics}

Every visitor gets a random key in the cutover_id cookie and a bucket from it
(0..9999 per route). Buckets below weight x 100 see the canary, so a user's
version stays put until the weight moves past their bucket.

1. A new visitor each time (no cookie): about {weight}% land on the canary.
     for i in $(seq 100); do curl -s http://{proxy}/ | head -1; done | sort | uniq -c
2. Keep your cookie: same version on every request.
     curl -s -c /tmp/cutover-jar -b /tmp/cutover-jar http://{proxy}/
3. Be a beta tester: always the canary, even at weight 0.
     curl -s -b cutover_beta=always http://{proxy}/ | head -1
     (a browser can join at http://{proxy}/.cutover/beta?join and leave with ?leave)
4. Move the weight from another terminal (users only move forward):
     {ctl} weight web 50
     {ctl} status
     {ctl} rollback web        # everyone back on stable at once, beta testers too
     {ctl} promote web         # everyone on the canary
     {ctl} rollout web --steps 25,50,100 --interval 20s
     {ctl} events --follow
5. Watch and steer it in the browser (the split, rollout steps, live charts,
   the event stream; move the weight with the slider):
     {ctl} dashboard
   then open the http://127.0.0.1:3100/?token=... address it prints.

Press Ctrl-C to stop.
"#
    )
}
