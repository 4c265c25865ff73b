//! The decision as a table: each row builds one situation and names the expected outcome.

use super::*;
use crate::approval::exception::ExceptionClaims;
use crate::approval::{ApprovalClaims, ArtefactRef, CallerPattern, Evidence};
use crate::registry::{Candidate, ExceptionCandidate};

const NOW: u64 = 1_800_000_000;
const WORKLOAD: &str = "spiffe://example.org/ns/prod/sa/model-serving";
const CALLER: &str = "spiffe://example.org/ns/app/sa/client";
/// The issuer bare caller patterns apply to.
const ISSUER_A: &str = "https://issuer";
/// An issuer configured `qualified = true`.
const ISSUER_B: &str = "https://issuer-b";

fn digest() -> Digest {
    Digest([7; 32])
}

fn policy() -> Policy {
    let mut tiers = HashMap::default();
    tiers.insert(
        "customer-facing".to_string(),
        TierRule {
            required_evidence: vec!["security-test".into(), "red-team".into()],
            ..TierRule::default()
        },
    );
    tiers.insert("internal".to_string(), TierRule::default());
    tiers.insert(
        "sandbox".to_string(),
        TierRule {
            workloads: vec!["spiffe://example.org/ns/sandbox/*".into()],
            ..TierRule::default()
        },
    );
    tiers.insert(
        "short".to_string(),
        TierRule {
            max_lifetime: Some(150),
            ..TierRule::default()
        },
    );
    tiers.insert(DEFAULT_TIER.to_string(), TierRule::default());
    // Like customer-facing, but exceptions (signed by a security approver, for at most
    // three days) may waive a requirement.
    tiers.insert(
        "exceptional".to_string(),
        TierRule {
            required_evidence: vec!["security-test".into(), "red-team".into()],
            exceptions: true,
            max_exception_lifetime: 3 * 86_400,
            exception_roles: vec!["security".into()],
            ..TierRule::default()
        },
    );
    tiers.insert(
        "critical-x".to_string(),
        TierRule {
            quorum: vec!["owner".into(), "security".into()],
            exceptions: true,
            max_exception_lifetime: 86_400,
            ..TierRule::default()
        },
    );
    tiers.insert(
        "critical".to_string(),
        TierRule {
            required_evidence: vec![],
            quorum: vec!["owner".into(), "security".into()],
            ..TierRule::default()
        },
    );
    let scope = |name: &str, roles: &[&str], models: &[&str], tiers: &[&str]| {
        Arc::new(ApproverScope {
            name: name.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            models: models.iter().map(|r| r.to_string()).collect(),
            tiers: tiers.iter().map(|r| r.to_string()).collect(),
        })
    };
    let alice = scope("alice", &["owner"], &["*"], &["*"]);
    let mut approvers = HashMap::default();
    // The key every base record is signed with: an approver for everything, no role.
    approvers.insert("k".to_string(), scope("platform", &[], &["*"], &["*"]));
    // Two keys of one approver.
    approvers.insert("alice-1".to_string(), alice.clone());
    approvers.insert("alice-2".to_string(), alice);
    approvers.insert(
        "sec".to_string(),
        scope("sec", &["security"], &["*"], &["*"]),
    );
    approvers.insert(
        "owner-and-security".to_string(),
        scope("both", &["owner", "security"], &["*"], &["*"]),
    );
    // Scoped: only model "other", only internal tiers.
    approvers.insert(
        "team-b".to_string(),
        scope("team-b", &["owner"], &["other"], &["*"]),
    );
    approvers.insert(
        "internal-only".to_string(),
        scope("internal-only", &["owner"], &["*"], &["internal"]),
    );
    Policy {
        workload_identity: WORKLOAD.into(),
        tiers,
        tier: DEFAULT_TIER.into(),
        tier_rule: TierRule::default(),
        approvers,
        bare_issuers: vec![Arc::from(ISSUER_A)],
    }
}

fn claims() -> ApprovalClaims {
    ApprovalClaims {
        iss: "approver".into(),
        sub: "m".into(),
        jti: "r1".into(),
        iat: NOW - 100,
        nbf: None,
        exp: NOW + 100,
        version_id: "v1".into(),
        artefact: ArtefactRef {
            digest: digest(),
            signer: None,
            ollama_digest: None,
            base_digest: None,
        },
        lineage: Default::default(),
        evidence: vec![],
        approvals: vec![],
        tier: "internal".into(),
        workloads: vec!["spiffe://example.org/ns/prod/*".into()],
        callers: vec![CALLER.into()],
        revalidate_after: None,
    }
}

