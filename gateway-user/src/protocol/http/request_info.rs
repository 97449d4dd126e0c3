//! Kubernetes request classification: which verb, group, version, namespace, resource,
//! subresource and name an API server request is about, as the API server itself decides
//! before its authorizer runs. A port of `RequestInfoFactory.NewRequestInfo` in
//! k8s.io/apiserver/pkg/endpoints/request/requestinfo.go (with the API prefixes `api`,
//! groupless, and `apis`), so that the rules judge what the server will do.
//!
//! Where upstream is lenient with input a client never sends (`..` segments, empty segments,
//! an encoded `/`, a method Kubernetes gives no verb), this port refuses it: the server's
//! router and this classification might read such a path differently, and a request that
//! cannot be classified is denied by the caller.

use thiserror::Error;

/// Paths longer than this are refused: Kubernetes names are at most 253 bytes, and the
/// longest real path (a proxy subpath aside) is a few of them.
pub const MAX_PATH_BYTES: usize = 8 * 1024;

/// Queries longer than this are refused (an exec's command is in it).
pub const MAX_QUERY_BYTES: usize = 64 * 1024;

/// What a Kubernetes API request is about (upstream's `RequestInfo`, without the selectors).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// About an API resource or subresource (else a non-resource URL: `/version`, `/healthz`,
    /// discovery under `/api` and `/apis`, `/openapi/...`).
    pub is_resource_request: bool,
    /// The URL path, percent-decoded.
    pub path: String,
    /// The Kubernetes verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, `proxy`); for non-resource requests the lower-case HTTP method.
    pub verb: String,
    /// `api` (the legacy core group) or `apis`.
    pub api_prefix: String,
    /// Empty for the core group.
    pub api_group: String,
    pub api_version: String,
    /// Empty for cluster-scoped resources and for requests across all namespaces.
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    /// Empty when the path names no object (list, watch, create, deletecollection) unless a
    /// list or watch selects one name by `fieldSelector=metadata.name=…`.
    pub name: String,
    /// The path's parts from the resource on: `[resource, name, subresource, …]`.
    pub parts: Vec<String>,
}

/// Why a request could not be classified; the caller denies it.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestInfoError {
    #[error("the path does not start with `/`")]
    NotAbsolute,
    #[error("the path is longer than {MAX_PATH_BYTES} bytes")]
    PathTooLong,
    #[error("the query is longer than {MAX_QUERY_BYTES} bytes")]
    QueryTooLong,
    #[error("bad percent-encoding in the {0}")]
    BadPercent(&'static str),
    #[error("the {0} is not UTF-8 once decoded")]
    NotUtf8(&'static str),
    #[error("the {0} has a control character, space or `#`")]
    BadCharacter(&'static str),
    #[error("the path has an encoded `/` (%2F) or `\\`")]
    EncodedSlash,
    #[error("the path has an empty segment (`//`)")]
    EmptySegment,
    #[error("the path has a `.` or `..` segment")]
    DotSegment,
    #[error("the query has a `;` (the server skips such parameters)")]
    Semicolon,
    #[error("`/{0}/` is not followed by a resource")]
    NoResource(String),
    #[error("method `{0}` has no Kubernetes verb")]
    UnknownMethod(String),
}

/// Verbs given by a path prefix: `/api/v1/watch/pods`, `/api/v1/proxy/nodes/n1`.
const SPECIAL_VERBS: &[&str] = &["proxy", "watch"];
/// Path-prefix verbs after which no subresource is read.
const SPECIAL_VERBS_NO_SUBRESOURCES: &[&str] = &["proxy"];
/// Subresources of a namespace: `/api/v1/namespaces/ns/status` is the namespace's status, not
/// a resource `status` in namespace `ns`.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Classifies a request: `path` as it came (percent-encoded, no query), `query` without `?`.
pub fn resolve(
    method: &str,
    path: &str,
    query: Option<&str>,
) -> Result<RequestInfo, RequestInfoError> {
    let path = decode_path(path)?;
    let query = match query {
        Some(q) => parse_query(q, true)?,
        None => Vec::new(),
    };
    let mut info = RequestInfo {
        is_resource_request: false,
        verb: method.to_ascii_lowercase(),
        ..RequestInfo::default()
    };
    let all = split_path(&path)?;
    info.path = path;
    // Non-resource requests until proven otherwise.
    if all.len() < 3 {
        return Ok(info);
    }
    let prefix = all[0].as_str();
    if prefix != "api" && prefix != "apis" {
        return Ok(info);
    }
    let mut parts = &all[1..];
    if prefix == "apis" {
        // `/apis/{group}/{version}/{resource}`: four parts with the prefix.
        if parts.len() < 3 {
            return Ok(info);
        }
        info.api_group = parts[0].clone();
        parts = &parts[1..];
    }
    info.api_prefix = prefix.to_string();
    info.is_resource_request = true;
    info.api_version = parts[0].clone();
    parts = &parts[1..];

    // A path-prefix verb (`/watch/`) is never turned into list or watch below, so its
    // selectors promote no name (as upstream).
    if SPECIAL_VERBS.contains(&parts[0].as_str()) {
        if parts.len() < 2 {
            return Err(RequestInfoError::NoResource(parts[0].clone()));
        }
        info.verb = parts[0].clone();
        parts = &parts[1..];
    } else {
        // Methods are case-sensitive (Go's net/http): `get` is not GET.
        info.verb = match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            // Upstream gives these an empty verb, which no RBAC rule grants; here an empty
            // verb would pass every rule that names verbs, so it is refused instead.
            other => return Err(RequestInfoError::UnknownMethod(other.to_string())),
        }
        .to_string();
    }

    // `/namespaces/{namespace}/{resource}/…`: parts relative to the resource. The namespace
    // object itself (`/namespaces/{namespace}`, its `status` and `finalize`) keeps its parts,
    // with the namespace as both namespace and name.
    if parts[0] == "namespaces" && parts.len() > 1 {
        info.namespace = parts[1].clone();
        if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2].as_str()) {
            parts = &parts[2..];
        }
    }
    info.parts = parts.to_vec();
    if parts.len() >= 3 && !SPECIAL_VERBS_NO_SUBRESOURCES.contains(&info.verb.as_str()) {
        info.subresource = parts[2].clone();
    }
    if parts.len() >= 2 {
        info.name = parts[1].clone();
    }
    info.resource = parts[0].clone();

    // No name and a GET: a list, or a watch.
    if info.name.is_empty() && info.verb == "get" {
        let opts = list_options(&query);
        info.verb = if opts.watch { "watch" } else { "list" }.into();
        if let Some(name) = opts.field_selector_name {
            info.name = name;
        }
    }
    if info.name.is_empty() && info.verb == "delete" {
        info.verb = "deletecollection".into();
    }
    Ok(info)
}

