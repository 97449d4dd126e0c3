//! Kubernetes protobuf bodies (`Content-Type: application/vnd.kubernetes.protobuf`) decoded to
//! the JSON the API server would show for them, so that a protobuf request body is judged,
//! shown to approvers, masked and recorded like a JSON one; and the `Accept` rewriting that
//! asks the API server for JSON replies instead of protobuf ones.
//!
//! kubectl 1.32 sends protobuf for built-in types on create/update (`create rolebinding`,
//! `create secret`, `auth can-i`, ...). A body this module cannot decode completely is an error,
//! and the caller refuses the request: it is never forwarded un-judged.
//!
//! # How: a descriptor set and one generic walker
//! The body is the 4-byte magic `k8s\0` and a `runtime.Unknown` envelope (typeMeta apiVersion
//! and kind, raw, contentEncoding, contentType); `raw` is the object's protobuf message.
//! The message is decoded with `prost-reflect` against `kube_pb.fds`, a descriptor set compiled
//! from the Kubernetes API's own `generated.proto` files, and one generic walker turns any
//! message into the API's JSON. Why not the `k8s-pb` crate's types in production:
//! k8s-pb 0.9 offers prost structs only (no serde, no descriptors), and its snake_case Rust
//! names lose the JSON spelling (`podIP` becomes `pod_ip`), so each of the hundreds of types
//! reachable from a Pod would need hand-written conversion. With a descriptor, the protobuf
//! field names are the JSON names (go-to-protobuf takes them from the Go `json` tags), bar the
//! handful in [`RENAMED`] and [`INLINE`] that `kube_pb_fds.sh` lists by comparing the protos
//! with the API's OpenAPI document. k8s-pb is still used, by the tests: fixtures are encoded
//! with its prost types (generated from the same protos), which checks the descriptor set
//! against an independent encoder.
//!
//! `kube_pb.fds` holds the stable versions (v1, v2) of the built-in groups, from Kubernetes
//! 1.35.0's protos (those of k8s-pb 0.9.0); `kube_pb_fds.sh` regenerates it. Alpha and beta
//! versions, custom resources and any group not in [`GROUPS`] are refused as unknown kinds.
//!
//! # What the JSON is
//! - Field names as in the Kubernetes JSON API; `apiVersion` and `kind` from the envelope.
//! - The types with their own JSON form: `Time` (RFC 3339, seconds; unset is `null`),
//!   `MicroTime` (microseconds), `Duration` (Go's `1h2m3s`), `Quantity` and `IntOrString`
//!   (a string, or a number), `RawExtension` and `FieldsV1` (the embedded JSON, or a nested
//!   protobuf object), `Verbs` and `ExtraValue` (arrays); `bytes` (Secret `data`) as base64.
//! - Omitted: fields not on the wire, and empty strings, lists and maps. `false` and `0` are
//!   kept when they are on the wire: a pointer field such as `automountServiceAccountToken:
//!   false` or `replicas: 0` means something, and the descriptor cannot tell it from a plain
//!   Go bool (which Go's encoder always writes), so showing both is the honest choice.
//!   Present but empty messages are `{}`, as Go's JSON shows them (`status: {}`).
//! - A field number the descriptor does not know is an error, not skipped: a newer API server
//!   would act on a field the approver was never shown.

// The HTTP handler that calls this is being built (issue 19); until then only the tests do.
#![allow(dead_code)]

use std::sync::LazyLock;

use base64::Engine;
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};
use serde_json::{Map, Value as Json};

/// The first bytes of every Kubernetes protobuf body.
pub const MAGIC: &[u8; 4] = b"k8s\0";
/// The media type of Kubernetes protobuf bodies (without parameters).
pub const PROTOBUF_MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Envelopes nested in `RawExtension`s (a `List`'s items) deeper than this are refused.
const MAX_NESTED_ENVELOPES: usize = 4;
/// Message nesting deeper than this is refused (prost's decoder stops at 100 already).
const MAX_DEPTH: usize = 100;

static DESCRIPTOR_SET: &[u8] = include_bytes!("kube_pb.fds");
static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(DESCRIPTOR_SET).map_err(|e| e.to_string()));

