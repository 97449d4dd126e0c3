//! The resource API: RequestInfo-style parsing of the path, then get/list/watch/create/update/
//! patch/delete/deletecollection over the [`Store`], errors as `Status` objects.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::{
    codec::{self, BodyType, Output},
    discovery,
    log::RequestLog,
    openapi, patch,
    select::Selectors,
    store::{plural_group, resource, Event, ResourceDef, Store, StoreError},
    table::{self, Include},
};

/// What the server answers.
pub enum Reply {
    Full {
        status: u16,
        content_type: String,
        body: Bytes,
    },
    /// A watch: chunks as they come, the connection held open.
    Stream {
        content_type: String,
        rx: mpsc::Receiver<Bytes>,
    },
}

impl Reply {
    pub fn value(status: u16, out: Output, v: &Value) -> Reply {
        let (body, ct) = codec::encode(out, v);
        Reply::Full {
            status,
            content_type: ct.to_string(),
            body,
        }
    }

    /// A Status error in the negotiated form (JSON if negotiation itself failed).
    pub fn status(out: Output, code: u16, reason: &str, message: &str) -> Reply {
        Reply::value(code, out, &codec::status(code, reason, message, None))
    }

    pub fn text(status: u16, content_type: &str, body: impl Into<Bytes>) -> Reply {
        Reply::Full {
            status,
            content_type: content_type.to_string(),
            body: body.into(),
        }
    }
}

/// A request, as the API handlers see it (after authentication).
pub struct ApiRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Vec<(String, String)>,
    pub accept: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub body: Bytes,
    pub server_addr: &'a str,
}

impl ApiRequest<'_> {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn params(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("1" | "true" | "True"))
    }
}

/// Percent-decoding of a query component (`+` is a space, as Go's url.ParseQuery reads it).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    fn dec(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (b[i], hex) {
                (b'+', _) => out.push(b' '),
                (b'%', Some(v)) => {
                    out.push(v);
                    i += 2;
                }
                (c, _) => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (dec(k), dec(v)),
            None => (dec(p), String::new()),
        })
        .collect()
}

/// A resource request, as Kubernetes' RequestInfo resolves the path.
#[derive(Debug)]
pub struct ResourcePath<'a> {
    pub def: &'static ResourceDef,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub subresource: Option<&'a str>,
}

/// `None`: not a resource path the stand-in serves (the caller answers 404).
pub fn resolve(path: &str) -> Option<ResourcePath<'_>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, "v1", rest @ ..] => (*g, rest),
        _ => return None,
    };
    let (namespace, rest): (Option<&str>, Vec<&str>) = match rest {
        // /api/v1/namespaces/NAME/status (or finalize) is the namespace's own subresource.
        ["namespaces", ns, r, rest @ ..]
            if !(group.is_empty() && matches!(*r, "status" | "finalize")) =>
        {
            (Some(*ns), [&[*r][..], rest].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let def = resource(group, rest.first()?)?;
    if !def.namespaced && namespace.is_some() {
        return None;
    }
    let (name, subresource) = match rest.as_slice() {
        [_] => (None, None),
        [_, n] => (Some(*n), None),
        [_, n, s] => (Some(*n), Some(*s)),
        _ => return None,
    };
    if def.namespaced && namespace.is_none() && name.is_some() {
        // A namespaced object addressed without its namespace.
        return None;
    }
    Some(ResourcePath {
        def,
        namespace,
        name,
        subresource,
    })
}

fn store_error(out: Output, e: StoreError, def: &ResourceDef, name: &str) -> Reply {
    let (code, reason) = match &e {
        StoreError::NotFound(_) => (404, "NotFound"),
        StoreError::AlreadyExists(_) => (409, "AlreadyExists"),
        StoreError::Conflict(_) => (409, "Conflict"),
        StoreError::Invalid(_) => (422, "Invalid"),
    };
    let details = json!({"name": name, "group": def.group, "kind": def.plural});
    Reply::value(
        code,
        out,
        &codec::status(code, reason, &e.to_string(), Some(details)),
    )
}

fn not_found(out: Output, def: &ResourceDef, name: &str) -> Reply {
    store_error(
        out,
        StoreError::NotFound(format!("{} \"{name}\" not found", plural_group(def))),
        def,
        name,
    )
}

/// Discovery and the other non-resource paths.
pub fn non_resource(req: &ApiRequest<'_>, aggregated_discovery: bool) -> Option<Reply> {
    if req.method != "GET" {
        return None;
    }
    let json_out = |v: Value| Some(Reply::value(200, Output::Json, &v));
    let agg = aggregated_discovery && discovery::wants_aggregated(req.accept);
    let aggregated = |core: bool| {
        Some(Reply::Full {
            status: 200,
            content_type: discovery::AGGREGATED_V2.to_string(),
            body: Bytes::from(serde_json::to_vec(&discovery::aggregated(core)).unwrap_or_default()),
        })
    };
    match req.path.trim_end_matches('/') {
        "/version" => json_out(discovery::version()),
        "/api" if agg => aggregated(true),
        "/apis" if agg => aggregated(false),
        "/api" => json_out(discovery::api_versions(req.server_addr)),
        "/apis" => json_out(discovery::api_group_list()),
        "/healthz" | "/livez" | "/readyz" => Some(Reply::text(200, "text/plain", "ok")),
        "/api/v1" => json_out(discovery::resource_list("", "v1")?),
        "/openapi/v3" => json_out(openapi::root()),
        p if p.starts_with("/openapi/v3/") => json_out(openapi::group_version(p)?),
        p => {
            let rest = p.strip_prefix("/apis/")?;
            let (g, v) = rest.split_once('/')?;
            if v.contains('/') {
                return None;
            }
            json_out(discovery::resource_list(g, v)?)
        }
    }
}

type Shared = Arc<Mutex<Store>>;

fn lock(store: &Shared) -> std::sync::MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|e| e.into_inner())
}

