//! The state file as restored at start, black-box: an impossible state is
//! kept aside like a corrupt one and cutover starts from the config, with its
//! admin API answering; kept-aside copies never overwrite each other.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use cutover::control::rollout::{Plan, RolloutState};
use cutover::control::state::{FORMAT_VERSION, RouteState, StateFile};
use http::{Method, StatusCode};

/// The names of the kept-aside state files in `dir`, sorted.
fn kept_aside(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.corrupt-"))
        .collect();
    names.sort();
    names
}

/// A state for route web at 25% (config weight 5%) in a rollout at `step`
/// (an index) of a two-step plan.
fn state_in_rollout(step: usize) -> String {
    let plan = Plan {
        steps_bp: vec![500, 2500],
        interval: Duration::from_secs(600),
        max_error_rate: 0.01,
        max_p99: None,
        min_requests: 100,
    };
    let web = RouteState {
        weight_bp: 2500,
        halted: false,
        config_weight_bp: 500,
        rollout: Some(RolloutState { plan, step, paused: false, extensions: 0 }),
        last_outcome: None,
    };
    let state = StateFile { version: FORMAT_VERSION, routes: [("web".to_string(), web)].into() };
    serde_json::to_string_pretty(&state).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_with_an_impossible_rollout_step_is_kept_aside_and_the_config_serves() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    let impossible = state_in_rollout(7);
    std::fs::write(dir_path.join("state.json"), &impossible).unwrap();
    let proxy = Proxy::start_in(dir, &two_pool_config(stable.addr, canary.addr, 5.0, ""));
    let (status, body) = proxy.admin_call(Method::GET, "/v1/routes", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, web) = proxy.admin_call(Method::GET, "/v1/routes/web", None).await;
    assert_eq!(status, StatusCode::OK, "{web}");
    assert_eq!((web["weight"].as_f64(), &web["rollout"]), (Some(5.0), &serde_json::Value::Null), "{web}");
    assert_eq!(get(proxy.addr(), "/", &[("cookie", "cutover_beta=never")]).await.first_line(), "stable");
    let aside = kept_aside(&dir_path);
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read_to_string(dir_path.join(&aside[0])).unwrap(), impossible);
    let (_, events) = proxy.admin_call(Method::GET, "/v1/events", None).await;
    let event = &events["events"][0];
    assert_eq!(event["kind"], "state_unreadable", "{events}");
    let detail = event["detail"].as_str().unwrap();
    assert!(
        detail.contains("holds an impossible state (route \"web\": rollout step 8 is past its plan of 2 steps)")
            && detail.contains(&aside[0]),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_rollout_in_the_state_file_is_restored() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    std::fs::write(dir_path.join("state.json"), state_in_rollout(1)).unwrap();
    let proxy = Proxy::start_in(dir, &two_pool_config(stable.addr, canary.addr, 5.0, ""));
    let (status, web) = proxy.admin_call(Method::GET, "/v1/routes/web", None).await;
    assert_eq!(status, StatusCode::OK, "{web}");
    assert_eq!((web["weight"].as_f64(), web["rollout"]["step"].as_u64()), (Some(25.0), Some(2)), "{web}");
    assert!(kept_aside(&dir_path).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bad_state_files_in_a_row_are_both_kept_aside() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let config = two_pool_config(stable.addr, canary.addr, 5.0, "");
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().to_path_buf();
    std::fs::write(dir_path.join("state.json"), "{ first, not json").unwrap();
    let proxy = Proxy::start_in(dir, &config);
    let Proxy { mut running, dir, .. } = proxy;
    running.stop(Duration::ZERO);
    // Usually within the same second as the first: the names must differ anyway.
    std::fs::write(dir_path.join("state.json"), state_in_rollout(9)).unwrap();
    let proxy = Proxy::start_in(dir, &config);
    let (status, _) = proxy.admin_call(Method::GET, "/v1/routes", None).await;
    assert_eq!(status, StatusCode::OK);
    let aside = kept_aside(&dir_path);
    assert_eq!(aside.len(), 2, "{aside:?}");
    let mut contents: Vec<String> = aside.iter().map(|n| std::fs::read_to_string(dir_path.join(n)).unwrap()).collect();
    contents.sort();
    assert_eq!(contents, [state_in_rollout(9), "{ first, not json".to_string()]);
}
