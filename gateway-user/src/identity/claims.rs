//! Validation of the (signature-checked) claims against one provider's policy, producing the
//! [`Principal`].

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::error::{ClaimProblem, TokenError};
use super::{Principal, ProviderConfig};

fn numeric(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or(TokenError::InvalidClaim {
                claim: name.into(),
                problem: ClaimProblem::NotNumericDate,
            }),
    }
}

fn required(claims: &Map<String, Value>, name: &'static str) -> Result<i64, TokenError> {
    numeric(claims, name)?.ok_or_else(|| TokenError::MissingClaim(name.into()))
}

/// Checks exp, nbf, iat, lifetime, iss, aud, sub and groups, at `now` (seconds since the epoch).
pub(crate) fn validate(
    claims: &Map<String, Value>,
    cfg: &ProviderConfig,
    now: i64,
) -> Result<Principal, TokenError> {
    let skew_u = cfg.clock_skew.as_secs();
    let skew = i64::try_from(skew_u).unwrap_or(i64::MAX);
    let exp = required(claims, "exp")?;
    let iat = required(claims, "iat")?;
    let nbf = numeric(claims, "nbf")?;

    if now >= exp.saturating_add(skew) {
        return Err(TokenError::Expired {
            exp,
            now,
            skew: skew_u,
        });
    }
    if let Some(nbf) = nbf {
        if now.saturating_add(skew) < nbf {
            return Err(TokenError::NotYetValid {
                nbf,
                now,
                skew: skew_u,
            });
        }
    }
    if iat > now.saturating_add(skew) {
        return Err(TokenError::IssuedInFuture {
            iat,
            now,
            skew: skew_u,
        });
    }
    let lifetime = exp.saturating_sub(iat);
    if lifetime < 0 {
        return Err(TokenError::InvalidClaim {
            claim: "exp".into(),
            problem: ClaimProblem::ExpBeforeIat,
        });
    }
    let max = cfg.max_lifetime.as_secs();
    if lifetime as u64 > max {
        return Err(TokenError::LifetimeTooLong {
            provider: cfg.name.clone(),
            lifetime,
            max,
        });
    }

    if claims.get("iss").and_then(Value::as_str) != Some(cfg.issuer.as_str()) {
        // The provider was chosen by this very claim; this guards against future refactors.
        return Err(TokenError::UnknownIssuer(String::new()));
    }

    let audience_ok = match claims.get("aud") {
        None => return Err(TokenError::MissingClaim("aud".into())),
        Some(Value::String(a)) => cfg.audiences.iter().any(|x| x == a),
        Some(Value::Array(items)) => {
            let mut ok = false;
            for item in items {
                let Value::String(a) = item else {
                    return Err(TokenError::InvalidClaim {
                        claim: "aud".into(),
                        problem: ClaimProblem::NotStringOrArray,
                    });
                };
                ok |= cfg.audiences.iter().any(|x| x == a);
            }
            ok
        }
        Some(_) => {
            return Err(TokenError::InvalidClaim {
                claim: "aud".into(),
                problem: ClaimProblem::NotStringOrArray,
            })
        }
    };
    if !audience_ok {
        return Err(TokenError::WrongAudience {
            provider: cfg.name.clone(),
        });
    }

    let subject = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None => return Err(TokenError::MissingClaim("sub".into())),
        Some(_) => {
            return Err(TokenError::InvalidClaim {
                claim: "sub".into(),
                problem: ClaimProblem::NotString,
            })
        }
    };

    let groups = match claims.get(&cfg.groups_claim) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(g)) => vec![g.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(g) => Ok(g.clone()),
                _ => Err(TokenError::InvalidClaim {
                    claim: cfg.groups_claim.clone(),
                    problem: ClaimProblem::NotStringOrArray,
                }),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(TokenError::InvalidClaim {
                claim: cfg.groups_claim.clone(),
                problem: ClaimProblem::NotStringOrArray,
            })
        }
    };

    // A projected service-account token names its pod; a token whose claim is there but not
    // as Kubernetes writes it is refused (it cannot be bound to a pod).
    let pod_uid = match claims.get("kubernetes.io") {
        None | Some(Value::Null) => None,
        Some(Value::Object(k)) => match k.get("pod") {
            None | Some(Value::Null) => None,
            Some(pod) => match pod.get("uid") {
                Some(Value::String(uid)) if !uid.is_empty() => Some(uid.clone()),
                _ => {
                    return Err(TokenError::InvalidClaim {
                        claim: "kubernetes.io".into(),
                        problem: ClaimProblem::NotPodClaim,
                    })
                }
            },
        },
        Some(_) => {
            return Err(TokenError::InvalidClaim {
                claim: "kubernetes.io".into(),
                problem: ClaimProblem::NotPodClaim,
            })
        }
    };

    Ok(Principal {
        provider: cfg.name.clone(),
        issuer: cfg.issuer.clone(),
        subject,
        groups,
        // exp > now - skew here, and now is after the epoch, so exp is not very negative.
        expires_at: UNIX_EPOCH + Duration::from_secs(u64::try_from(exp).unwrap_or(0)),
        pod_uid,
    })
}
