//! PLACEHOLDER (replaced by the kubeinfo branch): the `requests:` rules.
use super::request_info::RequestInfo;
use crate::{
    policy::{Policy, Who},
    protocol::action_gate::Judgement,
};
pub enum HttpAction<'a> {
    Kubernetes {
        info: &'a RequestInfo,
        exec: Option<&'a [String]>,
    },
    Plain {
        method: &'a str,
        path: &'a str,
    },
}
pub fn judge<'p>(
    _policy: &'p Policy,
    _who: &Who<'_>,
    _target: &str,
    req: &HttpAction<'_>,
) -> Judgement<'p> {
    match req {
        HttpAction::Kubernetes { info, .. } if info.verb == "delete" => Judgement::Denied {
            rule: "placeholder".into(),
            why: "delete".into(),
        },
        _ => Judgement::Allowed,
    }
}
