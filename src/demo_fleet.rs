//! `cutover demo --fleet`: a local etcd and three replicas sharing one live
//! state, so a newcomer sees a change on one replica in force on all three.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config;
use crate::demo::{app, demo_dir, routes_section};
use crate::routing::Version;
use crate::server::{self, Inherited, Running, Source};

const NAMES: [&str; 3] = ["proxy-a", "proxy-b", "proxy-c"];

fn find_etcd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("etcd")).find(|p| p.is_file())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A local single-member etcd, killed on drop.
struct LocalEtcd {
    child: Child,
    url: String,
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_etcd(binary: &Path, dir: &Path) -> Result<LocalEtcd, String> {
    let (client, peer) = (free_port().map_err(|e| e.to_string())?, free_port().map_err(|e| e.to_string())?);
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let data = dir.join("etcd-data");
    let _ = std::fs::remove_dir_all(&data);
    let log = std::fs::File::create(dir.join("etcd.log")).map_err(|e| e.to_string())?;
    let child = Command::new(binary)
        .args(["--name", "demo", "--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("demo={peer_url}")])
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let etcd = LocalEtcd { child, url };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !healthy(client) {
        if Instant::now() > deadline {
            return Err(format!("etcd did not become healthy; see {}", dir.join("etcd.log").display()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(etcd)
}

fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = String::new();
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.contains("\"health\":\"true\"")
}

fn replica_config(
    name: &str,
    listen: SocketAddr,
    stable: SocketAddr,
    canary: SocketAddr,
    weight: f64,
    etcd: &str,
) -> String {
    let dir = demo_dir();
    format!(
        r#"
[server]
listen = ["{listen}"]
workers = 1
drain_timeout = "2s"

[admin]
listen = "unix:{dir}/{name}.sock"

[state]
path = "{dir}/{name}.state.json"

[log]
access = "off"

[fleet]
etcd = ["{etcd}"]
prefix = "/cutover/demo"
name = "{name}"
lease = "2s"
"#,
        dir = dir.display()
    ) + &routes_section(stable, canary, weight)
}

/// Runs the fleet demo until Ctrl-C: replicas on `listen` and the next two ports.
pub fn run(listen: SocketAddr, weight: f64) -> i32 {
    let Some(binary) = find_etcd() else {
        eprintln!(
            "cutover demo --fleet needs the etcd binary (Debian/Ubuntu: apt-get install etcd-server);\n\
             without it, `cutover demo` shows a single replica"
        );
        return 1;
    };
    let dir = demo_dir();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cutover demo: cannot create {}: {e}", dir.display());
        return 1;
    }
    let etcd = match start_etcd(&binary, &dir) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cutover demo --fleet: {e}");
            return 1;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cutover demo: {e}");
            return 1;
        }
    };
    let etcd_url = etcd.url.clone();
    let code = runtime.block_on(async move {
        let shared = Arc::new(std::sync::OnceLock::new());
        let (Ok(stable), Ok(canary)) =
            (app(Version::Stable, shared.clone()).await, app(Version::Canary, shared.clone()).await)
        else {
            eprintln!("cutover demo: cannot start the demo apps");
            return 1;
        };
        let mut replicas: Vec<Running> = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let addr = SocketAddr::new(listen.ip(), listen.port().saturating_add(i as u16));
            let _ = std::fs::remove_file(dir.join(format!("{name}.state.json")));
            let text = replica_config(name, addr, stable, canary, weight, &etcd_url);
            let config = match config::parse(&text, "demo config", &dir) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("cutover demo: {e}");
                    return 1;
                }
            };
            match tokio::task::spawn_blocking(move || {
                server::start(Source::Embedded(Box::new(config)), Inherited::default(), None)
            })
            .await
            {
                Ok(Ok(r)) => replicas.push(r),
                Ok(Err(e)) => {
                    eprintln!(
                        "cutover demo: {name} on {addr}: {e} (try `cutover demo --fleet --listen 127.0.0.1:8181`)"
                    );
                    return 1;
                }
                Err(e) => {
                    eprintln!("cutover demo: {e}");
                    return 1;
                }
            }
        }
        let _ = shared.set(replicas[0].shared.clone());
        print!("{}", guide(&replicas, &etcd_url, weight));
        let _ = tokio::signal::ctrl_c().await;
        println!("\nstopping the fleet demo");
        for r in replicas {
            let _ = tokio::task::spawn_blocking(move || r.shutdown()).await;
        }
        0
    });
    drop(etcd);
    code
}

fn guide(replicas: &[Running], etcd: &str, weight: f64) -> String {
    let proxy = |i: usize| replicas[i].proxy_addrs.first().map_or("-".into(), |a| a.to_string());
    let admin = |i: usize| match &replicas[i].admin {
        Some(server::AdminAddress::Unix(p)) => format!("unix:{}", p.display()),
        Some(server::AdminAddress::Tcp(a)) => a.to_string(),
        None => "-".into(),
    };
    let ctl = |i: usize| format!("cargo run --release -- ctl --admin {}", admin(i));
    format!(
        r#"
cutover demo --fleet: three replicas of one front door share their live state in etcd
  etcd       {etcd}   (prefix /cutover/demo)
  proxy-a    http://{a}   admin {admin_a}
  proxy-b    http://{b}   admin {admin_b}
  proxy-c    http://{c}   admin {admin_c}
  route "web": stable = app-v1, canary = app-v2, weight {weight}%

1. One user, three replicas, one answer (the bucket hash needs no shared state):
     for p in {a} {b} {c}; do curl -s -b cutover_id=alice http://$p/ | head -1; done
2. Change the weight on proxy-a; it is in force on proxy-b and proxy-c at once:
     {ctl_a} weight web 100
     for p in {a} {b} {c}; do curl -s -b cutover_id=alice http://$p/ | head -1; done
3. Roll back from proxy-c: every replica halts.
     {ctl_c} rollback web
     {ctl_b} events
4. The fleet: replicas, config hashes, connection to etcd, rollout drivers.
   (Here the three configs differ by their ports and paths, so their hashes
   are flagged; in production every replica gets the same file.)
     {ctl_a} fleet
     {ctl_b} rollout web --steps 10,50,100 --interval 20s --min-requests 0
     {ctl_a} fleet          # one replica drives the rollout

Press Ctrl-C to stop (etcd and the replicas stop with the demo).
"#,
        a = proxy(0),
        b = proxy(1),
        c = proxy(2),
        admin_a = admin(0),
        admin_b = admin(1),
        admin_c = admin(2),
        ctl_a = ctl(0),
        ctl_b = ctl(1),
        ctl_c = ctl(2),
    )
}
