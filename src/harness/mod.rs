//! A whole cxrel installation on one machine, for `cxrel demo` and `cxrel bench`: the emulator in
//! this process, workers as child processes (so their memory is their own), and an event tap that
//! tells when each job has settled.
//!
//! Files: [`config`] the typed settings of a worker it starts (the integration tests' workers
//! use them too), [`emulator`] the in-process emulator and its control API, [`workers`] worker
//! child processes, [`tap`] the result-event listener.

pub mod config;
pub mod emulator;
pub mod sample;
pub mod tap;
pub mod workers;

/// A fresh, readable queue prefix: `{base}-{8 hex}`, so runs never share queues.
pub fn fresh_prefix(base: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{base}-{}", &id[..8])
}

/// Connects to `[amqp].url` with an error that names the broker (password hidden) and how to start it.
pub async fn connect_broker(
    settings: &crate::settings::Settings,
    name: &str,
) -> anyhow::Result<lapin::Connection> {
    let url = &settings.amqp.url;
    crate::amqp::connect(url, name).await.map_err(|error| {
        anyhow::anyhow!(
            "cannot reach RabbitMQ at {} ({error}); start it with `rabbitmq-server -detached`",
            crate::secret::redact_url(url.expose())
        )
    })
}
