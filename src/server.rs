//! Wiring: builds the shared state from a validated [`Config`], starts the background
//! services (one artefact hasher per model, registry watcher, upstream probe, audit writer),
//! and runs the pingora server
//! with the proxy and admin listeners. Returns only on a start-up error.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use crate::admin::Admin;
use crate::artefact::{ArtefactHandle, ArtefactWatcher};
use crate::audit::AuditLog;
use crate::config::{Config, KeySource, RegistrySource};
use crate::identity::{Issuer, TokenVerifier};
use crate::policy::Policy;
use crate::probe::{Prober, ServedHandle};
use crate::proxy::{Gate, HeldBudget, ModelGate, RequestIds};
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
    #[error("upstream probe: {0}")]
    Probe(String),
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

    let revalidate_grace = match &config.registry {
        RegistrySource::Remote(r) => r.timeout,
        RegistrySource::Dir(_) => Duration::from_secs(1),
    };
    let approvals = Arc::new(ApprovalStore::new(
        config.max_stale,
        revalidate_grace,
        metrics.clone(),
    ));
    let audit = AuditLog::open(&config.audit, metrics.clone())?;
    let audit_at_exit = audit.clone();

    // One watcher thread and one published state per guarded model.
    let mut models = Vec::with_capacity(config.models.len());
    for m in &config.models {
        let artefact = Arc::new(ArtefactHandle::default());
        metrics.set_artefact_state(&m.model, &artefact.load());
        let watcher = ArtefactWatcher {
            model: m.model.clone(),
            path: m.path.clone(),
            poll_interval: m.poll_interval,
            serialization: m.serialization,
            threads: m.hash_threads,
            handle: artefact.clone(),
            metrics: metrics.clone(),
            signers: m.signers.clone(),
        };
        let s = stop.clone();
        std::thread::Builder::new()
            .name("provgate-artefact".into())
            .spawn(move || watcher.run(s))
            .map_err(StartError::Thread)?;
        models.push(ModelGate {
            name: m.model.clone(),
            artefact,
            served: Arc::new(ServedHandle::new(config.probe.is_some())),
            counters: metrics.request_counters(&m.model, config.enforce),
        });
    }
    if let Some(probe) = config.probe.clone() {
        let handles = models
            .iter()
            .map(|m| (m.name.clone(), m.served.clone()))
            .collect();
        Prober::new(probe, &config.upstream, handles, metrics.clone())
            .map_err(StartError::Probe)?
            .spawn()
            .map_err(StartError::Thread)?;
    }

    match &config.registry {
        RegistrySource::Dir(dir) => {
            let registry = DirRegistry {
                dir: dir.clone(),
                approvers: config.approvers.clone(),
                refresh_interval: config.refresh_interval,
                store: approvals.clone(),
                metrics: metrics.clone(),
            };
            let s = stop.clone();
            std::thread::Builder::new()
                .name("provgate-registry".into())
                .spawn(move || registry.run(s))
                .map_err(StartError::Thread)?;
        }
        RegistrySource::Remote(remote) => {
            // Every guarded model's digest: each model's records are asked for.
            let served = {
                let artefacts: Vec<_> = models.iter().map(|m| m.artefact.clone()).collect();
                Box::new(move || {
                    artefacts
                        .iter()
                        .filter_map(|a| a.load().digest().copied())
                        .collect()
                })
            };
            crate::registry::remote::spawn(
                remote,
                config.approvers.clone(),
                config.refresh_interval,
                approvals.clone(),
                served,
                metrics.clone(),
                stop.clone(),
            )
            .map_err(StartError::Thread)?;
        }
    }

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
        tiers: config.tiers,
    }));
    if let Some((path, every)) = config.workload_token_file {
        let (policy, stop) = (policy.clone(), stop.clone());
        std::thread::Builder::new()
            .name("provgate-workload".into())
            .spawn(move || follow_workload_token(&path, every, &policy, &stop))
            .map_err(StartError::Thread)?;
    }
    let admin_models = models
        .iter()
        .map(|m| (m.name.clone(), m.artefact.clone(), m.served.clone()))
        .collect();
    let gate = Gate {
        policy,
        enforce: config.enforce,
        log_allowed: config.audit.log_allowed,
        models,
        unrouted: metrics.request_counters("none", config.enforce),
        routing: config.routing.clone(),
        approvals: approvals.clone(),
        tokens: tokens.clone(),
        audit,
        metrics: metrics.clone(),
        peer: Gate::upstream_peer_for(&config.upstream),
        forward_token: config.upstream.forward_token,
        caller_auth: config.caller_auth,
        request_ids: RequestIds::default(),
        held_bytes: Arc::new(HeldBudget::new(
            config.routing.max_held_total_bytes,
            metrics.held_body_bytes.clone(),
        )),
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
            models: admin_models,
            metrics,
            approvals,
            tokens,
        },
    );
    admin.add_tcp(&config.admin.to_string());
    server.add_service(admin);

    tracing::info!(listen = %config.listen, admin = %config.admin,
        upstream = %config.upstream.address, enforce = config.enforce, "provgate starting");
    server.run(pingora::server::RunArgs::default());
    // Signalled: the audit writer finishes (queued records, summaries, a checkpoint, sync)
    // before the process exits.
    if !audit_at_exit.close(Duration::from_secs(5)) {
        tracing::error!("audit log not closed within 5s");
    }
    std::process::exit(0)
}