const UNKNOWN: &str = "apimachinery.pkg.runtime.Unknown";
const META_V1: &str = "apimachinery.pkg.apis.meta.v1";
const OBJECT_META: &str = "apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "apimachinery.pkg.apis.meta.v1.ListMeta";

/// The built-in API groups and the package of their protos in `kube_pb.fds`. A group not here
/// (a custom resource's, say `rbac.example.com`) is an unknown kind even when a message of the
/// same name exists.
pub const GROUPS: &[(&str, &str)] = &[
    ("", "api.core"),
    ("admission.k8s.io", "api.admission"),
    ("admissionregistration.k8s.io", "api.admissionregistration"),
    ("apidiscovery.k8s.io", "api.apidiscovery"),
    ("apps", "api.apps"),
    ("authentication.k8s.io", "api.authentication"),
    ("authorization.k8s.io", "api.authorization"),
    ("autoscaling", "api.autoscaling"),
    ("batch", "api.batch"),
    ("certificates.k8s.io", "api.certificates"),
    ("coordination.k8s.io", "api.coordination"),
    ("discovery.k8s.io", "api.discovery"),
    ("events.k8s.io", "api.events"),
    ("flowcontrol.apiserver.k8s.io", "api.flowcontrol"),
    ("meta.k8s.io", "apimachinery.pkg.apis.meta"),
    ("networking.k8s.io", "api.networking"),
    ("node.k8s.io", "api.node"),
    ("policy", "api.policy"),
    ("rbac.authorization.k8s.io", "api.rbac"),
    ("resource.k8s.io", "api.resource"),
    ("scheduling.k8s.io", "api.scheduling"),
    ("storage.k8s.io", "api.storage"),
];

/// Kinds of meta/v1 that every group version accepts (client-go sends `DeleteOptions` with the
/// group version of the resource being deleted).
const META_KINDS: &[&str] = &[
    "DeleteOptions",
    "Status",
    "ListOptions",
    "GetOptions",
    "CreateOptions",
    "UpdateOptions",
    "PatchOptions",
];

/// Fields whose JSON name is not their protobuf name: (message, protobuf name, JSON name).
pub const RENAMED: &[(&str, &str, &str)] = &[
    (
        "api.admissionregistration.v1.MutatingWebhookConfiguration",
        "Webhooks",
        "webhooks",
    ),
    (
        "api.admissionregistration.v1.ValidatingWebhookConfiguration",
        "Webhooks",
        "webhooks",
    ),
    (
        "api.admissionregistration.v1.Validation",
        "Expression",
        "expression",
    ),
    ("api.admissionregistration.v1.Variable", "Name", "name"),
    (
        "api.admissionregistration.v1.Variable",
        "Expression",
        "expression",
    ),
    ("api.authentication.v1.BoundObjectReference", "uID", "uid"),
    (
        "api.networking.v1.IngressClassParametersReference",
        "aPIGroup",
        "apiGroup",
    ),
];

/// Fields that are Go structs embedded with `json:",inline"`: their fields are the parent's in
/// JSON (a Volume's `secret` is `volumes[0].secret`, not `volumes[0].volumeSource.secret`).
pub const INLINE: &[(&str, &str)] = &[
    (
        "api.admissionregistration.v1.NamedRuleWithOperations",
        "ruleWithOperations",
    ),
    ("api.admissionregistration.v1.RuleWithOperations", "rule"),
    ("api.core.v1.ConfigMapEnvSource", "localObjectReference"),
    ("api.core.v1.ConfigMapKeySelector", "localObjectReference"),
    ("api.core.v1.ConfigMapProjection", "localObjectReference"),
    ("api.core.v1.ConfigMapVolumeSource", "localObjectReference"),
    ("api.core.v1.EphemeralContainer", "ephemeralContainerCommon"),
    ("api.core.v1.PersistentVolumeSpec", "persistentVolumeSource"),
    ("api.core.v1.Probe", "handler"),
    ("api.core.v1.SecretEnvSource", "localObjectReference"),
    ("api.core.v1.SecretKeySelector", "localObjectReference"),
    ("api.core.v1.SecretProjection", "localObjectReference"),
    ("api.core.v1.Volume", "volumeSource"),
    ("api.networking.v1.IngressRule", "ingressRuleValue"),
    (
        "api.resource.v1.DeviceAllocationConfiguration",
        "deviceConfiguration",
    ),
    (
        "api.resource.v1.DeviceClaimConfiguration",
        "deviceConfiguration",
    ),
    (
        "api.resource.v1.DeviceClassConfiguration",
        "deviceConfiguration",
    ),
];