fn entry_of(list: Vec<(ApprovalClaims, bool)>) -> RegistryEntry {
    signed_by(list, &["k"])
}

/// Records co-signed by the keys `kids`.
fn signed_by(list: Vec<(ApprovalClaims, bool)>, kids: &[&str]) -> RegistryEntry {
    RegistryEntry {
        records: list
            .into_iter()
            .map(|(c, revoked)| Candidate {
                record: Arc::new(ApprovalRecord {
                    version_header: http::HeaderValue::from_str(&c.version_id).unwrap(),
                    version_id: Arc::from(c.version_id.as_str()),
                    claims: c,
                    kid: kids.first().unwrap_or(&"").to_string(),
                    signers: kids.iter().map(|k| k.to_string()).collect(),
                }),
                revoked,
            })
            .collect(),
        exceptions: vec![],
        invalid: vec![],
        revalidate_after: None,
        revoked: false,
        clocks: Vec::new(),
    }
}

/// An exception `jti` for record `v1` of model `m` on [`digest`], signed with `kid`, in force
/// from `NOW - 10` to `NOW + 100`.
fn exception(jti: &str, kid: &str, waives: Waiver) -> ExceptionCandidate {
    exception_with(jti, kid, waives, |_| {})
}

fn exception_with(
    jti: &str,
    kid: &str,
    waives: Waiver,
    f: impl FnOnce(&mut ExceptionClaims),
) -> ExceptionCandidate {
    let mut claims = ExceptionClaims {
        iss: "security-team".into(),
        sub: "m".into(),
        jti: jti.into(),
        iat: NOW - 10,
        nbf: None,
        exp: NOW + 100,
        version_id: "v1".into(),
        artefact: ArtefactRef {
            digest: digest(),
            signer: None,
            ollama_digest: None,
            base_digest: None,
        },
        waives,
        reason: "red-team report due Friday".into(),
        ticket: "https://tickets.example.org/SEC-42".into(),
    };
    f(&mut claims);
    ExceptionCandidate {
        exception: Arc::new(ExceptionRecord {
            claims,
            kid: kid.into(),
        }),
        revoked: false,
    }
}

/// A record of tier `tier` with a passing security test only, signed by `kids`, beside
/// `exceptions`.
fn lacking_red_team(
    tier: &str,
    kids: &[&str],
    exceptions: Vec<ExceptionCandidate>,
) -> Option<RegistryEntry> {
    let mut c = claims();
    c.tier = tier.into();
    c.evidence = vec![ev("security-test", "pass")];
    let mut entry = signed_by(vec![(c, false)], kids);
    entry.exceptions = exceptions;
    Some(entry)
}

fn red_team() -> Waiver {
    Waiver::Evidence("red-team".into())
}

fn caller(iss: &str, sub: &str) -> Caller {
    Caller {
        iss: Arc::from(iss),
        sub: Arc::from(sub),
        exp: NOW + 60,
        headers: None,
    }
}

const OLLAMA: &str = "sha256:A80C4F17ACD55265FEEC403C7AEF86BE0C25983AB279D83F3BCD3ABBCB5B8B72";
const OLLAMA_BARE: &str = "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72";
const OTHER_OLLAMA: &str = "b80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72";

fn served(name: &'static str, server: ServerView<'static>) -> ModelView<'static> {
    ModelView::Served { name, server }
}

struct Case {
    name: &'static str,
    /// The deployment's tier (`[workload] tier`).
    tier: &'static str,
    caller: Option<Option<&'static str>>,
    /// The `iss` of the caller's token.
    caller_iss: &'static str,
    artefact_ready: bool,
    entry: Option<RegistryEntry>,
    registry_down: bool,
    /// The model the request resolved to (`Served` against "m" unless a case says).
    model: ModelView<'static>,
    signer: Option<&'static str>,
    want: Result<&'static str, DenyReason>,
    /// The IDs of the exceptions an allowed request needed.
    want_exceptions: &'static [&'static str],
}

fn base(name: &'static str) -> Case {
    Case {
        name,
        tier: DEFAULT_TIER,
        caller: Some(Some(CALLER)),
        caller_iss: ISSUER_A,
        artefact_ready: true,
        entry: Some(entry_of(vec![(claims(), false)])),
        registry_down: false,
        model: ModelView::Served {
            name: "m",
            server: ServerView::NotProbed,
        },
        signer: None,
        want: Ok("v1"),
        want_exceptions: &[],
    }
}

fn with(c: Case, f: impl FnOnce(&mut Case)) -> Case {
    let mut c = c;
    f(&mut c);
    c
}

fn record(f: impl FnOnce(&mut ApprovalClaims)) -> Option<RegistryEntry> {
    let mut c = claims();
    f(&mut c);
    Some(entry_of(vec![(c, false)]))
}

