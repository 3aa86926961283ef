//! `cxrel console` against the local RabbitMQ: its JSON API, and its page in a headless Chromium.

#[path = "../helpers/mod.rs"]
mod helpers;
mod support;

mod api;
mod browser;
mod chromium;
