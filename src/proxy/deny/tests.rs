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

#[test]
fn failures_map_pingora_errors_to_one_closed_set_of_words() {
    use super::Failure;
    use pingora::{Error, ErrorSource, ErrorType};
    let of = |t: ErrorType, s: ErrorSource| {
        let mut e = Error::new(t);
        e.esource = s;
        Failure::of(&e).map(|f| (f.status(), f.as_str()))
    };
    let cases = [
        (
            ErrorType::ConnectRefused,
            ErrorSource::Upstream,
            Some((502, "upstream_unavailable")),
        ),
        (
            ErrorType::ConnectTimedout,
            ErrorSource::Upstream,
            Some((504, "upstream_timeout")),
        ),
        (
            ErrorType::ReadTimedout,
            ErrorSource::Upstream,
            Some((504, "upstream_timeout")),
        ),
        (
            ErrorType::ConnectionClosed,
            ErrorSource::Upstream,
            Some((502, "upstream_unavailable")),
        ),
        (ErrorType::ConnectionClosed, ErrorSource::Downstream, None),
        (
            ErrorType::InvalidHTTPHeader,
            ErrorSource::Downstream,
            Some((400, "request_invalid")),
        ),
        (
            ErrorType::HTTPStatus(413),
            ErrorSource::Internal,
            Some((400, "request_invalid")),
        ),
        (
            ErrorType::InternalError,
            ErrorSource::Internal,
            Some((500, "internal_error")),
        ),
    ];
    for (t, s, want) in cases {
        assert_eq!(of(t.clone(), s.clone()), want, "{t:?} from {s:?}");
    }
}