#[test]
fn decision_table() {
    use DenyReason::*;
    let cases = vec![
        base("approved, bound, allowed caller"),
        with(base("no token"), |c| {
            c.caller = None;
            c.want = Err(TokenMissing)
        }),
        with(base("bad token"), |c| {
            c.caller = Some(None);
            c.want = Err(TokenInvalid)
        }),
        with(base("token checked before artefact"), |c| {
            c.caller = None;
            c.artefact_ready = false;
            c.want = Err(TokenMissing)
        }),
        with(base("still hashing"), |c| {
            c.artefact_ready = false;
            c.want = Err(ArtefactUnverified)
        }),
        with(base("registry down"), |c| {
            c.registry_down = true;
            c.want = Err(TrustDataUnavailable)
        }),
        with(base("no record for digest"), |c| {
            c.entry = None;
            c.want = Err(ArtefactUnmanaged)
        }),
        with(base("only a forged record for digest"), |c| {
            c.entry = Some(RegistryEntry {
                records: vec![],
                exceptions: vec![],
                invalid: vec!["bad signature".into()],
                revalidate_after: None,
                revoked: false,
                clocks: Vec::new(),
            });
            c.want = Err(ApprovalInvalid)
        }),
        with(
            base("the registry revoked the digest, no record readable"),
            |c| {
                c.entry = Some(RegistryEntry {
                    records: vec![],
                    exceptions: vec![],
                    invalid: vec![],
                    revalidate_after: None,
                    revoked: true,
                    clocks: Vec::new(),
                });
                c.want = Err(ApprovalRevoked)
            },
        ),
        with(
            base("the registry revoked the digest of a valid record"),
            |c| {
                let mut e = c.entry.take().expect("the base case has a valid record");
                e.revoked = true;
                c.entry = Some(e);
                c.want = Err(ApprovalRevoked)
            },
        ),
        with(base("revoked"), |c| {
            c.entry = Some(entry_of(vec![(claims(), true)]));
            c.want = Err(ApprovalRevoked)
        }),
        with(base("expired at exp to the second"), |c| {
            c.entry = record(|r| r.exp = NOW);
            c.want = Err(ApprovalExpired)
        }),
        with(base("one second before exp"), |c| {
            c.entry = record(|r| r.exp = NOW + 1);
        }),
        with(base("not yet valid"), |c| {
            c.entry = record(|r| r.nbf = Some(NOW + 10));
            c.want = Err(ApprovalExpired)
        }),
        with(base("record for another model"), |c| {
            c.entry = record(|r| r.sub = "other".into());
            c.want = Err(ModelMismatch)
        }),
        with(
            base("request names a model this sidecar does not serve"),
            |c| {
                c.model = ModelView::NotServed;
                c.want = Err(ModelMismatch)
            },
        ),
        with(
            base("a routing failure is still 401 without a token"),
            |c| {
                c.model = ModelView::NotServed;
                c.caller = None;
                c.want = Err(TokenMissing)
            },
        ),
        with(base("several models served, none named"), |c| {
            c.model = ModelView::Unnamed;
            c.want = Err(ModelRequired)
        }),
        with(base("body does not say which model"), |c| {
            c.model = ModelView::BodyInvalid;
            c.want = Err(RequestInvalid)
        }),
        with(base("body too large to say which model"), |c| {
            c.model = ModelView::BodyTooLarge;
            c.want = Err(RequestTooLarge)
        }),
        with(base("decided against another configured model"), |c| {
            c.model = served("n", ServerView::NotProbed);
            c.want = Err(ModelMismatch)
        }),
        with(base("probe: server serves it"), |c| {
            c.model = served(
                "m",
                ServerView::Serving {
                    ollama_digest: None,
                },
            );
        }),
        with(base("probe: server does not serve it"), |c| {
            c.model = served("m", ServerView::NotServing);
            c.want = Err(ModelMismatch)
        }),
        with(base("probe: server unreachable does not block"), |c| {
            c.model = served("m", ServerView::Unreachable);
        }),
        with(base("probe: no answer yet does not block"), |c| {
            c.model = served("m", ServerView::Pending);
        }),
        with(base("probe mismatch is checked before the artefact"), |c| {
            c.model = served("m", ServerView::NotServing);
            c.artefact_ready = false;
            c.want = Err(ModelMismatch)
        }),
        with(
            base("record pins an Ollama digest the server reports"),
            |c| {
                c.entry = record(|r| r.artefact.ollama_digest = Some(OLLAMA.into()));
                c.model = served(
                    "m",
                    ServerView::Serving {
                        ollama_digest: Some(OLLAMA_BARE),
                    },
                );
            },
        ),
        with(
            base("record pins an Ollama digest, server reports another"),
            |c| {
                c.entry = record(|r| r.artefact.ollama_digest = Some(OLLAMA.into()));
                c.model = served(
                    "m",
                    ServerView::Serving {
                        ollama_digest: Some(OTHER_OLLAMA),
                    },
                );
                c.want = Err(ModelMismatch)
            },
        ),
        with(
            base("record pins an Ollama digest, server unreachable"),
            |c| {
                c.entry = record(|r| r.artefact.ollama_digest = Some(OLLAMA.into()));
                c.model = served("m", ServerView::Unreachable);
                c.want = Err(ArtefactUnverified)
            },
        ),
        with(base("record pins an Ollama digest, no probe"), |c| {
            c.entry = record(|r| r.artefact.ollama_digest = Some(OLLAMA.into()));
            c.want = Err(ArtefactUnverified)
        }),
        with(base("record pins a signer, artefact signed by it"), |c| {
            c.entry = record(|r| r.artefact.signer = Some("release-key".into()));
            c.signer = Some("release-key");
        }),
        with(base("record pins a signer, artefact unsigned"), |c| {
            c.entry = record(|r| r.artefact.signer = Some("release-key".into()));
            c.want = Err(ApprovalInvalid)
        }),
        with(
            base("record pins a signer, artefact signed by another"),
            |c| {
                c.entry = record(|r| r.artefact.signer = Some("release-key".into()));
                c.signer = Some("intern-key");
                c.want = Err(ApprovalInvalid)
            },
        ),
        with(base("workload not bound"), |c| {
            c.entry = record(|r| r.workloads = vec!["spiffe://example.org/ns/dev/*".into()]);
            c.want = Err(DeploymentNotBound)
        }),
        with(base("no workloads at all"), |c| {
            c.entry = record(|r| r.workloads = vec![]);
            c.want = Err(DeploymentNotBound)
        }),
        with(base("caller not listed"), |c| {
            c.caller = Some(Some("spiffe://example.org/ns/app/sa/intruder"));
            c.want = Err(CallerNotAllowed)
        }),
        with(base("caller matched by wildcard"), |c| {
            c.caller = Some(Some("system:serviceaccount:ml:batch"));
            c.entry = record(|r| r.callers = vec!["system:serviceaccount:ml:*".into()]);
        }),
        with(
            base("issuer B's token with issuer A's caller name (bare pattern)"),
            |c| {
                c.caller_iss = ISSUER_B;
                c.want = Err(CallerNotAllowed)
            },
        ),
        with(
            base("issuer B's token, pattern qualified with issuer B"),
            |c| {
                c.caller_iss = ISSUER_B;
                c.entry = record(|r| {
                    r.callers = vec![CallerPattern::Qualified {
                        iss: ISSUER_B.into(),
                        sub: "spiffe://example.org/ns/app/*".into(),
                    }]
                });
            },
        ),
        with(
            base("issuer A's token, pattern qualified with issuer B"),
            |c| {
                c.entry = record(|r| {
                    r.callers = vec![CallerPattern::Qualified {
                        iss: ISSUER_B.into(),
                        sub: CALLER.into(),
                    }]
                });
                c.want = Err(CallerNotAllowed)
            },
        ),
        with(
            base("issuer A's token, pattern qualified with issuer A"),
            |c| {
                c.entry = record(|r| {
                    r.callers = vec![CallerPattern::Qualified {
                        iss: ISSUER_A.into(),
                        sub: CALLER.into(),
                    }]
                });
            },
        ),
        with(base("qualified pattern: right issuer, another name"), |c| {
            c.caller_iss = ISSUER_B;
            c.caller = Some(Some("spiffe://example.org/ns/app/sa/intruder"));
            c.entry = record(|r| {
                r.callers = vec![CallerPattern::Qualified {
                    iss: ISSUER_B.into(),
                    sub: CALLER.into(),
                }]
            });
            c.want = Err(CallerNotAllowed)
        }),
        with(base("tier evidence missing"), |c| {
            c.entry = record(|r| {
                r.tier = "customer-facing".into();
                r.evidence = vec![ev("security-test", "pass")];
            });
            c.want = Err(ApprovalInvalid)
        }),
        with(base("tier evidence failed"), |c| {
            c.entry = record(|r| {
                r.tier = "customer-facing".into();
                r.evidence = vec![ev("security-test", "pass"), ev("red-team", "fail")];
            });
            c.want = Err(ApprovalInvalid)
        }),
        with(base("tier evidence present"), |c| {
            c.entry = record(|r| {
                r.tier = "customer-facing".into();
                r.evidence = vec![ev("security-test", "pass"), ev("red-team", "PASS")];
            });
        }),
        // Item 1: the deployment's tier.
        with(base("record's tier lower than the deployment's"), |c| {
            c.tier = "customer-facing";
            c.want = Err(ApprovalInvalid)
        }),
        with(base("deployment's tier rules met by the record"), |c| {
            c.tier = "customer-facing";
            c.entry = record(|r| {
                r.evidence = vec![ev("security-test", "pass"), ev("red-team", "pass")];
            });
        }),
        with(base("record's tier higher than the deployment's"), |c| {
            c.entry = record(|r| {
                r.tier = "customer-facing".into();
                r.evidence = vec![ev("security-test", "pass")];
            });
            c.want = Err(ApprovalInvalid)
        }),
        with(base("record names an unconfigured tier"), |c| {
            c.entry = record(|r| r.tier = "experimental".into());
            c.want = Err(ApprovalInvalid)
        }),
        with(base("record's tier differs in case"), |c| {
            c.entry = record(|r| {
                r.tier = "Customer-Facing".into();
                r.evidence = vec![ev("security-test", "pass"), ev("red-team", "pass")];
            });
            c.want = Err(ApprovalInvalid)
        }),
        with(base("record in the default tier"), |c| {
            c.entry = record(|r| r.tier = DEFAULT_TIER.into());
        }),
        // Item 4: tier rules beyond evidence.
        with(base("record valid longer than its tier allows"), |c| {
            c.entry = record(|r| r.tier = "short".into());
            c.want = Err(ApprovalInvalid)
        }),
        with(base("record within its tier's lifetime"), |c| {
            c.entry = record(|r| {
                r.tier = "short".into();
                r.exp = r.iat + 150;
            });
        }),
        with(base("deployment's tier limits the lifetime"), |c| {
            c.tier = "short";
            c.want = Err(ApprovalInvalid)
        }),
        with(base("lifetime counted from nbf"), |c| {
            c.entry = record(|r| {
                r.tier = "short".into();
                r.nbf = Some(NOW - 50);
            });
        }),
        with(base("sandbox tier on a production workload"), |c| {
            c.entry = record(|r| r.tier = "sandbox".into());
            c.want = Err(DeploymentNotBound)
        }),
        // Item 2: approvers with scopes.
        with(base("signed by a key of no configured approver"), |c| {
            c.entry = Some(signed_by(vec![(claims(), false)], &["stranger"]));
            c.want = Err(ApprovalInvalid)
        }),
        with(base("approver outside its model scope"), |c| {
            c.entry = Some(signed_by(vec![(claims(), false)], &["team-b"]));
            c.want = Err(ApprovalInvalid)
        }),
        with(base("approver inside its model scope"), |c| {
            c.entry = Some(signed_by(
                vec![(
                    {
                        let mut r = claims();
                        r.sub = "other".into();
                        r
                    },
                    false,
                )],
                &["team-b"],
            ));
            c.model = served("other", ServerView::NotProbed);
        }),
        with(base("approver inside its tier scope"), |c| {
            c.tier = "internal";
            c.entry = Some(signed_by(vec![(claims(), false)], &["internal-only"]));
        }),
        with(
            base("approver scoped to internal, deployment customer-facing"),
            |c| {
                c.tier = "customer-facing";
                let mut r = claims();
                r.evidence = vec![ev("security-test", "pass"), ev("red-team", "pass")];
                c.entry = Some(signed_by(vec![(r, false)], &["internal-only"]));
                c.want = Err(ApprovalInvalid)
            },
        ),
        with(base("one signer in scope is enough without quorum"), |c| {
            c.entry = Some(signed_by(vec![(claims(), false)], &["team-b", "k"]));
        }),
        // Item 3: quorum.
        with(base("quorum: one approver only"), |c| {
            c.entry = Some(signed_by(vec![(critical(), false)], &["alice-1"]));
            c.want = Err(ApprovalInvalid)
        }),
        with(base("quorum: two keys of one approver"), |c| {
            c.entry = Some(signed_by(
                vec![(critical(), false)],
                &["alice-1", "alice-2"],
            ));
            c.want = Err(ApprovalInvalid)
        }),
        with(base("quorum: distinct owner and security"), |c| {
            c.entry = Some(signed_by(vec![(critical(), false)], &["alice-2", "sec"]));
        }),
        with(base("quorum: one approver holding both roles"), |c| {
            c.entry = Some(signed_by(
                vec![(critical(), false)],
                &["owner-and-security"],
            ));
            c.want = Err(ApprovalInvalid)
        }),
        with(
            base("quorum: both-roles approver and an owner cover it"),
            |c| {
                c.entry = Some(signed_by(
                    vec![(critical(), false)],
                    &["alice-1", "owner-and-security"],
                ));
            },
        ),
        with(base("quorum: an out-of-scope owner does not count"), |c| {
            c.entry = Some(signed_by(vec![(critical(), false)], &["team-b", "sec"]));
            c.want = Err(ApprovalInvalid)
        }),
        with(base("quorum of the deployment's tier applies"), |c| {
            c.tier = "critical";
            c.entry = Some(signed_by(vec![(claims(), false)], &["k"]));
            c.want = Err(ApprovalInvalid)
        }),
        with(base("quorum of the deployment's tier met"), |c| {
            c.tier = "critical";
            c.entry = Some(signed_by(vec![(claims(), false)], &["alice-1", "sec"]));
        }),
        with(base("a newer valid record beats an expired one"), |c| {
            let mut old = claims();
            old.exp = NOW - 1;
            old.iat = NOW - 1000;
            old.version_id = "v0".into();
            let mut new = claims();
            new.version_id = "v2".into();
            c.entry = Some(entry_of(vec![(new, false), (old, false)]));
            c.want = Ok("v2")
        }),
        with(
            base("an older valid record still allows when the newest is revoked"),
            |c| {
                let mut new = claims();
                new.version_id = "v2".into();
                c.entry = Some(entry_of(vec![(new, true), (claims(), false)]));
                c.want = Ok("v1")
            },
        ),
        with(base("the newest record's reason is reported"), |c| {
            let mut new = claims();
            new.version_id = "v2".into();
            let mut old = claims();
            old.exp = NOW - 1;
            c.entry = Some(entry_of(vec![(new, true), (old, false)]));
            c.want = Err(ApprovalRevoked)
        }),
        // === Exceptions ===
        with(base("an exception waives one evidence kind"), |c| {
            c.tier = "exceptional";
            c.entry = lacking_red_team(
                "exceptional",
                &["k"],
                vec![exception("x1", "sec", red_team())],
            );
            c.want_exceptions = &["x1"];
        }),
        with(base("without the exception the evidence is missing"), |c| {
            c.tier = "exceptional";
            c.entry = lacking_red_team("exceptional", &["k"], vec![]);
            c.want = Err(ApprovalInvalid)
        }),
        with(
            base("an exception the record does not need is not used"),
            |c| {
                c.tier = "exceptional";
                let mut r = claims();
                r.tier = "exceptional".into();
                r.evidence = vec![ev("security-test", "pass"), ev("red-team", "pass")];
                let mut entry = entry_of(vec![(r, false)]);
                entry.exceptions = vec![exception("x1", "sec", red_team())];
                c.entry = Some(entry);
            },
        ),
        with(base("an expired exception is refused"), |c| {
            c.tier = "exceptional";
            let x = exception_with("x1", "sec", red_team(), |x| {
                x.iat = NOW - 200;
                x.exp = NOW;
            });
            c.entry = lacking_red_team("exceptional", &["k"], vec![x]);
            c.want = Err(ApprovalExpired)
        }),
        with(base("an exception not yet valid is refused"), |c| {
            c.tier = "exceptional";
            let x = exception_with("x1", "sec", red_team(), |x| x.nbf = Some(NOW + 1));
            c.entry = lacking_red_team("exceptional", &["k"], vec![x]);
            c.want = Err(ApprovalExpired)
        }),
        with(
            base("an exception longer than the tier allows is refused"),
            |c| {
                c.tier = "exceptional";
                let x = exception_with("x1", "sec", red_team(), |x| x.exp = x.iat + 3 * 86_400 + 1);
                c.entry = lacking_red_team("exceptional", &["k"], vec![x]);
                c.want = Err(ApprovalInvalid)
            },
        ),
        with(
            base("an exception as long as the tier allows is used"),
            |c| {
                c.tier = "exceptional";
                let x = exception_with("x1", "sec", red_team(), |x| x.exp = x.iat + 3 * 86_400);
                c.entry = lacking_red_team("exceptional", &["k"], vec![x]);
                c.want_exceptions = &["x1"];
            },
        ),
        with(base("an exception for another digest is ignored"), |c| {
            c.tier = "exceptional";
            let x = exception_with("x1", "sec", red_team(), |x| {
                x.artefact.digest = Digest([8; 32])
            });
            c.entry = lacking_red_team("exceptional", &["k"], vec![x]);
            c.want = Err(ApprovalInvalid)
        }),
        with(base("an exception for another version is ignored"), |c| {
            c.tier = "exceptional";
            let x = exception_with("x1", "sec", red_team(), |x| x.version_id = "v0".into());
            c.entry = lacking_red_team("exceptional", &["k"], vec![x]);
            c.want = Err(ApprovalInvalid)
        }),
        with(base("an exception for another model is ignored"), |c| {
            c.tier = "exceptional";
            let x = exception_with("x1", "sec", red_team(), |x| x.sub = "other".into());
            c.entry = lacking_red_team("exceptional", &["k"], vec![x]);
            c.want = Err(ApprovalInvalid)
        }),
        with(
            base("an exception waiving another evidence kind does not help"),
            |c| {
                c.tier = "exceptional";
                let x = exception("x1", "sec", Waiver::Evidence("security-test".into()));
                c.entry = lacking_red_team("exceptional", &["k"], vec![x]);
                c.want = Err(ApprovalInvalid)
            },
        ),
        with(
            base("the deployment's requirement is waived whatever tier the record claims"),
            |c| {
                c.tier = "exceptional";
                c.entry =
                    lacking_red_team("internal", &["k"], vec![exception("x1", "sec", red_team())]);
                c.want_exceptions = &["x1"];
            },
        ),
        with(base("a tier that allows no exceptions refuses one"), |c| {
            c.tier = "customer-facing";
            c.entry = lacking_red_team(
                "customer-facing",
                &["k"],
                vec![exception("x1", "sec", red_team())],
            );
            c.want = Err(ApprovalInvalid)
        }),
        with(base("the record's tier must allow exceptions too"), |c| {
            c.tier = "exceptional";
            c.entry = lacking_red_team(
                "customer-facing",
                &["k"],
                vec![exception("x1", "sec", red_team())],
            );
            c.want = Err(ApprovalInvalid)
        }),
        with(base("a revoked exception is refused"), |c| {
            c.tier = "exceptional";
            let mut x = exception("x1", "sec", red_team());
            x.revoked = true;
            c.entry = lacking_red_team("exceptional", &["k"], vec![x]);
            c.want = Err(ApprovalRevoked)
        }),
        with(
            base("a revoked exception beside a good one: the good one is used"),
            |c| {
                c.tier = "exceptional";
                let mut x = exception("x1", "sec", red_team());
                x.revoked = true;
                c.entry = lacking_red_team(
                    "exceptional",
                    &["k"],
                    vec![x, exception("x2", "sec", red_team())],
                );
                c.want_exceptions = &["x2"];
            },
        ),
        with(
            base("an exception by a key of no approver waives nothing"),
            |c| {
                c.tier = "exceptional";
                c.entry = lacking_red_team(
                    "exceptional",
                    &["k"],
                    vec![exception("x1", "stranger", red_team())],
                );
                c.want = Err(ApprovalInvalid)
            },
        ),
        with(
            base("an exception by an approver outside its model scope"),
            |c| {
                c.tier = "critical-x";
                c.entry = lacking_red_team(
                    "critical-x",
                    &["alice-1"],
                    vec![exception("x1", "team-b", Waiver::Role("security".into()))],
                );
                c.want = Err(ApprovalInvalid)
            },
        ),
        with(
            base("an exception by an approver without the tier's exception role"),
            |c| {
                c.tier = "exceptional";
                c.entry = lacking_red_team(
                    "exceptional",
                    &["k"],
                    vec![exception("x1", "alice-1", red_team())],
                );
                c.want = Err(ApprovalInvalid)
            },
        ),
        with(base("an exception waives a quorum role"), |c| {
            c.tier = "critical-x";
            c.entry = lacking_red_team(
                "critical-x",
                &["alice-1"],
                vec![exception("x-sec", "sec", Waiver::Role("security".into()))],
            );
            c.want_exceptions = &["x-sec"];
        }),
        with(base("a role waiver does not replace every signer"), |c| {
            c.tier = "critical-x";
            let x = vec![
                exception("x-sec", "sec", Waiver::Role("security".into())),
                exception("x-own", "sec", Waiver::Role("owner".into())),
            ];
            // Signed by no configured approver at all.
            c.entry = lacking_red_team("critical-x", &["stranger"], x);
            c.want = Err(ApprovalInvalid)
        }),
        with(base("only the role waiver the record needs is used"), |c| {
            c.tier = "critical-x";
            let x = vec![
                exception("x-own", "sec", Waiver::Role("owner".into())),
                exception("x-sec", "sec", Waiver::Role("security".into())),
            ];
            c.entry = lacking_red_team("critical-x", &["alice-1"], x);
            c.want_exceptions = &["x-sec"];
        }),
        with(
            base("a quorum-role waiver in a tier without exceptions"),
            |c| {
                c.tier = "critical";
                c.entry = lacking_red_team(
                    "critical",
                    &["alice-1"],
                    vec![exception("x-sec", "sec", Waiver::Role("security".into()))],
                );
                c.want = Err(ApprovalInvalid)
            },
        ),
        with(base("an expired role waiver"), |c| {
            c.tier = "critical-x";
            let x = exception_with("x-sec", "sec", Waiver::Role("security".into()), |x| {
                x.iat = NOW - 200;
                x.exp = NOW - 1;
            });
            c.entry = lacking_red_team("critical-x", &["alice-1"], vec![x]);
            c.want = Err(ApprovalExpired)
        }),
    ];
    for case in cases {
        let caller_value;
        let caller_view = match case.caller {
            None => CallerView::Missing,
            Some(None) => CallerView::Invalid,
            Some(Some(sub)) => {
                caller_value = caller(case.caller_iss, sub);
                CallerView::Verified(&caller_value)
            }
        };
        let d = digest();
        let input = Input {
            caller: caller_view,
            artefact: if case.artefact_ready {
                ArtefactView::Ready {
                    digest: &d,
                    signer: case.signer,
                }
            } else {
                ArtefactView::Unverified
            },
            approval: if case.registry_down {
                ApprovalView::Unavailable
            } else {
                ApprovalView::Entry(case.entry.as_ref())
            },
            model: case.model,
            now: NOW,
        };
        let mut policy = policy();
        policy.tier_rule = policy.tiers[case.tier].clone();
        policy.tier = case.tier.into();
        let decision = decide(&policy, &input);
        // The traced decision is the same decision, and its steps say why.
        let mut steps = super::trace::Steps::default();
        let traced = super::decide_traced(&policy, &input, &mut steps);
        assert_eq!(summary(&traced), summary(&decision), "case {:?}", case.name);
        let steps = steps.into_steps();
        match &decision {
            Decision::Deny { reason, detail, .. } => assert!(
                steps
                    .iter()
                    .any(|s| s.reason == Some(reason.as_str()) && s.why == *detail),
                "case {:?}: no failed step says {reason}: {detail}; {steps:?}",
                case.name
            ),
            Decision::Allow { record, .. } => assert!(
                steps
                    .iter()
                    .filter(|s| s.index.is_some()
                        && s.index
                            == case.entry.as_ref().and_then(|e| e
                                .records
                                .iter()
                                .position(|c| Arc::ptr_eq(&c.record, record))))
                    .all(|s| !s.failed()),
                "case {:?}: the allowing record has a failed step; {steps:?}",
                case.name
            ),
            Decision::Opened => {}
        }
        let used: Vec<String> = decision
            .exceptions()
            .iter()
            .map(|e| e.claims.jti.clone())
            .collect();
        let got = match decision {
            Decision::Allow { record, .. } => Ok(record.claims.version_id.clone()),
            Decision::Opened => Ok("opened".into()),
            Decision::Deny { reason, .. } => Err(reason),
        };
        assert_eq!(got, case.want.map(String::from), "case {:?}", case.name);
        assert_eq!(used, case.want_exceptions, "case {:?}", case.name);
    }
}

