//! What is committed must match the code: the contracts of `deploy/contracts` (generated, valid,
//! and true of a real worker's events, dead letters and webhooks) and the deployment manifests.

#[path = "../helpers/mod.rs"]
mod helpers;
mod support;

mod deploy_manifests;
mod documents;
mod worker;
