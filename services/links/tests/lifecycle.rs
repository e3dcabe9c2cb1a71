//! The links app's background tasks end with it: nothing it started keeps
//! running (and holding its dependencies) after `run_until_stopped`
//! returns. The test is alone in its binary because it occupies the
//! process-wide log sink.

mod common;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use shortlink_bus::BusArgs;
use shortlink_links::App;
use shortlink_runtime::metrics::Metrics;
use shortlink_runtime::shutdown::Shutdown;

#[derive(Parser)]
struct Bus {
    #[command(flatten)]
    bus: BusArgs,
}

#[tokio::test]
async fn stopping_the_app_stops_its_background_tasks() {
    let args = Bus::parse_from(["test"]).bus;
    let metrics = Metrics::new("links", "lifecycle-test");
    let decoy_metrics = Metrics::new("links", "lifecycle-decoy");
    // The global log sink keeps the first bus it is given for the life of
    // the process; give it another one, so that after the app stops this
    // test holds the only reference to `bus`.
    let decoy = shortlink_bus::connect(&args, &decoy_metrics).unwrap();
    shortlink_bus::publish_logs_to(decoy, "logs".into(), "links", "decoy");
    let bus = shortlink_bus::connect(&args, &metrics).unwrap();

    let app = App::build_with_bus(common::base_config(None, None), Some(bus.clone()))
        .await
        .expect("links app builds on the embedded default");
    assert!(Arc::strong_count(&bus) > 1, "the app holds the bus");
    let shutdown = Shutdown::new();
    let run = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.trigger();
    run.await.unwrap().expect("stops cleanly");

    // Before the fix, the topic keeper ran on a shutdown signal that nobody
    // could fire: it held the bus (and checked the broker every 10 s) for
    // the life of the process.
    let released = common::eventually(Duration::from_secs(5), async || {
        Arc::strong_count(&bus) == 1
    })
    .await;
    assert!(
        released,
        "a task of the stopped app still holds the bus ({} references)",
        Arc::strong_count(&bus)
    );

    // An app that is built and dropped without running releases it too.
    let app = App::build_with_bus(common::base_config(None, None), Some(bus.clone()))
        .await
        .unwrap();
    drop(app);
    let released = common::eventually(Duration::from_secs(5), async || {
        Arc::strong_count(&bus) == 1
    })
    .await;
    assert!(released, "{} references", Arc::strong_count(&bus));
}
