//! Shared generators: JSON as text (valid, but written the many ways clients write it),
//! JSON as values, refs, and ways to cut a byte stream into reads.

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::Value;

/// 256 cases per property unless `PROPTEST_CASES` says otherwise.
pub fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        ..Config::default()
    }
}

/// A JSON number written as a client might: `-0`, `1.50`, `2E+3`, ... (never what a
/// re-serializer would print back for all of them).
pub fn number_text() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        // Up to 25 digits: past u64, where a parse into f64 loses digits.
        "0|[1-9][0-9]{0,24}",
        prop::option::of("[0-9]{1,4}"),
        prop::option::of(("[eE]", "[+-]?", "[0-9]{1,2}")),
    )
        .prop_map(|(neg, int, frac, exp)| {
            let mut s = String::new();
            if neg {
                s.push('-');
            }
            s.push_str(&int);
            if let Some(f) = frac {
                s.push('.');
                s.push_str(&f);
            }
            if let Some((e, sign, digits)) = exp {
                s.push_str(&e);
                s.push_str(&sign);
                s.push_str(&digits);
            }
            s
        })
}

/// A JSON string literal, sometimes with escapes a serializer would not choose.
pub fn string_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        "[a-z]{0,8}".prop_map(|s| format!("\"{s}\\u0041\\/\"")),
    ]
}

/// Whitespace JSON allows between tokens.
pub fn ws() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(""), Just(" "), Just("\n  "), Just("\t"), Just("\r\n")]
}

/// Valid JSON text of any type, with non-canonical numbers, escapes, whitespace between
/// tokens and unsorted (even duplicated) object keys. No whitespace at either end.
pub fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        number_text(),
        string_text(),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec((ws(), inner.clone(), ws()), 0..6).prop_map(|items| {
                let parts: Vec<String> = items
                    .into_iter()
                    .map(|(a, v, b)| format!("{a}{v}{b}"))
                    .collect();
                format!("[{}]", parts.join(","))
            }),
            object_of(inner),
        ]
    })
}

/// A JSON object (as text) whose values are drawn from `value`.
pub fn object_of(value: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop::collection::vec((string_text(), ws(), value), 0..6).prop_map(|members| {
        let parts: Vec<String> = members
            .into_iter()
            .map(|(k, w, v)| format!("{k}{w}:{w}{v}"))
            .collect();
        format!("{{{}}}", parts.join(","))
    })
}

/// A JSON object as text (what Compendium's `msg` must be).
pub fn json_object_text() -> impl Strategy<Value = String> {
    object_of(json_text())
}

/// A JSON value, floats included.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A Phoenix ref as the client's JSON: absent/`null` (`None`), a string or a number.
pub fn ref_json() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        any::<String>().prop_map(|s| Some(serde_json::to_string(&s).unwrap())),
        any::<u32>().prop_map(|n| Some(n.to_string())),
    ]
}

/// A string of at most 255 bytes (a field of a V2 binary frame).
pub fn short_string() -> impl Strategy<Value = String> {
    any::<String>().prop_map(|s| {
        let mut end = s.len().min(255);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    })
}

/// Cuts `len` bytes into reads: the lengths of consecutive chunks, summing to `len`.
pub fn split_points(len: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..=len, 0..8).prop_map(move |mut cuts| {
        cuts.push(0);
        cuts.push(len);
        cuts.sort_unstable();
        cuts.windows(2).map(|w| w[1] - w[0]).collect()
    })
}

/// `bytes` in consecutive chunks of the given lengths.
pub fn chunks<'a>(bytes: &'a [u8], lens: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut pos = 0;
    lens.iter().map(move |&n| {
        let c = &bytes[pos..pos + n];
        pos += n;
        c
    })
}