/// What of upstream's `ListOptions` decides the verb and name.
struct ListOptions {
    watch: bool,
    field_selector_name: Option<String>,
}

/// Upstream decodes the query into `ListOptions`; when that fails (a bad field selector, a
/// `limit` that is not a number) it keeps only `watch` and promotes no name.
fn list_options(query: &[(String, String)]) -> ListOptions {
    let first = |key: &str| {
        query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    // Go's `Convert_Slice_string_To_bool`: only "0" and "false" (any case) are false; an
    // empty value is true.
    let watch = first("watch").is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"));
    let ints_ok = ["limit", "timeoutSeconds"]
        .iter()
        .all(|k| first(k).is_none_or(go_parse_int));
    let selector = first("fieldSelector").map(parse_field_selector);
    let field_selector_name = match selector {
        Some(Ok(terms)) if ints_ok => terms
            .into_iter()
            .find(|(field, op, _)| field == "metadata.name" && *op != "!=")
            .map(|(_, _, value)| value)
            .filter(|name| is_path_segment_name(name)),
        _ => None,
    };
    ListOptions {
        watch,
        field_selector_name,
    }
}

/// Go's `strconv.ParseInt(s, 10, 64)` succeeds (Rust's parse takes the same: an optional
/// sign, decimal digits, in range).
fn go_parse_int(v: &str) -> bool {
    v.parse::<i64>().is_ok()
}

/// k8s.io/apimachinery/pkg/fields `ParseSelector`: terms split at unescaped `,`, sorted, each
/// `field op value` with op `!=`, `==` or `=` (the first operator found from the left), values
/// unescaped (`\\`, `\,`, `\=`). The terms as (field, op, value), in sorted order.
fn parse_field_selector(selector: &str) -> Result<Vec<(String, &'static str, String)>, ()> {
    let mut terms = split_terms(selector);
    terms.sort();
    let mut out = Vec::new();
    for term in terms.into_iter().filter(|t| !t.is_empty()) {
        let (lhs, op, rhs) = split_term(&term).ok_or(())?;
        out.push((lhs.to_string(), op, unescape_value(rhs)?));
    }
    Ok(out)
}

fn split_terms(selector: &str) -> Vec<String> {
    if selector.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut current = String::new();
    let mut chars = selector.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ',' => terms.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    terms.push(current);
    terms
}

fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for op in ["!=", "==", "="] {
            if let Some(rhs) = rest.strip_prefix(op) {
                return Some((&term[..i], op, rhs));
            }
        }
    }
    None
}

