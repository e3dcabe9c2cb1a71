//! `shortlink analytics`: click events into the app database, in batches,
//! through the links service's `RecordClicks` (idempotent by request id, so
//! a redelivered batch changes nothing), then the offsets are committed.

use std::sync::Arc;
use std::time::Duration;

use shortlink_bus::{EventBus, Topics};
use shortlink_proto::events::LinkEvent;
use shortlink_proto::v1 as pb;
use shortlink_proto::v1::event_service_client::EventServiceClient;
use shortlink_runtime::shutdown::Shutdown;
use tonic::transport::Endpoint;

use crate::{GroupArgs, commit_batch, next_batch, retry_until_ok, trace_batch};

/// Flags of `shortlink analytics`.
#[derive(Clone, Debug, clap::Args)]
pub struct AnalyticsArgs {
    #[command(flatten)]
    pub group: GroupArgs,
    /// The links service (gRPC) that records the clicks.
    #[arg(long, env = "LINKS_ADDR", default_value = "127.0.0.1:50061")]
    pub links_addr: String,
    /// Most events per batch.
    #[arg(long, env = "ANALYTICS_BATCH_MAX", default_value_t = 500)]
    pub batch_max: usize,
    /// Longest wait to fill a batch, in milliseconds.
    #[arg(long, env = "ANALYTICS_BATCH_WAIT_MS", default_value_t = 1000)]
    pub batch_wait_ms: u64,
}

/// Consumes until shutdown.
pub async fn run(
    args: AnalyticsArgs,
    bus: Arc<dyn EventBus>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let topics = Topics::with_prefix(&args.group.bus.topic_prefix);
    let group = args.group.group_or("analytics");
    let channel = Endpoint::from_shared(format!("http://{}", args.links_addr))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    let client = EventServiceClient::new(channel);
    let mut sub = bus
        .subscribe(&group, std::slice::from_ref(&topics.links))
        .await?;
    tracing::info!(group, links = %args.links_addr, "analytics consumer started");
    let wait = Duration::from_millis(args.batch_wait_ms);
    while let Some(batch) =
        next_batch(&mut sub, args.batch_max.clamp(1, 5000), wait, &shutdown).await
    {
        let _traces = trace_batch(&group, &batch);
        let clicks: Vec<pb::Click> = batch
            .iter()
            .filter_map(|d| d.decode::<LinkEvent>().ok())
            .filter(|e| e.kind == "click" && !e.request_id.is_empty() && e.link_id > 0)
            .map(|e| pb::Click {
                url_id: e.link_id,
                user_id: e.user_id,
                request_id: e.request_id,
                referrer: e.referrer,
                user_agent: e.user_agent,
                time: e.time,
                source: e.source,
            })
            .collect();
        if !clicks.is_empty() {
            let req = pb::RecordClicksRequest { clicks };
            let done = retry_until_ok("recording clicks", &shutdown, || {
                let mut c = client.clone();
                let r = req.clone();
                async move {
                    match c.record_clicks(r).await {
                        Ok(resp) => Ok(Some(resp.into_inner())),
                        // A batch the service refuses as invalid would be
                        // refused forever: log it and move on.
                        Err(s) if s.code() == tonic::Code::InvalidArgument => {
                            tracing::error!(error = %s.message(), "click batch refused as invalid; skipped");
                            Ok(None)
                        }
                        Err(s) => Err(anyhow::Error::from(s)),
                    }
                }
            })
            .await;
            let Some(n) = done else { return Ok(()) };
            if let Some(n) = n {
                tracing::info!(
                    recorded = n.recorded,
                    duplicates = n.duplicates,
                    unknown = n.unknown_links,
                    "clicks recorded"
                );
            }
        }
        commit_batch(&mut sub, &batch).await;
    }
    Ok(())
}
