//! Why a session ended, as one of a few fixed causes: the `ended_by` and `error` texts of a
//! `connection_close` are for people (they quote rule names, approvers, durations) and must never
//! become label values, or every revocation reason would be a new time series.

/// The end causes a metric may carry. `Other` takes whatever is not recognised, so the label
/// set stays bounded whatever a future text says. (No `shutdown`: on SIGTERM the gateway waits
/// for sessions to end on their own, and those still open when it exits write no close.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndCause {
    /// The agent ended it (PostgreSQL Terminate, or it closed its socket; a TCP session whose
    /// both directions finished normally).
    ClientClosed,
    /// The target closed the connection.
    ServerClosed,
    /// The agent's token reached its `exp`.
    TokenExpired,
    /// A new policy no longer allows the session.
    PolicyWithdrawn,
    /// An operator revoked the identity or workload.
    Revoked,
    /// No traffic for the gateway's idle timeout.
    Idle,
    /// A connection failed, or the gateway ended it for a protocol or masking problem.
    Error,
    Other,
}

impl EndCause {
    #[cfg(test)]
    pub const ALL: [EndCause; 8] = [
        EndCause::ClientClosed,
        EndCause::ServerClosed,
        EndCause::TokenExpired,
        EndCause::PolicyWithdrawn,
        EndCause::Revoked,
        EndCause::Idle,
        EndCause::Error,
        EndCause::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndCause::ClientClosed => "client_closed",
            EndCause::ServerClosed => "server_closed",
            EndCause::TokenExpired => "token_expired",
            EndCause::PolicyWithdrawn => "policy_withdrawn",
            EndCause::Revoked => "revoked",
            EndCause::Idle => "idle",
            EndCause::Error => "error",
            EndCause::Other => "other",
        }
    }

    /// The cause of a `connection_close` with these `ended_by` and `error` fields. The texts
    /// matched are the ones the handlers write (protocol/tcp, protocol/postgres/session.rs and
    /// relay, proxy/sessions.rs, proxy/revocations.rs); the unit tests below quote each of them
    /// and make the ones they can with the producers' own code.
    pub fn of(ended_by: Option<&str>, error: Option<&str>) -> EndCause {
        let Some(by) = ended_by.filter(|s| !s.is_empty()) else {
            return match error.filter(|s| !s.is_empty()) {
                None => EndCause::ClientClosed,
                // The TCP relay's idle timeout is an error without `ended_by`.
                Some(e) if e.starts_with("no bytes in either direction") => EndCause::Idle,
                Some(_) => EndCause::Error,
            };
        };
        const CAUSES: &[(&str, EndCause)] = &[
            ("agent closed", EndCause::ClientClosed),
            ("target closed", EndCause::ServerClosed),
            ("token expired", EndCause::TokenExpired),
            ("revoked by ", EndCause::Revoked),
            ("idle for ", EndCause::Idle),
            ("agent connection failed", EndCause::Error),
            ("target connection failed", EndCause::Error),
            ("gateway: ", EndCause::Error),
        ];
        if let Some((_, c)) = CAUSES.iter().find(|(p, _)| by.starts_with(p)) {
            return *c;
        }
        // "policy <version> no longer allows this session: <reason>" (the version varies).
        if by.starts_with("policy ") && by.contains(" no longer allows this session") {
            return EndCause::PolicyWithdrawn;
        }
        EndCause::Other
    }
}

#[cfg(test)]
mod tests {
    use super::EndCause::{self, *};

    #[test]
    fn every_text_the_relays_write_has_its_cause() {
        let cases: &[(Option<&str>, Option<&str>, EndCause)] = &[
            // PostgreSQL: Terminate; TCP: both directions ended.
            (None, None, ClientClosed),
            (Some(""), None, ClientClosed),
            (Some("agent closed without Terminate"), None, ClientClosed),
            (
                Some("agent closed while a statement was held"),
                Some("x"),
                ClientClosed,
            ),
            (Some("target closed"), None, ServerClosed),
            (Some("token expired"), None, TokenExpired),
            (
                Some("policy 3f2a no longer allows this session: no rule allows it"),
                None,
                PolicyWithdrawn,
            ),
            (Some("revoked by root (uid 0): leaked token"), None, Revoked),
            (Some("idle for 300s"), None, Idle),
            (None, Some("no bytes in either direction for 5s"), Idle),
            (
                None,
                Some("client to upstream: connection reset by peer"),
                Error,
            ),
            (None, Some("upstream to client: broken pipe"), Error),
            (Some("agent connection failed"), Some("io"), Error),
            (Some("target connection failed"), Some("io"), Error),
            (
                Some("gateway: a result it could not mask"),
                Some("x"),
                Error,
            ),
            (
                Some("gateway: a setting it cannot follow"),
                Some("x"),
                Error,
            ),
            (
                Some("gateway: a trial it could not carry out"),
                Some("x"),
                Error,
            ),
            (
                Some("gateway: out of step with the target"),
                Some("x"),
                Error,
            ),
            (
                Some("gateway: the agent broke the protocol or a limit"),
                Some("x"),
                Error,
            ),
            (Some("ended by the gateway"), None, Other),
            (Some("something nobody wrote yet"), None, Other),
        ];
        for (by, error, want) in cases {
            assert_eq!(EndCause::of(*by, *error), *want, "{by:?} / {error:?}");
        }
    }

    /// The texts as their producers make them: a reworded one fails here, instead of quietly
    /// counting as `other`.
    #[test]
    fn texts_made_by_their_producers_have_their_cause() {
        use crate::protocol::postgres::relay::RelayError;
        let revoked = crate::proxy::revocations::Revocation {
            subject: Some("s".into()),
            issuer: None,
            workload: None,
            reason: "leaked".into(),
            at_ms: 0,
            by: "root".into(),
        };
        assert_eq!(EndCause::of(Some(&revoked.message()), None), Revoked);
        let idle = crate::protocol::tcp::RelayError::Idle(std::time::Duration::from_secs(5));
        assert_eq!(EndCause::of(None, Some(&idle.to_string())), Idle);
        for (e, want) in [
            (RelayError::LeftWhileHeld, ClientClosed),
            (RelayError::Unmaskable("x".into()), Error),
            (RelayError::UnsafeSetting("a".into(), "b".into()), Error),
            (RelayError::Trial("x".into()), Error),
            (RelayError::OutOfStep("x"), Error),
            (RelayError::TooManyNamed, Error),
            (RelayError::StalledWhileHeld, Error),
        ] {
            assert_eq!(
                EndCause::of(Some(e.ended_by()), Some(&e.to_string())),
                want,
                "{e}"
            );
        }
    }

    #[test]
    fn texts_that_merely_mention_a_cause_are_not_taken_for_it() {
        // A revocation reason or rule name quoted inside another text must not decide.
        assert_eq!(EndCause::of(Some("other: revoked by x"), None), Other);
        assert_eq!(
            EndCause::of(Some("a policy that no longer allows"), None),
            Other
        );
        assert_eq!(EndCause::of(Some("Token Expired"), None), Other);
    }

    #[test]
    fn names_are_distinct_label_values() {
        let names: std::collections::HashSet<_> =
            EndCause::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), EndCause::ALL.len());
        assert!(names
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }
}