fn unescape_value(v: &str) -> Result<String, ()> {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                _ => return Err(()),
            },
            // An unescaped `,` or `=` in a value is invalid.
            ',' | '=' => return Err(()),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// apimachinery's `content.IsPathSegmentName`: a name usable as one path segment.
fn is_path_segment_name(name: &str) -> bool {
    name != "." && name != ".." && !name.contains(['/', '%'])
}

/// The path's segments, leading and trailing `/` trimmed as upstream does; an empty or dot
/// segment inside is refused.
fn split_path(path: &str) -> Result<Vec<String>, RequestInfoError> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    trimmed
        .split('/')
        .map(|s| match s {
            "" => Err(RequestInfoError::EmptySegment),
            "." | ".." => Err(RequestInfoError::DotSegment),
            s => Ok(s.to_string()),
        })
        .collect()
}

/// The path percent-decoded, as Go's `URL.Path`; refused where a decoded byte could read
/// differently to the server's router than to this classification.
fn decode_path(raw: &str) -> Result<String, RequestInfoError> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(RequestInfoError::PathTooLong);
    }
    if !raw.starts_with('/') {
        return Err(RequestInfoError::NotAbsolute);
    }
    if raw
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'#')
    {
        return Err(RequestInfoError::BadCharacter("path"));
    }
    let bytes = percent_decode(raw, false).ok_or(RequestInfoError::BadPercent("path"))?;
    // An encoded `/` splits a segment for this classification and not for the router (or the
    // other way round); `\` some servers read as `/`.
    let encoded_slash = raw.as_bytes().windows(3).any(|w| {
        w[0] == b'%' && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c"))
    });
    if encoded_slash || raw.contains('\\') {
        return Err(RequestInfoError::EncodedSlash);
    }
    let text = String::from_utf8(bytes).map_err(|_| RequestInfoError::NotUtf8("path"))?;
    if text.chars().any(|c| c.is_control() || c == '#') {
        return Err(RequestInfoError::BadCharacter("path"));
    }
    Ok(text)
}

/// `%XX` decoded (and `+` as a space in a query); `None` on a `%` without two hex digits.
fn percent_decode(raw: &str, plus_is_space: bool) -> Option<Vec<u8>> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                // Checked first: `from_str_radix` would take a sign (`%+1`).
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Go's `url.ParseQuery`: pairs split at `&`, key and value at the first `=`, each
/// query-unescaped, in order. `strict`: a pair Go would skip (a `;` in it, bad
/// percent-encoding, not UTF-8 once decoded) is an error; otherwise it is skipped, as the
/// server does.
fn parse_query(query: &str, strict: bool) -> Result<Vec<(String, String)>, RequestInfoError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(RequestInfoError::QueryTooLong);
    }
    let mut out = Vec::new();
    for pair in query.split('&') {
        let bad = |e: RequestInfoError| if strict { Err(e) } else { Ok(()) };
        if pair.contains(';') {
            bad(RequestInfoError::Semicolon)?;
            continue;
        }
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (percent_decode(k, true), percent_decode(v, true)) else {
            bad(RequestInfoError::BadPercent("query"))?;
            continue;
        };
        if std::str::from_utf8(&k).is_err() || std::str::from_utf8(&v).is_err() {
            bad(RequestInfoError::NotUtf8("query"))?;
        }
        // Lenient: the server's Go strings keep the bytes; they are kept here lossily.
        out.push((
            String::from_utf8_lossy(&k).into_owned(),
            String::from_utf8_lossy(&v).into_owned(),
        ));
    }
    Ok(out)
}

/// A query's pairs decoded as the server decodes them; `Err` on a pair it would skip (so that
/// a value the gateway judges is never one the server reads otherwise).
pub fn query_pairs(query: &str) -> Result<Vec<(String, String)>, RequestInfoError> {
    parse_query(query, true)
}

/// The command of a `pods/exec` request (`command=` repeated, in order), decoded as the
/// server decodes it. Call it on a query `resolve` accepted.
pub fn exec_command(query: &str) -> Vec<String> {
    parse_query(query, false)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v)
        .collect()
}

/// The streams and container of a `pods/exec` or `pods/attach` request (`PodExecOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// Empty: the pod's only (or default) container.
    pub container: String,
}

/// The flags of a `pods/exec` or `pods/attach` query, decoded as the server decodes them.
pub fn exec_options(query: &str) -> ExecOptions {
    let pairs = parse_query(query, false).unwrap_or_default();
    let first = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let flag = |key: &str| first(key).is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"));
    ExecOptions {
        stdin: flag("stdin"),
        stdout: flag("stdout"),
        stderr: flag("stderr"),
        tty: flag("tty"),
        container: first("container").unwrap_or_default().to_string(),
    }
}

#[cfg(test)]
#[path = "request_info_tests.rs"]
mod tests;
