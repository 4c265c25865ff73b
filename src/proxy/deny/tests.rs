use super::*;

#[test]
fn reasons_have_stable_statuses() {
    for r in DenyReason::ALL {
        let want = match r {
            DenyReason::TokenMissing | DenyReason::TokenInvalid => 401,
            DenyReason::ModelRequired | DenyReason::RequestInvalid => 400,
            DenyReason::RequestTooLarge => 413,
            DenyReason::ArtefactUnverified | DenyReason::TrustDataUnavailable => 503,
            DenyReason::RouteNotAllowed => 403,
            _ => 403,
        };
        assert_eq!(r.status(), want, "{r}");
    }
}
