//! A real etcd for the fleet tests: started on free ports with a temporary
//! data dir, stopped (killed) on drop. A missing `etcd` binary fails the
//! test with a clear message: nothing is skipped silently.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn etcd_binary() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("the fleet tests need the `etcd` binary (Debian: apt-get install etcd-server); .ci/run installs it")
    })
}

/// One etcd member.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
    dir: PathBuf,
    /// The `--initial-cluster` value, for a restart.
    cluster: String,
    /// TLS on the client port (server cert, key, CA for client certs);
    /// health is then read on a plain metrics port.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    metrics_port: u16,
}

impl Member {
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Starts the member again on its data dir (after [`Member::kill`]).
    pub fn restart(&mut self) {
        let cluster = self.cluster.clone();
        self.spawn(&cluster, "existing");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.healthy() {
            assert!(Instant::now() < deadline, "etcd member {} not healthy after a restart", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn(&mut self, cluster: &str, state: &str) {
        self.cluster = cluster.to_string();
        let log = std::fs::File::create(self.dir.join(format!("{}.log", self.name))).unwrap();
        let child = Command::new(etcd_binary())
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.join(&self.name))
            .args(["--listen-client-urls", &self.url(), "--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", self.peer_port)])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{}", self.peer_port)])
            .args(["--initial-cluster", cluster, "--initial-cluster-state", state])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{}", self.metrics_port)])
            .args(match &self.tls {
                Some((cert, key, ca)) => vec![
                    "--cert-file".to_string(),
                    cert.display().to_string(),
                    "--key-file".to_string(),
                    key.display().to_string(),
                    "--client-cert-auth".to_string(),
                    "--trusted-ca-file".to_string(),
                    ca.display().to_string(),
                ],
                None => Vec::new(),
            })
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    fn signal(&self, name: &str) {
        let Some(child) = &self.child else { return };
        let status = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Freezes the member (an outage that keeps its sockets open).
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the member answers `GET /health` with a healthy cluster.
    pub fn healthy(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An etcd cluster of one or more members on loopback.
pub struct Etcd {
    pub members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// One member, ready.
    pub fn start() -> Etcd {
        Self::cluster(1)
    }

    /// `size` members, ready (every member reports a healthy cluster).
    pub fn cluster(size: usize) -> Etcd {
        Self::cluster_with(size, None)
    }

    /// One member serving its clients over TLS only, requiring a client
    /// certificate from `ca`: (server cert, server key, CA) PEM files.
    pub fn start_tls(cert: PathBuf, key: PathBuf, ca: PathBuf) -> Etcd {
        Self::cluster_with(1, Some((cert, key, ca)))
    }

    fn cluster_with(size: usize, tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let mut members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
                dir: dir.path().to_path_buf(),
                cluster: String::new(),
                tls: tls.clone(),
                metrics_port: free_port(),
            })
            .collect();
        let cluster: Vec<String> =
            members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)).collect();
        let cluster = cluster.join(",");
        for m in &mut members {
            m.spawn(&cluster, "new");
        }
        let etcd = Etcd { members, _dir: dir };
        etcd.wait_healthy(Duration::from_secs(30));
        etcd
    }

    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for m in &self.members {
            while !m.healthy() {
                assert!(Instant::now() < deadline, "etcd member {} not healthy in time:\n{}", m.name, self.log(m));
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn log(&self, m: &Member) -> String {
        std::fs::read_to_string(m.dir.join(format!("{}.log", m.name))).unwrap_or_default()
    }

    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(Member::url).collect()
    }

    /// A `[fleet]` section for replica `name` under `prefix`.
    pub fn fleet_section(&self, prefix: &str, name: &str, lease: &str) -> String {
        fleet_section(&self.urls(), prefix, name, lease)
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

/// A `[fleet]` section for replica `name` under `prefix` that reaches etcd at `urls`.
pub fn fleet_section(urls: &[String], prefix: &str, name: &str, lease: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!("[fleet]\netcd = [{}]\nprefix = {prefix:?}\nname = {name:?}\nlease = {lease:?}\n", urls.join(", "))
}
