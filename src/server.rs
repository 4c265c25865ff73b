//! Wiring: builds the shared state from a validated [`Config`], adds the background services
//! (one artefact watcher per model, the registry watcher or refresher, the issuer key
//! fetchers, the upstream probe, the workload-token follower, the trace exporter) as pingora
//! background services, so the server's shutdown stops them too, and runs the pingora server
//! with the proxy and admin listeners. Returns only on a start-up error.

use std::sync::Arc;
use std::time::Duration;

use pingora::services::background::GenBackgroundService;

use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use crate::admin::Admin;
use crate::artefact::{ArtefactHandle, ArtefactMetrics, ArtefactWatcher, Scrubber};
use crate::audit::AuditLog;
use crate::config::Config;
use crate::identity::config::KeySource;
use crate::identity::{Issuer, TokenVerifier};
use crate::kit::http::FetchError;
use crate::kit::service::{Async, Blocking, OnPanic};
use crate::kit::watchdog::Watchdog;
use crate::policy::Policy;
use crate::probe::{Prober, ServedHandle};
use crate::proxy::{Gate, HeldBudget, ModelGate, RequestCounters, RequestIds};
use crate::registry::config::RegistrySource;
use crate::registry::{ApprovalStore, DirRegistry};
use crate::telemetry::Metrics;

pub mod limits;
pub mod reload;

/// Errors starting the sidecar.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("listener TLS: {0}")]
    Tls(String),
    #[error("upstream probe: {0}")]
    Probe(FetchError),
    #[error("registry client: {0}")]
    Registry(FetchError),
    #[error("trace exporter: {0}")]
    Tracing(FetchError),
}

/// How long a background service may go without a heartbeat before `/readyz` reports it
/// stalled (twice that and `/healthz` fails). Hashing beats after every read buffer and the
/// watches beat every fraction of a second, so only a read or an open that hangs (a dead
/// network file system) comes near it.
pub const STALL_BOUND: Duration = Duration::from_secs(60);

/// The pingora server settings provgate runs with (shared with the load benchmark's
/// pass-through proxy, so the two differ only in the checks).
pub fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.server.threads,
        work_stealing: config.server.work_stealing,
        upstream_keepalive_pool_size: config.upstream.keepalive_pool,
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.server.grace_period.as_secs().max(1)),
        // Timeouts of a second or more on Tokio's timer unless `fast_timer`. pingora's fast
        // timer thread wakes every 10 ms forever once started (most of an idle sidecar's CPU,
        // issue 18); a fast timer stays in its map until its deadline even when cancelled
        // (each request's upstream read timeout, 300 s by default: some MB of RSS, issue 16's
        // soak); and a request restarts the clock thread when it has not ticked for about
        // 2 s without stopping the old one (a CPU stall left a thread behind for good).
        // Tokio's timers are removed when cancelled and need no thread; only sub-second
        // timeouts still take the fast path.
        fast_timeout_to_tokio_threshold_seconds: if config.server.fast_timer {
            ServerConf::default().fast_timeout_to_tokio_threshold_seconds
        } else {
            Some(0)
        },
        ..ServerConf::default()
    }
}

