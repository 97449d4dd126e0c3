//! PLACEHOLDER (replaced by the kubeinfo branch): Kubernetes' RequestInfo.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub is_resource_request: bool,
    pub path: String,
    pub verb: String,
    pub api_prefix: String,
    pub api_group: String,
    pub api_version: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    pub parts: Vec<String>,
}
#[derive(Debug, thiserror::Error)]
#[error("unreadable")]
pub struct RequestInfoError;
pub fn resolve(
    method: &str,
    path: &str,
    query: Option<&str>,
) -> Result<RequestInfo, RequestInfoError> {
    let parts: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let watch = query.is_some_and(|q| q.contains("watch=true") || q.contains("watch=1"));
    let mut i = RequestInfo {
        path: path.into(),
        ..Default::default()
    };
    let (prefix, rest) = match parts.first().map(String::as_str) {
        Some("api") if parts.len() >= 2 => ("api", &parts[2..]),
        Some("apis") if parts.len() >= 3 => {
            i.api_group = parts[1].clone();
            ("apis", &parts[3..])
        }
        _ => {
            i.verb = method.to_ascii_lowercase();
            return Ok(i);
        }
    };
    i.api_prefix = prefix.into();
    let rest: Vec<String> =
        if rest.first().map(String::as_str) == Some("namespaces") && rest.len() > 2 {
            i.namespace = rest[1].clone();
            rest[2..].to_vec()
        } else {
            rest.to_vec()
        };
    i.is_resource_request = !rest.is_empty();
    i.resource = rest.first().cloned().unwrap_or_default();
    i.name = rest.get(1).cloned().unwrap_or_default();
    i.subresource = rest.get(2).cloned().unwrap_or_default();
    i.verb = match method {
        "GET" if watch => "watch",
        "GET" if i.name.is_empty() => "list",
        "GET" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" if i.name.is_empty() => "deletecollection",
        "DELETE" => "delete",
        _ => "unknown",
    }
    .into();
    Ok(i)
}
pub fn exec_command(query: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("command="))
        .map(str::to_string)
        .collect()
}
