//! Who is calling: the bearer token (verified, cached by `identity`), the mTLS client
//! certificate's SPIFFE identity, or both, as `[callers] auth` says.
//!
//! Reads credentials only: it must not look at the model, the artefact or the policy.

use std::sync::Arc;

use pingora::http::RequestHeader;
use pingora::proxy::Session;

use crate::identity::config::CallerAuth;
use crate::identity::mtls::CertCaller;
use crate::identity::{bearer, bearer_bytes, Caller, TokenError};
use crate::proxy::gate::Gate;

impl Gate {
    /// The caller's token, verified; an unknown `kid` waits for the issuer's refetch.
    pub(crate) async fn token_caller(
        &self,
        req: &RequestHeader,
        now: u64,
    ) -> Result<Arc<Caller>, Option<TokenError>> {
        match req.headers.get(http::header::AUTHORIZATION) {
            None => Err(None),
            Some(v) => {
                // The usual case: a token this thread verified recently, found by its bytes.
                let recent = bearer_bytes(v.as_bytes()).and_then(|t| self.tokens.recent(t, now));
                if let Some(outcome) = recent {
                    return outcome.map_err(Some);
                }
                match bearer(v.as_bytes()) {
                    None => Err(Some(TokenError::Malformed)),
                    Some(token) => self.tokens.verify_waiting(token, now).await.map_err(Some),
                }
            }
        }
    }

    /// Who is calling, by token, client certificate or both, as `caller_auth` says.
    /// `Err(None)`: no credentials at all.
    pub(crate) async fn caller(
        &self,
        session: &Session,
        now: u64,
    ) -> Result<Arc<Caller>, Option<TokenError>> {
        let certificate = || {
            session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .and_then(|s| s.extension.get::<CertCaller>())
                .map(|c| c.0.clone())
        };
        let req = session.req_header();
        match self.caller_auth {
            CallerAuth::Token => self.token_caller(req, now).await,
            CallerAuth::Certificate => certificate().ok_or(None),
            CallerAuth::TokenOrCertificate => {
                if req.headers.contains_key(http::header::AUTHORIZATION) {
                    self.token_caller(req, now).await
                } else {
                    certificate().ok_or(None)
                }
            }
            CallerAuth::TokenAndCertificate => {
                let cert = certificate().ok_or(None)?;
                let token = self.token_caller(req, now).await?;
                if token.sub == cert.sub {
                    Ok(token)
                } else {
                    Err(Some(TokenError::Claims(
                        "token and client certificate name different callers",
                    )))
                }
            }
        }
    }
}