/// `kubectl auth can-i`: the stand-in has no RBAC, every review is allowed (the gateway's
/// tests judge requests in the gateway, not here). The body may be JSON or protobuf.
pub fn self_subject_access_review(req: &ApiRequest<'_>) -> Reply {
    let out = match codec::negotiate(req.accept, false) {
        Ok(o) => o,
        Err(e) => return Reply::status(Output::Json, 406, "NotAcceptable", &e.to_string()),
    };
    if req.method != "POST" {
        return Reply::status(
            out,
            405,
            "MethodNotAllowed",
            "selfsubjectaccessreviews: only create",
        );
    }
    let mut review = match decode(req, out) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if review.get("kind").and_then(Value::as_str) != Some("SelfSubjectAccessReview") {
        return Reply::status(
            out,
            400,
            "BadRequest",
            "the body is not a SelfSubjectAccessReview",
        );
    }
    review["status"] = json!({"allowed": true, "reason": "the kube stand-in has no RBAC"});
    Reply::value(201, out, &review)
}

/// A resource request (not exec, which the server upgrades itself).
pub fn handle(
    store: &Shared,
    log: &RequestLog,
    req: &ApiRequest<'_>,
    rp: &ResourcePath<'_>,
) -> Reply {
    let reads = req.method == "GET";
    let out = match codec::negotiate(req.accept, reads) {
        Ok(o) => o,
        Err(e) => return Reply::status(Output::Json, 406, "NotAcceptable", &e.to_string()),
    };
    let def = rp.def;
    let ns = rp.namespace.unwrap_or("");
    if let Some(sub) = rp.subresource {
        return match (req.method, sub, def.plural) {
            ("GET", "log", "pods") => pod_log(store, out, def, ns, rp.name.unwrap_or("")),
            _ => Reply::status(
                out,
                404,
                "NotFound",
                &format!(
                    "the stand-in does not serve {} {}/{sub}",
                    req.method, def.plural
                ),
            ),
        };
    }
    match (req.method, rp.name) {
        ("GET", Some(name)) => match lock(store).get(def, ns, name) {
            Some(obj) => reply_object(out, def, obj),
            None => not_found(out, def, name),
        },
        ("GET", None) if req.flag("watch") => watch(store, log, req, out, def, rp.namespace),
        ("GET", None) => list(store, req, out, def, rp.namespace),
        ("POST", None) => {
            let obj = match decode(req, out) {
                Ok(v) => v,
                Err(r) => return r,
            };
            if req.param("dryRun").is_some() {
                return Reply::value(201, out, &obj);
            }
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            match lock(store).create(def, ns, obj) {
                Ok(v) => Reply::value(201, out, &v),
                Err(e) => store_error(out, e, def, &name),
            }
        }
        ("PUT", Some(name)) => {
            let obj = match decode(req, out) {
                Ok(v) => v,
                Err(r) => return r,
            };
            match lock(store).update(def, ns, name, obj) {
                Ok(v) => Reply::value(200, out, &v),
                Err(e) => store_error(out, e, def, name),
            }
        }
        ("PATCH", Some(name)) => patch_object(store, req, out, def, ns, name),
        ("DELETE", Some(name)) => match lock(store).delete(def, ns, name) {
            // The real server answers the deleted object for these kinds (a Status only for
            // some), kubectl reads either.
            Ok(v) => Reply::value(200, out, &v),
            Err(e) => store_error(out, e, def, name),
        },
        ("DELETE", None) => {
            let sel = match selectors(req) {
                Ok(s) => s,
                Err(e) => return Reply::status(out, 400, "BadRequest", &e),
            };
            let mut st = lock(store);
            let victims = st.list(def, rp.namespace, &sel);
            for v in &victims {
                let name = v
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let _ = st.delete(def, ns, name);
            }
            let rv = st.resource_version().to_string();
            Reply::value(200, out, &list_value(def, victims, &rv, None))
        }
        (m, _) => Reply::status(
            out,
            405,
            "MethodNotAllowed",
            &format!("the stand-in does not allow {m} on {}", req.path),
        ),
    }
}