/// Go named slice types (`type ExtraValue []string`), wrapped in a message with one `items`
/// field in protobuf and a plain array in JSON.
const NAMED_SLICES: &[&str] = &[
    "api.authentication.v1.ExtraValue",
    "api.authorization.v1.ExtraValue",
    "api.certificates.v1.ExtraValue",
    "apimachinery.pkg.apis.meta.v1.Verbs",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubePbError {
    #[error("not a Kubernetes protobuf body (no k8s\\0 magic)")]
    NoMagic,
    #[error("malformed protobuf in {0}: {1}")]
    Malformed(String, String),
    #[error("content encoding {0:?} is not supported")]
    ContentEncoding(String),
    #[error("embedded content type {0:?} is not Kubernetes protobuf")]
    ContentType(String),
    #[error("unknown kind {1:?} of apiVersion {0:?}")]
    UnknownKind(String, String),
    #[error("field number {1} of {0} is not known to this gateway")]
    UnknownField(String, u32),
    #[error("invalid {0}: {1}")]
    InvalidValue(&'static str, String),
    #[error("nested too deep")]
    TooDeep,
    #[error("the built-in descriptor set does not load: {0}")]
    Descriptors(String),
}

/// Decodes a Kubernetes protobuf body (magic, `runtime.Unknown` envelope, object) to the JSON
/// the API server would show for the object, `apiVersion` and `kind` included.
pub fn decode(body: &[u8]) -> Result<Json, KubePbError> {
    decode_nested(body, 0)
}

fn decode_nested(body: &[u8], envelopes: usize) -> Result<Json, KubePbError> {
    if envelopes > MAX_NESTED_ENVELOPES {
        return Err(KubePbError::TooDeep);
    }
    let rest = body.strip_prefix(MAGIC).ok_or(KubePbError::NoMagic)?;
    let pool = pool()?;
    let envelope = decode_message(message(pool, UNKNOWN)?, rest)?;
    reject_unknown_fields(&envelope)?;
    let (api_version, kind) = match envelope.get_field_by_name("typeMeta") {
        Some(v) => match v.as_message() {
            Some(type_meta) => {
                reject_unknown_fields(type_meta)?;
                (
                    string_field(type_meta, "apiVersion"),
                    string_field(type_meta, "kind"),
                )
            }
            None => (String::new(), String::new()),
        },
        None => (String::new(), String::new()),
    };
    let encoding = string_field(&envelope, "contentEncoding");
    if !encoding.is_empty() {
        return Err(KubePbError::ContentEncoding(encoding));
    }
    let content_type = string_field(&envelope, "contentType");
    if !content_type.is_empty() && !content_type.eq_ignore_ascii_case(PROTOBUF_MEDIA_TYPE) {
        return Err(KubePbError::ContentType(content_type));
    }
    let desc = kind_descriptor(pool, &api_version, &kind)?;
    let raw = match envelope.get_field_by_name("raw").as_deref() {
        Some(Value::Bytes(b)) => b.clone(),
        _ => Default::default(),
    };
    let object = decode_message(desc, &raw)?;
    let Json::Object(fields) = message_to_json(&object, envelopes, 0)? else {
        return Err(KubePbError::InvalidValue("object", kind));
    };
    // apiVersion and kind first, as the API server writes them.
    let mut out = Map::new();
    out.insert("apiVersion".into(), Json::String(api_version));
    out.insert("kind".into(), Json::String(kind));
    out.extend(fields);
    Ok(Json::Object(out))
}

fn pool() -> Result<&'static DescriptorPool, KubePbError> {
    POOL.as_ref()
        .map_err(|e| KubePbError::Descriptors(e.clone()))
}

fn message(pool: &DescriptorPool, name: &str) -> Result<MessageDescriptor, KubePbError> {
    pool.get_message_by_name(name)
        .ok_or_else(|| KubePbError::Descriptors(format!("{name} missing")))
}

fn decode_message(desc: MessageDescriptor, bytes: &[u8]) -> Result<DynamicMessage, KubePbError> {
    let name = desc.full_name().to_string();
    DynamicMessage::decode(desc, bytes).map_err(|e| KubePbError::Malformed(name, e.to_string()))
}

/// The message for (apiVersion, kind): a top-level object of a built-in group's stable version
/// (one with `metadata`), or one of the meta/v1 kinds every group version has.
fn kind_descriptor(
    pool: &DescriptorPool,
    api_version: &str,
    kind: &str,
) -> Result<MessageDescriptor, KubePbError> {
    let unknown = || KubePbError::UnknownKind(api_version.to_string(), kind.to_string());
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = GROUPS
        .iter()
        .find(|(g, _)| *g == group)
        .map(|(_, p)| *p)
        .ok_or_else(unknown)?;
    // Both go into a message name: nothing but letters and digits, so no `.` can pick another
    // package.
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !plain(version) || !plain(kind) {
        return Err(unknown());
    }
    if let Some(desc) = pool.get_message_by_name(&format!("{package}.{version}.{kind}")) {
        let is_object = desc.get_field_by_name("metadata").is_some_and(|f| {
            matches!(f.kind(), Kind::Message(m) if m.full_name() == OBJECT_META || m.full_name() == LIST_META)
        });
        if is_object || (package == "apimachinery.pkg.apis.meta" && META_KINDS.contains(&kind)) {
            return Ok(desc);
        }
        return Err(unknown());
    }
    if META_KINDS.contains(&kind) {
        return message(pool, &format!("{META_V1}.{kind}"));
    }
    Err(unknown())
}

fn reject_unknown_fields(msg: &DynamicMessage) -> Result<(), KubePbError> {
    match msg.unknown_fields().next() {
        Some(f) => Err(KubePbError::UnknownField(
            msg.descriptor().full_name().to_string(),
            f.number(),
        )),
        None => Ok(()),
    }
}

fn string_field(msg: &DynamicMessage, name: &str) -> String {
    match msg.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn message_to_json(
    msg: &DynamicMessage,
    envelopes: usize,
    depth: usize,
) -> Result<Json, KubePbError> {
    if depth > MAX_DEPTH {
        return Err(KubePbError::TooDeep);
    }
    reject_unknown_fields(msg)?;
    let desc = msg.descriptor();
    let name = desc.full_name();
    match name.strip_prefix("apimachinery.") {
        Some("pkg.apis.meta.v1.Time") => return time(msg, false),
        Some("pkg.apis.meta.v1.MicroTime") => return time(msg, true),
        Some("pkg.apis.meta.v1.Duration") => {
            return Ok(Json::String(go_duration(int_field(msg, "duration"))));
        }
        Some("pkg.api.resource.Quantity") => return Ok(Json::String(string_field(msg, "string"))),
        Some("pkg.util.intstr.IntOrString") => return int_or_string(msg),
        Some("pkg.apis.meta.v1.FieldsV1") => return embedded(msg, "Raw", envelopes),
        Some("pkg.runtime.RawExtension") => return embedded(msg, "raw", envelopes),
        _ => {}
    }
    if NAMED_SLICES.contains(&name) {
        return match msg.get_field_by_name("items") {
            Some(items) => value_to_json(&items, envelopes, depth),
            None => Ok(Json::Array(Vec::new())),
        };
    }
    let mut out = Map::new();
    for (field, value) in msg.fields() {
        let json = value_to_json(value, envelopes, depth)?;
        let empty = match &json {
            Json::String(s) => s.is_empty(),
            Json::Array(a) => a.is_empty(),
            Json::Object(o) => o.is_empty() && field.is_map(),
            _ => false,
        };
        if empty {
            continue;
        }
        if INLINE.contains(&(name, field.name())) {
            match json {
                Json::Object(inner) => out.extend(inner),
                _ => {
                    return Err(KubePbError::InvalidValue(
                        "inline field",
                        field.name().into(),
                    ))
                }
            }
            continue;
        }
        let key = RENAMED
            .iter()
            .find(|(m, f, _)| *m == name && *f == field.name())
            .map_or(field.name(), |(_, _, json_name)| *json_name);
        out.insert(key.to_string(), json);
    }
    Ok(Json::Object(out))
}

fn value_to_json(value: &Value, envelopes: usize, depth: usize) -> Result<Json, KubePbError> {
    match value {
        Value::List(items) => items
            .iter()
            .map(|v| scalar_to_json(v, envelopes, depth))
            .collect::<Result<Vec<_>, _>>()
            .map(Json::Array),
        Value::Map(entries) => {
            let mut out = Map::new();
            for (k, v) in entries {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                out.insert(key, scalar_to_json(v, envelopes, depth)?);
            }
            Ok(Json::Object(out))
        }
        other => scalar_to_json(other, envelopes, depth),
    }
}

fn scalar_to_json(value: &Value, envelopes: usize, depth: usize) -> Result<Json, KubePbError> {
    Ok(match value {
        Value::Bool(b) => Json::Bool(*b),
        Value::I32(n) => Json::from(*n),
        Value::I64(n) => Json::from(*n),
        Value::U32(n) => Json::from(*n),
        Value::U64(n) => Json::from(*n),
        Value::EnumNumber(n) => Json::from(*n),
        Value::F32(f) => float(f64::from(*f))?,
        Value::F64(f) => float(*f)?,
        Value::String(s) => Json::String(s.clone()),
        // Go's encoding/json writes []byte as standard base64 with padding.
        Value::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Message(m) => message_to_json(m, envelopes, depth + 1)?,
        Value::List(_) | Value::Map(_) => {
            return Err(KubePbError::InvalidValue("nested list", String::new()));
        }
    })
}

fn float(f: f64) -> Result<Json, KubePbError> {
    serde_json::Number::from_f64(f)
        .map(Json::Number)
        .ok_or_else(|| KubePbError::InvalidValue("number", f.to_string()))
}

fn int_field(msg: &DynamicMessage, name: &str) -> i64 {
    match msg.get_field_by_name(name).as_deref() {
        Some(Value::I64(n)) => *n,
        Some(Value::I32(n)) => i64::from(*n),
        _ => 0,
    }
}

/// `metav1.Time` and `MicroTime`. An empty message is Go's zero time, `null` in JSON. Time
/// keeps seconds only: the API server's protobuf decoding drops the nanoseconds of a Time.
fn time(msg: &DynamicMessage, micro: bool) -> Result<Json, KubePbError> {
    if !msg.has_field_by_name("seconds") && !msg.has_field_by_name("nanos") {
        return Ok(Json::Null);
    }
    let seconds = int_field(msg, "seconds");
    let nanos = int_field(msg, "nanos");
    if !(0..1_000_000_000).contains(&nanos) {
        return Err(KubePbError::InvalidValue("time", format!("nanos {nanos}")));
    }
    let days = seconds.div_euclid(86_400);
    let secs_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    // Go's Time.MarshalJSON refuses years outside 0..=9999.
    if !(0..=9999).contains(&year) {
        return Err(KubePbError::InvalidValue(
            "time",
            format!("seconds {seconds}"),
        ));
    }
    let (h, m, s) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let date = format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}");
    Ok(Json::String(if micro {
        format!("{date}.{:06}Z", nanos / 1000)
    } else {
        format!("{date}Z")
    }))
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `1.5ms`, `0s`.
fn go_duration(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    if u == 0 {
        return "0s".into();
    }
    // Go prints a fraction with its trailing zeros removed.
    let frac = |value: u64, digits: u32| {
        let unit = 10u64.pow(digits);
        let (whole, rest) = (value / unit, value % unit);
        if rest == 0 {
            whole.to_string()
        } else {
            let f = format!("{rest:0width$}", width = digits as usize);
            format!("{whole}.{}", f.trim_end_matches('0'))
        }
    };
    if u < 1_000 {
        return format!("{sign}{u}ns");
    }
    if u < 1_000_000 {
        return format!("{sign}{}µs", frac(u, 3));
    }
    if u < 1_000_000_000 {
        return format!("{sign}{}ms", frac(u, 6));
    }
    let secs = u / 1_000_000_000;
    let sub = u % 1_000_000_000;
    let s = frac((secs % 60) * 1_000_000_000 + sub, 9);
    let (m, h) = (secs / 60 % 60, secs / 3600);
    if h > 0 {
        format!("{sign}{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{sign}{m}m{s}s")
    } else {
        format!("{sign}{s}s")
    }
}

/// `intstr.IntOrString`: type 0 is the number intVal, type 1 the string strVal.
fn int_or_string(msg: &DynamicMessage) -> Result<Json, KubePbError> {
    match int_field(msg, "type") {
        0 => Ok(Json::from(int_field(msg, "intVal"))),
        1 => Ok(Json::String(string_field(msg, "strVal"))),
        t => Err(KubePbError::InvalidValue("IntOrString type", t.to_string())),
    }
}

/// `RawExtension` and `FieldsV1`: their bytes are an embedded JSON document, or (a protobuf
/// `List`'s items) an embedded protobuf object; anything else is refused.
fn embedded(msg: &DynamicMessage, field: &str, envelopes: usize) -> Result<Json, KubePbError> {
    let raw = match msg.get_field_by_name(field).as_deref() {
        Some(Value::Bytes(b)) => b.clone(),
        _ => return Ok(Json::Null),
    };
    if raw.is_empty() {
        return Ok(Json::Null);
    }
    if raw.starts_with(MAGIC) {
        return decode_nested(&raw, envelopes + 1);
    }
    serde_json::from_slice(&raw)
        .map_err(|e| KubePbError::InvalidValue("embedded JSON", e.to_string()))
}

/// The media ranges of an Accept header, split at commas (Kubernetes' media types have no
/// quoted parameters that could hold one).
fn media_ranges(accept: &str) -> impl Iterator<Item = &str> {
    accept.split(',').map(str::trim).filter(|r| !r.is_empty())
}

fn media_type(range: &str) -> String {
    range
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `q=0` means "not acceptable" (RFC 9110 12.4.2).
fn refused(range: &str) -> bool {
    range.split(';').skip(1).any(|p| {
        let p = p.trim();
        p.len() >= 2
            && p[..2].eq_ignore_ascii_case("q=")
            && p[2..].trim().parse::<f32>().is_ok_and(|q| q == 0.0)
    })
}

/// Whether an Accept header asks for Kubernetes protobuf (in any form: plain, `;stream=watch`,
/// `;as=Table...`). Wildcards do not count: for `*/*` the API server answers JSON.
pub fn accepts_protobuf(accept: &str) -> bool {
    media_ranges(accept).any(|r| media_type(r) == PROTOBUF_MEDIA_TYPE && !refused(r))
}

/// The Accept header with only its `application/json` media ranges, parameters kept
/// (`;as=Table;v=v1;g=meta.k8s.io`, `;stream=watch`), in their order; `application/json` when
/// none remain. Protobuf, YAML and wildcard ranges are dropped so that every reply the gateway
/// has to mask is JSON.
pub fn json_only_accept(accept: &str) -> String {
    let kept: Vec<&str> = media_ranges(accept)
        .filter(|r| media_type(r) == "application/json")
        .collect();
    if kept.is_empty() {
        "application/json".into()
    } else {
        kept.join(",")
    }
}

#[cfg(test)]
#[path = "kube_pb_refusal_tests.rs"]
mod refusal_tests;
#[cfg(test)]
#[path = "kube_pb_tests.rs"]
mod tests;
