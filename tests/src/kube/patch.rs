//! Patches: JSON merge patch (RFC 7386), also used for strategic merge patches (the stand-in
//! has no patch strategies: lists are replaced, which is what kubectl's label/annotate/edit
//! patches need), and JSON patch (RFC 6902: add, remove, replace, test).

use serde_json::Value;

pub fn merge(mut target: Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    if !target.is_object() {
        target = Value::Object(Default::default());
    }
    if let Value::Object(t) = &mut target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                let cur = t.remove(k).unwrap_or(Value::Null);
                t.insert(k.clone(), merge(cur, v));
            }
        }
    }
    target
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// The parent container of a JSON pointer and the last token.
fn parent<'a>(doc: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), String> {
    let idx = path
        .rfind('/')
        .ok_or_else(|| format!("invalid path {path:?}"))?;
    let (head, last) = (&path[..idx], &path[idx + 1..]);
    let p = doc
        .pointer_mut(head)
        .ok_or_else(|| format!("path {head:?} does not exist"))?;
    Ok((p, unescape(last)))
}

pub fn json_patch(mut doc: Value, ops: &Value) -> Result<Value, String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch is an array of operations")?;
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("an operation without a path")?;
        let value = op.get("value").cloned();
        match kind {
            "test" => {
                if doc.pointer(path) != value.as_ref() {
                    return Err(format!("test failed at {path}"));
                }
            }
            "remove" => {
                let (p, last) = parent(&mut doc, path)?;
                let removed = match p {
                    Value::Object(m) => m.remove(&last).is_some(),
                    Value::Array(a) => match last.parse::<usize>() {
                        Ok(i) if i < a.len() => {
                            a.remove(i);
                            true
                        }
                        _ => false,
                    },
                    _ => false,
                };
                if !removed {
                    return Err(format!("nothing to remove at {path}"));
                }
            }
            "add" | "replace" => {
                let value = value.ok_or("add/replace without a value")?;
                let (p, last) = parent(&mut doc, path)?;
                match p {
                    Value::Object(m) => {
                        if kind == "replace" && !m.contains_key(&last) {
                            return Err(format!("nothing to replace at {path}"));
                        }
                        m.insert(last, value);
                    }
                    Value::Array(a) => {
                        let i = if last == "-" {
                            a.len()
                        } else {
                            last.parse::<usize>()
                                .map_err(|_| format!("bad index in {path}"))?
                        };
                        match kind {
                            "add" if i <= a.len() => a.insert(i, value),
                            "replace" if i < a.len() => a[i] = value,
                            _ => return Err(format!("index out of range in {path}")),
                        }
                    }
                    _ => return Err(format!("{path} is inside a scalar")),
                }
            }
            other => return Err(format!("unsupported JSON patch operation {other:?}")),
        }
    }
    Ok(doc)
}
