//! The floor under a proxy's CPU per request, in Rust: each client
//! connection relayed byte for byte to a connection of its own to one
//! backend, on one current-thread tokio runtime (as a cutover worker), with
//! no HTTP work at all. `benches/compare.sh` runs it as `relay-tokio`, beside
//! HAProxy relaying in `mode tcp` (`relay`).
//!
//! Two knobs add work per request, to see what a proxy's own work costs it
//! in the kernel as well as in user space (applied once per read from the
//! client, which is once per request on a keep-alive connection):
//! - `RELAY_WORK=n`: n rounds of arithmetic on registers (about 7
//!   instructions each), touching no memory;
//! - `RELAY_TOUCH=bytes`: that many bytes of a 4 MiB arena read and written,
//!   one cache line at a time, going on where the last request stopped.
//!
//! Usage: `relay LISTEN BACKEND`, e.g. `relay 127.0.0.1:8070 127.0.0.1:8081`.
//! Run with anything else (`cargo bench` runs every bench), it says so and
//! exits.

use std::cell::RefCell;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

const ARENA: usize = 4 << 20;
const LINE: usize = 64;

#[derive(Clone, Copy)]
struct Work {
    rounds: u64,
    touch: usize,
}

impl Work {
    fn from_env() -> Work {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Work { rounds: number("RELAY_WORK"), touch: number("RELAY_TOUCH") as usize }
    }

    fn spend(self) {
        let mut x = 1u64;
        for i in 0..self.rounds {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
        std::hint::black_box(x);
        if self.touch > 0 {
            touch(self.touch);
        }
    }
}

thread_local! {
    static ARENA_AT: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
}

fn touch(bytes: usize) {
    ARENA_AT.with_borrow_mut(|(arena, at)| {
        if arena.is_empty() {
            *arena = vec![1; ARENA];
        }
        let mut sum = 0u8;
        for _ in 0..bytes.div_ceil(LINE) {
            *at = (*at + LINE) % ARENA;
            sum = sum.wrapping_add(arena[*at]);
            arena[*at] = sum;
        }
        std::hint::black_box(sum);
    });
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, work: Option<Work>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(work) = work {
            work.spend();
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn relay(client: TcpStream, backend: SocketAddr, work: Work) {
    let Ok(server) = TcpStream::connect(backend).await else { return };
    for stream in [&client, &server] {
        let _ = stream.set_nodelay(true);
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::spawn(pump(server_read, client_write, None));
    pump(client_read, server_write, Some(work)).await;
}

async fn serve(listen: SocketAddr, backend: SocketAddr, work: Work) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(relay(client, backend, work));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addresses: Vec<SocketAddr> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let [listen, backend] = addresses[..] else {
        println!("relay: a floor for benches/compare.sh, not a measurement; usage: relay LISTEN BACKEND");
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let outcome = runtime.and_then(|runtime| runtime.block_on(serve(listen, backend, Work::from_env())));
    if let Err(error) = outcome {
        eprintln!("relay: {error}");
        std::process::exit(1);
    }
}
