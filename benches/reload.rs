//! The control plane's cost of one reload of a 1,001-route config: read,
//! parse and validate the file, carry live weights over, write the state
//! file, build and publish the routing snapshot. The control thread does
//! this beside the workers; on a proxy given one core it shares that core,
//! so this is also the longest a reload can hold a worker off the CPU.
//! Target: a reload of a 1000-route config under 50 ms (issue #8); the
//! figure here is CPU time on the control thread, without `ctl`'s process.
//!
//! `cargo bench --bench reload`

use std::fmt::Write as _;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use cutover::control::{self, Actor};
use cutover::metrics::Metrics;

const ROUTES: usize = 1000;

fn config_text(dir: &Path, first_weight: u32) -> String {
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[state]\npath = \"{}\"\n\n[log]\naccess = \"off\"\n\n",
        dir.join("state.json").display()
    );
    for i in 1..=ROUTES {
        let weight = if i == 1 { first_weight } else { 5 };
        write!(
            text,
            "[[routes]]\nname = \"r{i}\"\nhost = \"r{i}.example.com\"\nstable = \"stable\"\ncanary = \"canary\"\nweight = {weight}\n\n"
        )
        .unwrap();
    }
    text.push_str("[[routes]]\nname = \"web\"\nstable = \"stable\"\ncanary = \"canary\"\nweight = 5\n\n");
    text.push_str(
        "[pools.stable]\nbackends = [\"127.0.0.1:9001\"]\n\n[pools.canary]\nbackends = [\"127.0.0.1:9002\"]\n",
    );
    text
}

fn reload(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("cutover.toml");
    let texts: Vec<String> = (0..2).map(|w| config_text(dir.path(), 5 + w)).collect();
    std::fs::write(&path, &texts[0]).unwrap();
    let config = cutover::config::parse(&texts[0], "cutover.toml", dir.path()).expect("the bench config is valid");
    assert_eq!(config.routes.len(), ROUTES + 1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = runtime.enter();
    let prepared = control::prepare(control::Start {
        config,
        config_path: Some(path.clone()),
        config_text: Some(texts[0].clone()),
        metrics: Metrics::new(),
        access_log: None,
    })
    .expect("the control plane starts");
    let handle = prepared.control.handle();
    runtime.spawn(prepared.control.run(prepared.commands, prepared.signals));

    let mut n = 0;
    c.bench_function("reload/1001_routes (one weight changed)", |b| {
        b.iter(|| {
            // A real change each time, so every reload builds a new snapshot.
            n += 1;
            std::fs::write(&path, &texts[n % 2]).unwrap();
            let status = runtime.block_on(handle.reload(Actor::Unix)).expect("the reload succeeds");
            assert!(status.changed);
        })
    });
}

criterion_group!(benches, reload);
criterion_main!(benches);
