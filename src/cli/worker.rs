//! `cxrel worker`: the main job. Stops on SIGTERM/SIGINT: no new deliveries, in-flight jobs finish
//! within `[worker].shutdown_timeout`, the rest stay unacked for redelivery; exit code 0.

use tokio_util::sync::CancellationToken;

use crate::settings::Settings;

pub async fn run(settings: Settings) -> anyhow::Result<i32> {
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        tracing::info!("signal received: draining");
        on_signal.cancel();
    });
    crate::worker::run::run(settings, cancel).await?;
    Ok(0)
}
