//! Wiring: builds the shared state from a validated [`Config`], starts the background
//! services (artefact hasher, registry watcher, audit writer), and runs the pingora server
//! with the proxy and admin listeners. Returns only on a start-up error.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use crate::admin::Admin;
use crate::artefact::{ArtefactHandle, ArtefactWatcher};
use crate::audit::AuditLog;
use crate::config::{Config, KeySource};
use crate::identity::{Issuer, TokenVerifier};
use crate::policy::Policy;
use crate::proxy::{Gate, RequestIds};
use crate::registry::{ApprovalStore, DirRegistry};
use crate::telemetry::Metrics;

/// Errors starting the sidecar.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("starting a background thread: {0}")]
    Thread(std::io::Error),
    #[error("listener TLS: {0}")]
    Tls(String),
}

/// The pingora server settings provgate runs with (shared with the load benchmark's
/// pass-through proxy, so the two differ only in the checks).
pub fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.threads,
        work_stealing: config.work_stealing,
        upstream_keepalive_pool_size: config.upstream.keepalive_pool,
        grace_period_seconds: Some(config.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.grace_period.as_secs().max(1)),
        ..ServerConf::default()
    }
}

/// Re-reads this workload's identity token and swaps the policy when its `sub` changes.
/// A token that cannot be read keeps the last identity (and says so).
fn follow_workload_token(
    path: &std::path::Path,
    every: std::time::Duration,
    policy: &arc_swap::ArcSwap<Policy>,
    stop: &AtomicBool,
) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(every);
        match crate::identity::token_subject(path) {
            Ok(sub) if sub != policy.load().workload_identity => {
                tracing::info!(previous = %policy.load().workload_identity, identity = %sub,
                    "workload identity changed with its token");
                let mut next = Policy::clone(&policy.load());
                next.workload_identity = sub;
                policy.store(Arc::new(next));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "workload identity token unreadable; keeping the last identity")
            }
        }
    }
}

/// Runs the sidecar until the process is signalled.
pub fn run(config: Config) -> Result<(), StartError> {
    let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));
    let metrics = Arc::new(Metrics::with_mode(config.enforce));
    let stop = Arc::new(AtomicBool::new(false));

    for issuer in &config.issuers {
        if let KeySource::File(keys) = &issuer.keys {
            for skipped in &keys.skipped {
                tracing::warn!(issuer = %issuer.issuer, key = %skipped, "issuer key skipped");
            }
        }
    }
    for skipped in &config.approvers.skipped {
        tracing::warn!(key = %skipped, "approver key skipped");
    }

    let artefact = Arc::new(ArtefactHandle::default());
    metrics.set_artefact_state(&config.model, &artefact.load());
    let approvals = Arc::new(ApprovalStore::new(config.max_stale, metrics.clone()));
    let audit = AuditLog::open(&config.audit_path, config.audit_queue, metrics.clone())?;

    let watcher = ArtefactWatcher {
        model: config.model.clone(),
        path: config.artefact_path.clone(),
        poll_interval: config.poll_interval,
        serialization: config.serialization,
        threads: config.hash_threads,
        handle: artefact.clone(),
        metrics: metrics.clone(),
        signers: config.signers.clone(),
    };
    let s = stop.clone();
    std::thread::Builder::new()
        .name("provgate-artefact".into())
        .spawn(move || watcher.run(s))
        .map_err(StartError::Thread)?;

    let registry = DirRegistry {
        dir: config.registry_path.clone(),
        approvers: config.approvers.clone(),
        rescan_interval: config.rescan_interval,
        store: approvals.clone(),
        metrics: metrics.clone(),
    };
    let s = stop.clone();
    std::thread::Builder::new()
        .name("provgate-registry".into())
        .spawn(move || registry.run(s))
        .map_err(StartError::Thread)?;

    let tokens = Arc::new(TokenVerifier::new(
        config
            .issuers
            .into_iter()
            .map(|i| {
                let (keys, remote) = match i.keys {
                    KeySource::File(keys) => (keys, None),
                    KeySource::Remote(r) => (
                        Default::default(),
                        Some(crate::identity::jwks::RemoteState::new(r)),
                    ),
                };
                Issuer {
                    profile: i.profile,
                    remote,
                    ..Issuer::with_keys(&i.issuer, i.audiences, i.algorithms, keys)
                }
            })
            .collect(),
        config.leeway.as_secs(),
        config.token_cache_size,
        metrics.clone(),
    ));
    crate::identity::jwks::spawn_fetchers(tokens.issuers().cloned().collect(), metrics.clone())
        .map_err(StartError::Thread)?;

    let policy = Arc::new(arc_swap::ArcSwap::from_pointee(Policy {
        workload_identity: config.workload_identity,
        model: config.model.clone(),
        tiers: config.tiers,
    }));
    if let Some((path, every)) = config.workload_token_file {
        let (policy, stop) = (policy.clone(), stop.clone());
        std::thread::Builder::new()
            .name("provgate-workload".into())
            .spawn(move || follow_workload_token(&path, every, &policy, &stop))
            .map_err(StartError::Thread)?;
    }
    let gate = Gate {
        policy,
        enforce: config.enforce,
        log_allowed: config.log_allowed,
        artefact: artefact.clone(),
        approvals: approvals.clone(),
        tokens: tokens.clone(),
        audit,
        counters: metrics.request_counters(&config.model, config.enforce),
        metrics: metrics.clone(),
        peer: Gate::upstream_peer_for(&config.upstream),
        forward_token: config.upstream.forward_token,
        caller_auth: config.caller_auth,
        request_ids: RequestIds::default(),
    };

    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, gate);
    match &config.listen_tls {
        Some(tls) => {
            let settings = crate::identity::mtls::tls_settings(tls, config.caller_auth)
                .map_err(StartError::Tls)?;
            proxy.add_tls_with_settings(&config.listen.to_string(), None, settings);
        }
        None => proxy.add_tcp(&config.listen.to_string()),
    }
    server.add_service(proxy);

    let mut admin = pingora::services::listening::Service::new(
        "provgate admin".to_string(),
        Admin {
            model: config.model,
            metrics,
            artefact,
            approvals,
            tokens,
        },
    );
    admin.add_tcp(&config.admin.to_string());
    server.add_service(admin);

    tracing::info!(listen = %config.listen, admin = %config.admin,
        upstream = %config.upstream.address, enforce = config.enforce, "provgate starting");
    server.run_forever()
}