fn reply_object(out: Output, def: &ResourceDef, obj: &Value) -> Reply {
    if out == Output::TableJson {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        return Reply::value(
            200,
            out,
            &table::table(def, std::slice::from_ref(obj), Include::Metadata, rv, None),
        );
    }
    Reply::value(200, out, obj)
}

fn decode(req: &ApiRequest<'_>, out: Output) -> Result<Value, Reply> {
    let ty = codec::body_type(req.content_type)
        .map_err(|e| Reply::status(out, 415, "UnsupportedMediaType", &e.to_string()))?;
    if !matches!(ty, BodyType::Json | BodyType::Protobuf) {
        return Err(Reply::status(
            out,
            415,
            "UnsupportedMediaType",
            &format!("{ty:?} is not a content type for {}", req.method),
        ));
    }
    codec::decode_object(ty, &req.body)
        .map_err(|e| Reply::status(out, 400, "BadRequest", &e.to_string()))
}

fn selectors(req: &ApiRequest<'_>) -> Result<Selectors, String> {
    Selectors::parse(req.param("labelSelector"), req.param("fieldSelector"))
        .map_err(|e| e.to_string())
}

fn list_value(def: &ResourceDef, items: Vec<Value>, rv: &str, cont: Option<&str>) -> Value {
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": format!("{}List", def.kind),
        "apiVersion": def.api_version(),
        "metadata": meta,
        "items": items,
    })
}

fn list(
    store: &Shared,
    req: &ApiRequest<'_>,
    out: Output,
    def: &'static ResourceDef,
    ns: Option<&str>,
) -> Reply {
    let sel = match selectors(req) {
        Ok(s) => s,
        Err(e) => return Reply::status(out, 400, "BadRequest", &e),
    };
    let (items, rv) = {
        let st = lock(store);
        (st.list(def, ns, &sel), st.resource_version().to_string())
    };
    // `continue` is the offset into the (sorted) list: good enough for a store that changes
    // little while a client pages.
    let start: usize = match req.param("continue") {
        Some(c) => match c
            .strip_prefix("standin-offset-")
            .and_then(|n| n.parse().ok())
        {
            Some(n) => n,
            None => return Reply::status(out, 400, "BadRequest", "invalid continue token"),
        },
        None => 0,
    };
    let limit = req
        .param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let end = limit.map_or(items.len(), |l| (start + l).min(items.len()));
    let cont = (end < items.len()).then(|| format!("standin-offset-{end}"));
    let page: Vec<Value> = items
        .into_iter()
        .skip(start)
        .take(end.saturating_sub(start))
        .collect();
    if out == Output::TableJson {
        let include = Include::parse(req.param("includeObject"));
        return Reply::value(
            200,
            out,
            &table::table(def, &page, include, &rv, cont.as_deref()),
        );
    }
    Reply::value(200, out, &list_value(def, page, &rv, cont.as_deref()))
}

