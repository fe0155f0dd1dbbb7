//! The control plane with tokio's paused clock: rollout steps, extensions,
//! automatic rollbacks, pause/resume, conflicts, and resuming after a restart.

use std::time::Duration;

use super::*;
use crate::config;
use crate::routing::Version;

const CONFIG: &str = r#"
[state]
path = "state.json"

[[routes]]
name = "web"
stable = "v1"
canary = "v2"
weight = 0

[pools.v1]
backends = ["127.0.0.1:1"]
[pools.v2]
backends = ["127.0.0.1:2"]
"#;

const INTERVAL: Duration = Duration::from_secs(600);

struct Harness {
    task: tokio::task::JoinHandle<()>,
    handle: Handle,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

fn start_in(dir: tempfile::TempDir) -> Harness {
    let config = config::parse(CONFIG, "test.toml", dir.path()).expect("valid config");
    let metrics = Metrics::new();
    let Prepared { control, shared, commands, signals } =
        prepare(Start { config, config_path: None, config_text: None, metrics: metrics.clone(), access_log: None })
            .expect("control starts");
    let handle = control.handle();
    let task = tokio::spawn(control.run(commands, signals));
    Harness { task, handle, shared, metrics, _dir: dir }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start() -> Harness {
    start_in(tempfile::tempdir().unwrap())
}

fn plan(steps: &[u16], min_requests: u64, max_p99: Option<Duration>) -> Plan {
    Plan { steps_bp: steps.to_vec(), interval: INTERVAL, max_error_rate: 0.01, max_p99, min_requests }
}

impl Harness {
    fn weight(&self) -> f64 {
        self.shared.snapshot.load().rules.routes[0].weight.percent()
    }

    fn halted(&self) -> bool {
        self.shared.snapshot.load().rules.routes[0].halted
    }

    /// Records `n` canary responses with `code` taking `seconds`, as the data plane would.
    fn canary_traffic(&self, n: usize, code: u16, seconds: f64) {
        let snap = self.shared.snapshot.load();
        let m = snap.routes[0].metrics.version(Version::Canary);
        for _ in 0..n {
            m.response(code, seconds);
        }
    }

    async fn route(&self) -> RouteStatus {
        self.handle.ask(|reply| Command::Route { route: "web".into(), reply }).await.unwrap()
    }

    async fn start_rollout(&self, plan: Plan) -> Result<RouteStatus, ControlError> {
        self.handle.ask(|reply| Command::StartRollout { route: "web".into(), plan, actor: Actor::Unix, reply }).await
    }

    async fn events(&self) -> Vec<events::Event> {
        let (tx, rx) = oneshot::channel();
        self.handle.send(Command::Events { since: 0, reply: tx });
        rx.await.unwrap().0
    }
}

/// Lets the paused clock run past the end of the current step.
async fn end_of_step() {
    tokio::time::sleep(INTERVAL + Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn healthy_rollout_advances_step_by_step_and_finishes_at_the_last_weight() {
    let h = start();
    h.start_rollout(plan(&[500, 2500, 10_000], 100, None)).await.unwrap();
    assert_eq!(h.weight(), 5.0);
    for expected in [25.0, 100.0] {
        h.canary_traffic(200, 200, 0.01);
        end_of_step().await;
        assert_eq!(h.weight(), expected);
    }
    assert!(h.route().await.rollout.is_some(), "the last step is held for its interval too");
    h.canary_traffic(200, 200, 0.01);
    end_of_step().await;
    let route = h.route().await;
    assert!(route.rollout.is_none());
    assert_eq!(route.weight, 100.0);
    assert_eq!(route.last_outcome.as_deref(), Some("completed at 100%"));
    let kinds: Vec<String> = h.events().await.into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["rollout_start", "rollout_step", "rollout_step", "rollout_complete"]);
}

#[tokio::test(start_paused = true)]
async fn too_little_canary_traffic_extends_the_step_and_says_so() {
    let h = start();
    h.start_rollout(plan(&[500, 10_000], 100, None)).await.unwrap();
    h.canary_traffic(99, 200, 0.01);
    end_of_step().await;
    let route = h.route().await;
    let rollout = route.rollout.expect("still running");
    assert_eq!((rollout.step, rollout.extensions, route.weight), (1, 1, 5.0));
    // The window keeps counting from the step's start: one more request suffices.
    h.canary_traffic(1, 200, 0.01);
    end_of_step().await;
    assert_eq!(h.weight(), 100.0);
}

#[tokio::test(start_paused = true)]
async fn error_rate_above_the_limit_rolls_back_by_itself() {
    let h = start();
    h.start_rollout(plan(&[500, 2500, 10_000], 100, None)).await.unwrap();
    h.canary_traffic(180, 200, 0.01);
    h.canary_traffic(20, 500, 0.01);
    end_of_step().await;
    assert_eq!((h.weight(), h.halted()), (0.0, true));
    let route = h.route().await;
    assert!(route.rollout.is_none());
    let outcome = route.last_outcome.unwrap();
    assert!(outcome.contains("10.00% (20 of 200)"), "{outcome}");
    let text = h.metrics.render();
    assert!(text.contains(r#"cutover_rollbacks_total{route="web",trigger="error_rate"} 1"#), "{text}");
    let rollback = h.events().await.into_iter().find(|e| e.kind == "rollback").expect("a rollback event");
    assert_eq!(rollback.actor, "rollout");
    assert!(rollback.detail.unwrap().contains("error rate"));
}

#[tokio::test(start_paused = true)]
async fn p99_above_the_limit_rolls_back_by_itself() {
    let h = start();
    h.start_rollout(plan(&[500, 10_000], 100, Some(Duration::from_millis(800)))).await.unwrap();
    h.canary_traffic(150, 200, 0.01);
    h.canary_traffic(50, 200, 2.0);
    end_of_step().await;
    assert_eq!((h.weight(), h.halted()), (0.0, true));
    let text = h.metrics.render();
    assert!(text.contains(r#"cutover_rollbacks_total{route="web",trigger="latency"} 1"#), "{text}");
}

#[tokio::test(start_paused = true)]
async fn pause_holds_the_step_and_resume_continues_with_the_time_left() {
    let h = start();
    h.start_rollout(plan(&[500, 10_000], 1, None)).await.unwrap();
    tokio::time::sleep(INTERVAL / 2).await;
    h.handle.ask(|reply| Command::PauseRollout { route: "web".into(), actor: Actor::Unix, reply }).await.unwrap();
    h.canary_traffic(10, 200, 0.01);
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(h.weight(), 5.0, "paused: no step");
    let left = h.route().await.rollout.unwrap().time_left_secs;
    assert_eq!(left, (INTERVAL / 2).as_secs_f64());
    h.handle.ask(|reply| Command::ResumeRollout { route: "web".into(), actor: Actor::Unix, reply }).await.unwrap();
    tokio::time::sleep(INTERVAL / 2 + Duration::from_millis(1)).await;
    assert_eq!(h.weight(), 100.0);
}

#[tokio::test(start_paused = true)]
async fn manual_weight_during_a_rollout_is_a_conflict_naming_it() {
    let h = start();
    h.start_rollout(plan(&[500, 10_000], 1, None)).await.unwrap();
    let err = h
        .handle
        .ask(|reply| Command::SetWeight { route: "web".into(), weight: Weight::FULL, actor: Actor::Unix, reply })
        .await
        .unwrap_err();
    let ControlError::Conflict(message) = err else { panic!("expected a conflict") };
    assert!(message.contains("rollout in progress (step 1 of 2)"), "{message}");
    assert!(matches!(h.start_rollout(plan(&[500], 1, None)).await, Err(ControlError::Conflict(_))));
}

#[tokio::test(start_paused = true)]
async fn promote_ends_a_rollout_at_100_and_rollback_aborts_and_halts() {
    let h = start();
    h.start_rollout(plan(&[500, 2500], 1, None)).await.unwrap();
    let route =
        h.handle.ask(|reply| Command::Promote { route: "web".into(), actor: Actor::Unix, reply }).await.unwrap();
    assert_eq!((route.weight, route.rollout.is_none()), (100.0, true));
    assert_eq!(route.last_outcome.as_deref(), Some("promoted"));

    h.start_rollout(plan(&[500, 2500], 1, None)).await.unwrap();
    let route =
        h.handle.ask(|reply| Command::Rollback { route: "web".into(), actor: Actor::Unix, reply }).await.unwrap();
    assert_eq!((route.weight, route.halted, route.rollout.is_none()), (0.0, true, true));
    let text = h.metrics.render();
    assert!(text.contains(r#"cutover_rollbacks_total{route="web",trigger="manual"} 1"#));
    // The next weight change un-halts the route.
    let route = h
        .handle
        .ask(|reply| Command::SetWeight {
            route: "web".into(),
            weight: Weight::from_percent(5.0).unwrap(),
            actor: Actor::Unix,
            reply,
        })
        .await
        .unwrap();
    assert_eq!((route.weight, route.halted), (5.0, false));
}

#[tokio::test(start_paused = true)]
async fn a_restart_mid_rollout_resumes_at_its_step_with_a_fresh_window() {
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    let first = start_in(dir);
    first.start_rollout(plan(&[500, 2500, 10_000], 100, None)).await.unwrap();
    first.canary_traffic(200, 200, 0.01);
    end_of_step().await;
    assert_eq!(first.weight(), 25.0);
    // "Restart": stop this control plane, start another on the same state file.
    first.task.abort();
    let state = std::fs::read(dir_path.join("state.json")).unwrap();
    drop(first);
    let again = tempfile::tempdir().unwrap();
    std::fs::write(again.path().join("state.json"), state).unwrap();
    let h = start_in(again);
    assert_eq!(h.weight(), 25.0, "the live weight survives the restart");
    let rollout = h.route().await.rollout.expect("the rollout survives the restart");
    assert_eq!(rollout.step, 2);
    assert_eq!(rollout.time_left_secs, INTERVAL.as_secs_f64(), "the step window restarts");
    h.canary_traffic(200, 200, 0.01);
    end_of_step().await;
    assert_eq!(h.weight(), 100.0);
}

#[tokio::test(start_paused = true)]
async fn route_without_canary_refuses_weight_and_rollout() {
    let h = start();
    let err = h
        .handle
        .ask(|reply| Command::SetWeight { route: "nope".into(), weight: Weight::FULL, actor: Actor::Unix, reply })
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::NotFound(_)));
    assert!(plan(&[2500, 500], 1, None).validate().is_err());
    assert!(matches!(h.start_rollout(plan(&[2500, 500], 1, None)).await, Err(ControlError::Invalid(_))));
}
