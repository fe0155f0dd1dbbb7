//! The command line. Everything it does lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use cutover::ctl;

#[derive(Parser)]
#[command(
    name = "cutover",
    version,
    about = "A reverse proxy for canary releases: sticky weighted routing, beta cookies, progressive rollouts."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file.
    Run {
        #[arg(short, long, default_value = "/etc/cutover/cutover.toml")]
        config: PathBuf,
    },
    /// Validate a config file (exit 1 with the error).
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Two built-in app versions behind the proxy, with a guide.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Canary weight at start, in percent.
        #[arg(long, default_value_t = 20.0)]
        weight: f64,
        /// Three replicas sharing one live state in a local etcd (needs the etcd binary).
        #[arg(long)]
        fleet: bool,
    },
    /// Talk to a running cutover's admin API.
    Ctl(CtlArgs),
    /// Beta cookie tools.
    Beta {
        #[command(subcommand)]
        command: BetaCommand,
    },
}

#[derive(Args)]
struct CtlArgs {
    /// Read the admin address and token file from this config.
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// Admin address: unix:/path/admin.sock or host:port.
    #[arg(long, global = true)]
    admin: Option<String>,
    /// File holding the bearer token for a TCP admin listener.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Weights, rollout progress, pool health.
    Status { route: Option<String> },
    /// Set the canary weight (percent, two decimals).
    Weight { route: String, percent: f64 },
    /// Weight 100 (ends a rollout).
    Promote { route: String },
    /// Weight 0 and halt: everyone on stable, beta testers too.
    Rollback { route: String },
    /// Start a progressive rollout.
    Rollout {
        route: String,
        /// Weights in percent, increasing, e.g. 5,25,50,100.
        #[arg(long, value_delimiter = ',', required = true)]
        steps: Vec<f64>,
        /// How long each step is held before it is judged, e.g. 10m.
        #[arg(long)]
        interval: String,
        /// Roll back when the canary's error rate exceeds this fraction (default 0.01).
        #[arg(long)]
        max_error_rate: Option<f64>,
        /// Roll back when the canary's p99 latency exceeds this, e.g. 800ms.
        #[arg(long)]
        max_p99: Option<String>,
        /// Canary requests needed to judge a step (default 100).
        #[arg(long)]
        min_requests: Option<u64>,
    },
    /// Pause a running rollout.
    Pause { route: String },
    /// Resume a paused rollout.
    Resume { route: String },
    /// Abort a rollout, keeping the current weight.
    Abort { route: String },
    /// Re-read the config file now.
    Reload,
    /// The audit log.
    Events {
        #[arg(long)]
        follow: bool,
    },
    /// Zero-downtime binary upgrade (same as SIGUSR2).
    Upgrade,
    /// Fleet mode: replicas, config hashes, connection to etcd, rollout drivers.
    Fleet,
    /// Serve a web page that shows the release live and acts on it.
    Dashboard {
        /// Where the page listens; it prints its URL with an access token.
        #[arg(long, default_value = "127.0.0.1:3100")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum BetaCommand {
    /// Print a signed beta cookie value.
    Mint {
        #[arg(long)]
        secret_file: PathBuf,
        /// always or never
        choice: String,
        /// How long the value is valid.
        #[arg(long, default_value = "30d")]
        ttl: String,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CUTOVER_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run { config } => {
            init_logging();
            cutover::lifecycle::run(&config)
        }
        Command::Check { config } => check(&config),
        Command::Demo { listen, weight, fleet } => {
            init_logging();
            if fleet { cutover::demo_fleet::run(listen, weight) } else { cutover::demo::run(listen, weight) }
        }
        Command::Ctl(args) => run_ctl(args),
        Command::Beta { command: BetaCommand::Mint { secret_file, choice, ttl } } => mint(&secret_file, &choice, &ttl),
    };
    ExitCode::from(code as u8)
}

fn check(path: &std::path::Path) -> i32 {
    match cutover::config::Config::load(path) {
        Ok(config) => {
            if let Some(tls) = &config.server.tls
                && let Err(e) = cutover::tls::check(tls)
            {
                eprintln!("{}: server.tls: {e}", path.display());
                return 1;
            }
            println!(
                "{}: ok ({} routes, {} pools, hash {})",
                path.display(),
                config.routes.len(),
                config.pools.len(),
                config.fingerprint()
            );
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn run_ctl(args: CtlArgs) -> i32 {
    let target = match ctl::target(args.admin.as_deref(), args.config.as_deref(), args.token_file.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cutover ctl: {e}");
            return e.exit_code();
        }
    };
    let command = match args.command {
        CtlCommand::Dashboard { listen } => return cutover::dashboard::run(target, listen),
        CtlCommand::Status { route } => ctl::Command::Status { route },
        CtlCommand::Weight { route, percent } => ctl::Command::Weight { route, percent },
        CtlCommand::Promote { route } => ctl::Command::Promote { route },
        CtlCommand::Rollback { route } => ctl::Command::Rollback { route },
        CtlCommand::Rollout { route, steps, interval, max_error_rate, max_p99, min_requests } => {
            ctl::Command::Rollout { route, steps, interval, max_error_rate, max_p99, min_requests }
        }
        CtlCommand::Pause { route } => ctl::Command::Pause { route },
        CtlCommand::Resume { route } => ctl::Command::Resume { route },
        CtlCommand::Abort { route } => ctl::Command::Abort { route },
        CtlCommand::Reload => ctl::Command::Reload,
        CtlCommand::Events { follow } => ctl::Command::Events { follow },
        CtlCommand::Upgrade => ctl::Command::Upgrade,
        CtlCommand::Fleet => ctl::Command::Fleet,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cutover ctl: {e}");
            return 2;
        }
    };
    match runtime.block_on(ctl::run(&target, command, args.json)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cutover ctl: {e}");
            e.exit_code()
        }
    }
}

fn mint(secret_file: &std::path::Path, choice: &str, ttl: &str) -> i32 {
    let Some(choice) = cutover::routing::beta::BetaChoice::parse(choice) else {
        eprintln!("cutover beta mint: choice must be \"always\" or \"never\"");
        return 1;
    };
    let ttl = match humantime::parse_duration(ttl) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cutover beta mint: --ttl {ttl:?}: {e}");
            return 1;
        }
    };
    let secret = match std::fs::read(secret_file) {
        Ok(mut bytes) => {
            while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
                bytes.pop();
            }
            bytes
        }
        Err(e) => {
            eprintln!("cutover beta mint: cannot read {}: {e}", secret_file.display());
            return 1;
        }
    };
    if secret.len() < 16 {
        eprintln!("cutover beta mint: the secret in {} is shorter than 16 bytes", secret_file.display());
        return 1;
    }
    let expires =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) + ttl.as_secs();
    println!("{}", cutover::routing::beta::mint(&secret, choice, expires));
    0
}