fn patch_object(
    store: &Shared,
    req: &ApiRequest<'_>,
    out: Output,
    def: &'static ResourceDef,
    ns: &str,
    name: &str,
) -> Reply {
    let ty = match codec::body_type(req.content_type) {
        Ok(t) => t,
        Err(e) => return Reply::status(out, 415, "UnsupportedMediaType", &e.to_string()),
    };
    let patch_doc: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => {
            return Reply::status(
                out,
                400,
                "BadRequest",
                &format!("the patch is not JSON: {e}"),
            )
        }
    };
    let mut st = lock(store);
    let Some(current) = st.get(def, ns, name).cloned() else {
        return not_found(out, def, name);
    };
    let patched = match ty {
        BodyType::MergePatch | BodyType::StrategicMergePatch => {
            Ok(patch::merge(current, &patch_doc))
        }
        BodyType::JsonPatch => patch::json_patch(current, &patch_doc),
        _ => Err(format!("{ty:?} is not a patch type")),
    };
    let mut patched = match patched {
        Ok(v) => v,
        Err(e) => return Reply::status(out, 422, "Invalid", &e),
    };
    // A patch applies to the current version unless it names one.
    if patch_doc.pointer("/metadata/resourceVersion").is_none() {
        if let Some(m) = patched
            .pointer_mut("/metadata")
            .and_then(Value::as_object_mut)
        {
            m.remove("resourceVersion");
        }
    }
    match st.update(def, ns, name, patched) {
        Ok(v) => Reply::value(200, out, &v),
        Err(e) => store_error(out, e, def, name),
    }
}

fn pod_log(store: &Shared, out: Output, def: &ResourceDef, ns: &str, name: &str) -> Reply {
    match lock(store).get(def, ns, name) {
        Some(pod) => {
            let log = pod
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(super::store::LOG_ANNOTATION))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("{name}: started\n{name}: ready\n"));
            Reply::text(200, "text/plain", log)
        }
        None => not_found(out, def, name),
    }
}

/// The wire form of one watch event.
fn watch_frame(out: Output, def: &ResourceDef, ev_type: &str, obj: &Value) -> Bytes {
    let object = if out == Output::TableJson {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        table::table(def, std::slice::from_ref(obj), Include::Metadata, rv, None)
    } else {
        obj.clone()
    };
    if out == Output::Protobuf {
        if let Ok(b) = super::proto::encode_watch_event(ev_type, &object) {
            return Bytes::from(b);
        }
    }
    let mut line =
        serde_json::to_vec(&json!({"type": ev_type, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn watch(
    store: &Shared,
    log: &RequestLog,
    req: &ApiRequest<'_>,
    out: Output,
    def: &'static ResourceDef,
    ns: Option<&str>,
) -> Reply {
    let sel = match selectors(req) {
        Ok(s) => s,
        Err(e) => return Reply::status(out, 400, "BadRequest", &e),
    };
    let rv = req
        .param("resourceVersion")
        .filter(|r| !r.is_empty() && *r != "0");
    let (initial, rx): (Vec<(&str, Value)>, broadcast::Receiver<Event>) = {
        let st = lock(store);
        match rv {
            None => {
                // No resourceVersion: the current state as ADDED events, then changes.
                let objs = st.list(def, ns, &sel);
                (
                    objs.into_iter().map(|o| ("ADDED", o)).collect(),
                    st.subscribe(),
                )
            }
            Some(rv) => {
                let Ok(rv) = rv.parse::<u64>() else {
                    return Reply::status(out, 400, "BadRequest", "invalid resourceVersion");
                };
                let Some((past, rx)) = st.watch_from(rv) else {
                    return Reply::status(
                        out,
                        410,
                        "Expired",
                        &format!("too old resource version: {rv}"),
                    );
                };
                let past = past
                    .into_iter()
                    .filter(|e| e.resource == def.plural && e.group == def.group)
                    .filter(|e| ns.is_none_or(|n| e.namespace == n))
                    .filter(|e| sel.matches(&e.object))
                    .map(|e| (e.kind.as_str(), e.object))
                    .collect();
                (past, rx)
            }
        }
    };
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let (tx, out_rx) = mpsc::channel::<Bytes>(64);
    let ns = ns.map(str::to_string);
    let guard = log.watch_opened();
    tokio::spawn(async move {
        let _guard = guard;
        let mut rx = rx;
        for (t, o) in initial {
            if tx.send(watch_frame(out, def, t, &o)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                ev = rx.recv() => {
                    // Lagged or closed: end the watch, the client lists again.
                    let Ok(ev) = ev else { return };
                    if ev.resource != def.plural || ev.group != def.group
                        || ns.as_deref().is_some_and(|n| n != ev.namespace)
                        || !sel.matches(&ev.object) {
                        continue;
                    }
                    if tx.send(watch_frame(out, def, ev.kind.as_str(), &ev.object)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let content_type = match out {
        Output::Protobuf => "application/vnd.kubernetes.protobuf;stream=watch".to_string(),
        o => o.content_type().to_string(),
    };
    Reply::Stream {
        content_type,
        rx: out_rx,
    }
}