/// Everything a decision says, comparable.
fn summary(
    d: &Decision,
) -> (
    Option<DenyReason>,
    &'static str,
    Option<String>,
    Vec<String>,
) {
    let detail = match d {
        Decision::Deny { detail, .. } => detail,
        _ => "",
    };
    (
        d.reason(),
        detail,
        d.record().map(|r| r.claims.jti.clone()),
        d.exceptions()
            .iter()
            .map(|e| e.claims.jti.clone())
            .collect(),
    )
}

/// A record of the `critical` tier (quorum: owner and security).
fn critical() -> ApprovalClaims {
    let mut c = claims();
    c.tier = "critical".into();
    c
}

fn ev(kind: &str, verdict: &str) -> Evidence {
    Evidence {
        kind: kind.into(),
        uri: "s3://evidence".into(),
        digest: String::new(),
        verdict: verdict.into(),
    }
}

#[test]
fn reasons_have_stable_names_and_indices() {
    let names: Vec<&str> = DenyReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "token_missing",
            "token_invalid",
            "caller_not_allowed",
            "artefact_unverified",
            "artefact_unmanaged",
            "approval_expired",
            "approval_revoked",
            "approval_invalid",
            "deployment_not_bound",
            "model_mismatch",
            "trust_data_unavailable",
            "model_required",
            "request_invalid",
            "request_too_large",
            "route_not_allowed"
        ]
    );
    for (i, r) in DenyReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
    }
}
