//! JSON for programs without Rust's encodings: serde writes `Result` as `{"Ok": v}` /
//! `{"Err": e}` and an enum variant with data as `{"Variant": {...}}`. The reports built from
//! the format library's types (`check --json`) pass through [`plain`], which writes:
//!
//! - a success as its value itself, a failure as `{"error": e}`;
//! - an enum variant with fields as an object with `"kind": "variant_name"` and the fields;
//!   one with a single value as `{"kind": "variant_name", "value": v}`.
//!
//! So a consumer tests `x.error` instead of knowing Rust's spelling of `Result`.

use serde_json::{Map, Value};

/// `JournalStop` -> `journal_stop`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `key` is the name of an enum variant (serde's external tagging).
fn is_variant(key: &str) -> bool {
    key.chars().next().is_some_and(|c| c.is_ascii_uppercase())
}

/// Rewrite `v` as described in the module documentation.
pub fn plain(v: Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.into_iter().map(plain).collect()),
        Value::Object(map) if map.len() == 1 => {
            let Some((key, inner)) = map.into_iter().next() else {
                return Value::Object(Map::new());
            };
            match key.as_str() {
                "Ok" => plain(inner),
                "Err" => {
                    let mut out = Map::new();
                    out.insert("error".to_string(), plain(inner));
                    Value::Object(out)
                }
                k if is_variant(k) => {
                    let mut out = Map::new();
                    out.insert("kind".to_string(), Value::String(snake(k)));
                    match plain(inner) {
                        Value::Object(fields) => out.extend(fields),
                        other => {
                            out.insert("value".to_string(), other);
                        }
                    }
                    Value::Object(out)
                }
                _ => {
                    let mut out = Map::new();
                    out.insert(key, plain(inner));
                    Value::Object(out)
                }
            }
        }
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, plain(v))).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_and_variants_become_plain_objects() {
        let v = json!({
            "checkpoints": [{"Ok": 5}, {"Err": "bad checksum"}],
            "recovery": {"Ok": {"journal_stop": {"Invalid": {"position": 0, "reason": "x"}}, "n": 1}},
            "stop": {"End": 3},
            "one": {"plain": 1},
            "empty": {}
        });
        assert_eq!(
            plain(v),
            json!({
                "checkpoints": [5, {"error": "bad checksum"}],
                "recovery": {"journal_stop": {"kind": "invalid", "position": 0, "reason": "x"}, "n": 1},
                "stop": {"kind": "end", "value": 3},
                "one": {"plain": 1},
                "empty": {}
            })
        );
        assert_eq!(snake("SuperblockA"), "superblock_a");
    }
}