/// Re-reads this workload's identity token and swaps the policy when its `sub` changes.
/// A token that cannot be read keeps the last identity (and says so). Runs until the
/// shutdown drops it.
async fn follow_workload_token(
    path: std::path::PathBuf,
    every: std::time::Duration,
    policy: Arc<arc_swap::ArcSwap<Policy>>,
) {
    loop {
        tokio::time::sleep(every).await;
        match crate::identity::token_subject(&path) {
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
    // Background services, added to the server once it is bootstrapped.
    let mut blocking: Vec<GenBackgroundService<Blocking>> = Vec::new();
    let mut asynchronous: Vec<GenBackgroundService<Async>> = Vec::new();

    for issuer in &config.callers.issuers {
        if let KeySource::File(keys) = &issuer.keys {
            for skipped in &keys.skipped {
                tracing::warn!(issuer = %issuer.issuer, key = %skipped, "issuer key skipped");
            }
        }
    }
    for skipped in &config.approvers.skipped {
        tracing::warn!(key = %skipped, "approver key skipped");
    }

    let revalidate_grace = match &config.registry.source {
        RegistrySource::Remote(r) => r.timeout,
        RegistrySource::Dir(_) => Duration::from_secs(1),
    };
    let approvals = Arc::new(ApprovalStore::new(
        config.registry.max_stale,
        revalidate_grace,
        metrics.clone(),
    ));
    let audit = AuditLog::open(&config.audit, metrics.clone())?;
    let audit_at_exit = audit.clone();
    // Every background service that must keep moving beats a heartbeat.
    let watchdog = Arc::new(Watchdog::new());

    // One watcher service and one published state per guarded model.
    let mut models = Vec::with_capacity(config.models.len());
    for m in &config.models {
        let artefact = Arc::new(ArtefactHandle::default());
        ArtefactMetrics::new(&metrics, &m.model).set(&artefact.load());
        // The persisted manifest's default place is beside the audit log.
        let audit_dir = match config.audit.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        let manifest_cache = m.manifest_cache(audit_dir);
        if manifest_cache.is_some() && m.scrub_interval.is_none() {
            tracing::warn!(model = %m.model,
                "manifest cache on with the scrub off: digests reused at start are not read again until a file changes");
        }
        let watcher = ArtefactWatcher {
            model: m.model.clone(),
            path: m.path.clone(),
            poll_interval: m.poll_interval,
            serialization: m.serialization,
            threads: m.hash_threads,
            progress_log_every: m.progress_log_interval,
            handle: artefact.clone(),
            metrics: metrics.clone(),
            signers: m.signers.clone(),
            heartbeat: Some(watchdog.register(format!("artefact {}", m.model), STALL_BOUND)),
            manifest_cache: manifest_cache.clone(),
        };
        let handle = artefact.clone();
        blocking.push(Blocking::service(
            &format!("artefact {}", m.model),
            OnPanic::new("artefact", &metrics.background_panics, move || {
                handle.fail_closed("the artefact watcher panicked; it restarts and hashes again")
            }),
            move |stop| watcher.clone().run(stop),
        ));
        if let Some(interval) = m.scrub_interval {
            let scrubber = Scrubber {
                model: m.model.clone(),
                path: m.path.clone(),
                serialization: m.serialization,
                threads: m.hash_threads,
                interval,
                rate: m.scrub_rate,
                handle: artefact.clone(),
                metrics: metrics.clone(),
                signers: m.signers.clone(),
                heartbeat: Some(watchdog.register(format!("scrub {}", m.model), STALL_BOUND)),
                manifest_cache: manifest_cache.as_ref().map(|c| c.path.clone()),
            };
            // A scrub that panicked vouched for nothing: the state fails closed until the
            // watcher's next hash (a change in the directory, or a restart).
            let handle = artefact.clone();
            blocking.push(Blocking::service(
                &format!("scrub {}", m.model),
                OnPanic::new("scrub", &metrics.background_panics, move || {
                    handle
                        .fail_closed("the artefact scrub panicked; hashed again on the next change")
                }),
                move |stop| scrubber.clone().run(stop),
            ));
        }
        models.push(ModelGate {
            name: m.model.clone(),
            artefact,
            served: Arc::new(ServedHandle::new(config.probe.is_some())),
            counters: RequestCounters::new(&metrics, &m.model, config.enforce),
            base: m
                .base
                .as_ref()
                .and_then(|b| config.models.iter().position(|x| &x.model == b)),
        });
    }
    if let Some(probe) = config.probe.clone() {
        let handles = models
            .iter()
            .map(|m| (m.name.clone(), m.served.clone()))
            .collect();
        let prober = Prober::new(probe, &config.upstream, handles, metrics.clone())
            .map_err(StartError::Probe)?;
        // The probe's view is advisory (no answer never blocks): nothing to fail closed.
        asynchronous.push(Async::service(
            "probe",
            OnPanic::count_only("probe", &metrics.background_panics),
            move || prober.clone().run(),
        ));
    }

    match &config.registry.source {
        RegistrySource::Dir(dir) => {
            let registry = DirRegistry {
                dir: dir.clone(),
                approvers: config.approvers.clone(),
                refresh_interval: config.registry.refresh_interval,
                store: approvals.clone(),
                metrics: metrics.clone(),
                heartbeat: Some(watchdog.register("registry", STALL_BOUND)),
            };
            // The records' freshness clock stops while it restarts: max_stale applies.
            blocking.push(Blocking::service(
                "registry",
                OnPanic::count_only("registry", &metrics.background_panics),
                move |stop| registry.clone().run(stop),
            ));
        }
        RegistrySource::Remote(remote) => {
            // Every guarded model's digest: each model's records are asked for, a new
            // digest at once (the refresher wakes on each artefact's publication).
            let artefacts: Vec<_> = models.iter().map(|m| m.artefact.clone()).collect();
            let served = move || {
                let artefacts = artefacts.clone();
                crate::registry::remote::Served {
                    changes: artefacts.iter().map(|a| a.subscribe()).collect(),
                    digests: Box::new(move || {
                        artefacts
                            .iter()
                            .filter_map(|a| a.load().digest().copied())
                            .collect()
                    }),
                }
            };
            // The loop beats at least every remote::HEARTBEAT; fetches run beside it.
            let heartbeat = watchdog.register(
                "registry",
                STALL_BOUND + remote.timeout * (models.len() as u32 + 1),
            );
            let (registry, remote) = (config.registry.clone(), remote.clone());
            let (approvers, store) = (config.approvers.clone(), approvals.clone());
            let m = metrics.clone();
            let make = move || {
                crate::registry::remote::refresher(
                    &registry,
                    &remote,
                    approvers.clone(),
                    store.clone(),
                    served(),
                    m.clone(),
                    Some(heartbeat.clone()),
                )
            };
            // Made once here so that a bad configuration stops the start.
            drop(make().map_err(StartError::Registry)?);
            // The records' freshness clocks stop while it restarts: max_stale applies.
            asynchronous.push(Async::service(
                "registry",
                OnPanic::count_only("registry", &metrics.background_panics),
                move || {
                    let refresher = make();
                    async move {
                        match refresher {
                            Ok(r) => r.await,
                            // Built once already: only a changed environment gets here. The
                            // records age past max_stale: fail closed.
                            Err(e) => {
                                tracing::error!(error = %e, "registry refresher could not restart")
                            }
                        }
                    }
                },
            ));
        }
    }

    let file_issuers: Vec<(String, std::path::PathBuf)> = config
        .callers
        .issuers
        .iter()
        .filter(|i| matches!(i.keys, KeySource::File(_)))
        .filter_map(|i| Some((i.issuer.clone(), i.jwks_file.clone()?)))
        .collect();
    // Built before the issuers move into the token verifier: `provgate check` builds it
    // the same way.
    let policy = Arc::new(arc_swap::ArcSwap::from_pointee(config.policy()));
    let tokens = Arc::new(TokenVerifier::new(
        config
            .callers
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
        config.callers.leeway.as_secs(),
        config.callers.token_cache_size,
        metrics.clone(),
    ));
    let issuers: Vec<Arc<Issuer>> = tokens.issuers().cloned().collect();
    if issuers.iter().any(|i| i.remote.is_some()) {
        let m = metrics.clone();
        // The keys' freshness clock stops while they restart: each issuer's max_stale applies.
        asynchronous.push(Async::service(
            "issuer keys",
            OnPanic::count_only("issuer keys", &metrics.background_panics),
            move || {
                let fetchers = crate::identity::jwks::fetchers(issuers.clone(), m.clone());
                async move {
                    if let Some(f) = fetchers {
                        f.await;
                    }
                }
            },
        ));
    }

    let reload = crate::server::reload::Reload {
        policy: policy.clone(),
        approver_keys: config.approver_keys_path.clone(),
        approvers: config.approver_files.clone(),
        config: config.source.clone(),
        issuers: file_issuers
            .into_iter()
            .filter_map(|(name, path)| {
                let issuer = tokens.issuers().find(|i| i.issuer == name)?.clone();
                Some((issuer, path))
            })
            .collect(),
        metrics: metrics.clone(),
    };
    // Keeps the last good keys and policy: a restart re-reads the files.
    asynchronous.push(Async::service(
        "trust reload",
        OnPanic::count_only("trust reload", &metrics.background_panics),
        move || reload.clone().run(),
    ));
    if let Some((path, every)) = config.workload.token_file {
        let policy = policy.clone();
        asynchronous.push(Async::service(
            "workload identity",
            OnPanic::count_only("workload identity", &metrics.background_panics),
            move || follow_workload_token(path.clone(), every, policy.clone()),
        ));
    }
    // Tracing: the exporter drains the tracer's queue as a background service.
    let tracer = match &config.tracing {
        Some(tracing) => {
            let (tracer, exporter) = crate::trace::export::Tracer::new(tracing, &metrics)
                .map_err(StartError::Tracing)?;
            // It owns the queue's receiver: after a panic the queue is gone, and spans are
            // dropped and counted (traces are not a trust decision).
            let exporter = std::sync::Mutex::new(Some(exporter));
            asynchronous.push(Async::service(
                "trace exporter",
                OnPanic::count_only("trace exporter", &metrics.background_panics),
                move || {
                    let e = exporter.lock().unwrap_or_else(|p| p.into_inner()).take();
                    async move {
                        if let Some(e) = e {
                            e.run().await;
                        }
                    }
                },
            ));
            Some(tracer)
        }
        None => None,
    };
    let admin_models = models
        .iter()
        .map(|m| (m.name.clone(), m.artefact.clone(), m.served.clone()))
        .collect();
    let gate = Gate {
        policy,
        enforce: config.enforce,
        log_allowed: config.audit.log_allowed,
        models,
        unrouted: RequestCounters::new(&metrics, "none", config.enforce),
        routing: config.routing.clone(),
        approvals: approvals.clone(),
        tokens: tokens.clone(),
        audit,
        metrics: metrics.clone(),
        peer: Gate::upstream_peer_for(&config.upstream),
        forward_token: config.upstream.forward_token,
        caller_auth: config.listen.caller_auth,
        request_ids: RequestIds::default(),
        held_bytes: Arc::new(HeldBudget::new(
            config.routing.max_held_total_bytes,
            metrics.held_body_bytes.clone(),
        )),
        tracer,
    };

    server.bootstrap();
    for service in blocking {
        server.add_service(service);
    }
    for service in asynchronous {
        server.add_service(service);
    }

    // pingora's HTTP application behind provgate's connection limits and header deadlines.
    let guarded = limits::Guarded {
        inner: Arc::new(pingora::proxy::http_proxy(&server.configuration, gate)),
        counts: limits::Counts::new(limits::Limits {
            header_timeout: config.server.header_timeout,
            idle_timeout: config.server.idle_timeout,
            max_connections: config.server.max_connections,
            max_connections_per_client: config.server.max_connections_per_client,
        }),
        metrics: metrics.clone(),
    };
    let mut proxy =
        pingora::services::listening::Service::new("provgate proxy".to_string(), guarded);
    match &config.listen.tls {
        Some(tls) => {
            let settings = crate::identity::mtls::tls_settings(tls, config.listen.caller_auth)
                .map_err(StartError::Tls)?;
            proxy.add_tls_with_settings(&config.listen.address.to_string(), None, settings);
        }
        None => proxy.add_tcp(&config.listen.address.to_string()),
    }
    server.add_service(proxy);

    let mut admin = pingora::services::listening::Service::new(
        "provgate admin".to_string(),
        Admin {
            models: admin_models,
            metrics,
            approvals,
            tokens,
            watchdog,
        },
    );
    admin.add_tcp(&config.admin.to_string());
    server.add_service(admin);

    tracing::info!(listen = %config.listen.address, admin = %config.admin,
        upstream = %config.upstream.address, enforce = config.enforce, "provgate starting");
    server.run(pingora::server::RunArgs::default());
    // Signalled: the audit writer finishes (queued records, summaries, a checkpoint, sync)
    // before the process exits.
    if !audit_at_exit.close(Duration::from_secs(5)) {
        tracing::error!("audit log not closed within 5s");
    }
    std::process::exit(0)
}
