//! The dashboard in a real browser: Debian's headless `chromium` driven over
//! WebDriver (tests/common/webdriver.rs). One session walks through what an
//! operator does (DESIGN §8): the page shows the weight, follows a change
//! made with `ctl` without a reload, refuses with the API's message, rolls
//! back on a confirmed click, draws its charts, loads nothing from another
//! origin, and reconnects after the proxy restarts. Missing chromium fails
//! with a clear message; it is never skipped.

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::time::Duration;

use common::*;
use http::Method;
use serde_json::json;
use webdriver::Browser;

const WAIT: Duration = Duration::from_secs(20);

fn weight_of(route: &str) -> String {
    format!("return document.querySelector('[data-route=\"{route}\"] [data-weight]')?.dataset.weight ?? null")
}

fn weight_is(route: &str, weight: &str) -> String {
    format!(
        "return document.querySelector('[data-route=\"{route}\"] [data-weight]')?.dataset.weight === '{weight}' || null"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_a_real_browser() {
    let (stable, canary) = (Backend::named("stable").await, Backend::named("canary").await);
    let config = two_pool_config(stable.addr, canary.addr, 12.5, "");
    let proxy = Proxy::start(&config);
    let admin = proxy.admin();
    let d = cutover::dashboard::start(admin, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let browser = Browser::start().await;

    // Loads with the right weight.
    browser.goto(&d.url).await;
    browser.wait_for("a first render", WAIT, "return document.documentElement.dataset.rendered ?? null").await;
    assert_eq!(browser.run("return location.search").await, json!(""), "the token left the address bar");
    assert_eq!(browser.run(&weight_of("web")).await, json!("12.5"));
    let halted = "return document.querySelector('[data-route=\"web\"] [data-halted]').dataset.halted";
    assert_eq!(browser.run(halted).await, json!("false"));
    assert_eq!(browser.run("return document.getElementById('fleet').hidden").await, json!(true), "no fleet here");

    // Follows a change made with ctl, without a reload.
    browser.run("window.stillThisPage = true; return null").await;
    proxy.set_weight("web", 40.0).await;
    browser.wait_for("the weight set with ctl", WAIT, &weight_is("web", "40")).await;
    assert_eq!(browser.run("return window.stillThisPage ?? false").await, json!(true), "no reload");

    // The slider: moved and let go, it asks, then sets the weight.
    browser
        .run(
            "const s = document.querySelector('[data-route=\"web\"] .slider');
             s.value = '60'; s.dispatchEvent(new Event('input'));
             setTimeout(() => s.dispatchEvent(new Event('change')), 0); return null",
        )
        .await;
    assert_eq!(browser.alert_text().await, "Set the canary weight of web to 60%?");
    browser.accept_alert().await;
    browser.wait_for("the weight set with the slider", WAIT, &weight_is("web", "60")).await;
    assert_eq!(proxy.admin_call(Method::GET, "/v1/routes/web", None).await.1["weight"], json!(60.0));

    // Charts: every chart has drawn points once the history has two samples.
    for _ in 0..20 {
        get(proxy.addr(), "/", &[]).await;
    }
    browser
        .wait_for(
            "points on every chart",
            WAIT,
            "const c = [...document.querySelectorAll('[data-route=\"web\"] canvas[data-chart]')];
             return c.length === 3 && c.every((x) => Number(x.dataset.points) > 0) || null",
        )
        .await;
    let painted = browser
        .run(
            "const c = document.querySelector('canvas[data-chart=\"rps\"]');
             const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
             return n",
        )
        .await;
    assert!(painted.as_u64().unwrap() > 100, "the canvas is drawn on: {painted}");

    // A refused action shows the API's message (409 during a rollout).
    let plan = json!({"steps": [10, 50, 100], "interval": "10m"});
    let (status, _) = proxy.admin_call(Method::POST, "/v1/routes/web/rollout", Some(plan)).await;
    assert_eq!(status, http::StatusCode::OK);
    let steps = browser
        .wait_for(
            "the rollout's steps",
            WAIT,
            "const r = document.querySelector('[data-route=\"web\"]');
             if (r.querySelector('.badge').textContent !== 'rollout step 1/3') return null;
             return [...r.querySelectorAll('.plan .steps li')].map((li) => li.textContent)",
        )
        .await;
    let steps: Vec<&str> = steps.as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(steps[0].starts_with("10% judged in 9m") || steps[0].starts_with("10% judged in 10m"), "{steps:?}");
    assert_eq!(steps[1..], ["50% pending", "100% pending"]);
    browser.run("document.querySelector('[data-route=\"web\"] .weight-input').value = '30'; return null").await;
    browser.click("[data-route=\"web\"] [data-action=\"set-weight\"]").await;
    assert_eq!(browser.alert_text().await, "Set the canary weight of web to 30%?");
    browser.accept_alert().await;
    let error = browser
        .wait_for(
            "the refusal",
            WAIT,
            "const e = document.querySelector('[data-route=\"web\"] [data-error]'); return e.hidden ? null : e.textContent",
        )
        .await;
    let error = error.as_str().unwrap();
    assert!(error.contains("has a rollout in progress") && error.ends_with("(409)"), "{error}");
    assert_eq!(proxy.admin_call(Method::GET, "/v1/routes/web", None).await.1["weight"], json!(10.0));

    // A dismissed confirmation changes nothing.
    browser.click("[data-route=\"web\"] [data-action=\"promote\"]").await;
    assert!(browser.alert_text().await.starts_with("Promote web"));
    browser.dismiss_alert().await;
    assert_eq!(proxy.admin_call(Method::GET, "/v1/routes/web", None).await.1["weight"], json!(10.0));

    // The rollback button, confirmed, halts the route.
    browser.click("[data-route=\"web\"] [data-action=\"rollback\"]").await;
    assert!(browser.alert_text().await.starts_with("Roll back web"));
    browser.accept_alert().await;
    browser.wait_for("the halt", WAIT, &format!("return ({}) === 'true' || null", &halted["return ".len()..])).await;
    let r = proxy.admin_call(Method::GET, "/v1/routes/web", None).await.1;
    assert_eq!((&r["halted"], &r["weight"], &r["rollout"]), (&json!(true), &json!(0.0), &json!(null)));
    browser
        .wait_for(
            "the rollback event",
            WAIT,
            "return document.querySelector('#events li .kind')?.textContent === 'rollback ' || null",
        )
        .await;

    // Nothing from another origin.
    let foreign = browser
        .run("return performance.getEntries().map((e) => e.name).filter((n) => /^[a-z]+:/.test(n) && !n.startsWith(location.origin + '/'))")
        .await;
    assert_eq!(foreign, json!([]), "everything from the dashboard's own origin");

    // Page load to first full render, and the bytes it took (reported, and
    // bounded generously for loaded machines; README gives the figures).
    let mut times = Vec::new();
    for _ in 0..5 {
        browser.goto(&format!("http://{}/", d.addr)).await;
        let ms = browser.wait_for("a render", WAIT, "return document.documentElement.dataset.rendered ?? null").await;
        times.push(ms.as_str().unwrap().parse::<u64>().unwrap());
    }
    let bytes = browser
        .run(
            "return performance.getEntries().filter((e) => !e.name.includes('/api/'))
               .reduce((sum, e) => sum + (e.decodedBodySize || 0), 0)",
        )
        .await;
    times.sort();
    eprintln!("dashboard: first full render {times:?} ms (median {} ms); page {bytes} bytes", times[2]);
    assert!(times[2] < 3000, "first full render {times:?} ms");
    assert!(bytes.as_u64().unwrap() < 150 * 1024, "{bytes} bytes");

    // Reconnects after the proxy restarts (same admin socket, state kept).
    let Proxy { running, dir, .. } = proxy;
    running.shutdown();
    browser
        .wait_for(
            "the lost connection",
            WAIT,
            "return document.getElementById('conn').dataset.connection === 'down' || null",
        )
        .await;
    let proxy = Proxy::start_in(dir, &config);
    proxy.set_weight("web", 25.0).await;
    browser.wait_for("the restarted proxy", WAIT, &weight_is("web", "25")).await;
    assert_eq!(browser.run("return document.getElementById('conn').dataset.connection").await, json!("live"));
    browser
        .wait_for(
            "the new process's events only",
            WAIT,
            "const k = [...document.querySelectorAll('#events li .kind')].map((e) => e.textContent.trim()); return k[0] === 'weight' && !k.includes('rollback') || null",
        )
        .await;
    browser.quit().await;
}
