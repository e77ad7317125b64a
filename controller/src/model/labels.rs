//! Labels: a small map of `key = value` strings on devices and tokens, and the rules they
//! follow wherever they come from (the command line's `k=v` words, the API's JSON objects,
//! label selectors).

use std::collections::BTreeMap;

/// Labels, stored as a JSON object.
pub type Labels = BTreeMap<String, String>;

/// Most labels a device, token or selector may carry.
pub const MAX_LABELS: usize = 64;

/// Why labels were refused; the text is meant for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("label {0:?} is not k=v")]
    NotPair(String),
    #[error("label key {0:?} must be 1-63 of a-z 0-9 _ . - /")]
    Key(String),
    #[error("label value for {0:?} must be at most 255 printable characters")]
    Value(String),
    #[error("at most {MAX_LABELS} labels are allowed")]
    TooMany,
    #[error("a selector names a label key twice")]
    Repeated,
}

/// Checks one label: keys `[a-z0-9_.-/]{1,63}`, values printable, up to 255 bytes.
pub fn check(key: &str, value: &str) -> Result<(), LabelError> {
    let key_ok = (1..=63).contains(&key.len())
        && key.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-' | b'/')
        });
    if !key_ok {
        return Err(LabelError::Key(key.to_owned()));
    }
    if value.len() > 255 || value.chars().any(char::is_control) {
        return Err(LabelError::Value(key.to_owned()));
    }
    Ok(())
}

/// Labels from `k=v` words (the command line); a later word wins over an earlier one.
pub fn parse_pairs(items: &[String]) -> Result<Labels, LabelError> {
    let mut out = Labels::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| LabelError::NotPair(item.clone()))?;
        check(k, v)?;
        out.insert(k.to_owned(), v.to_owned());
    }
    too_many(out)
}

/// Labels from a map (a JSON object), each checked.
pub fn from_map(map: &BTreeMap<String, String>) -> Result<Labels, LabelError> {
    for (k, v) in map {
        check(k, v)?;
    }
    too_many(map.clone())
}

/// A label selector `k=v[,k=v...]`: every pair must match, no key twice.
pub fn parse_selector(s: &str) -> Result<Labels, LabelError> {
    let items: Vec<String> = s.split(',').map(str::to_owned).collect();
    if items.len() > MAX_LABELS {
        return Err(LabelError::TooMany);
    }
    let labels = parse_pairs(&items)?;
    if labels.len() != items.len() {
        return Err(LabelError::Repeated);
    }
    Ok(labels)
}

fn too_many(labels: Labels) -> Result<Labels, LabelError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooMany);
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs() {
        let l = parse_pairs(&["site=lobby".into(), "app/v=2".into()]).unwrap();
        assert_eq!(l.get("site").map(String::as_str), Some("lobby"));
        for bad in ["nokv", "=v", "Key=v", "k=\u{7}"] {
            assert!(parse_pairs(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn selectors() {
        let l = parse_selector("site=lobby,app/v=2").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l.get("app/v").map(String::as_str), Some("2"));
        assert_eq!(
            parse_selector("k=").unwrap().get("k").map(String::as_str),
            Some("")
        );
        for bad in ["", "k", "site=a,", "Site=a", "a=1,a=2", "k=\u{1}", ",k=v"] {
            assert!(parse_selector(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_selector("a=1,a=2"), Err(LabelError::Repeated));
        let many = (0..65)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse_selector(&many), Err(LabelError::TooMany));
    }

    #[test]
    fn label_maps_follow_the_same_rules() {
        let ok: Labels = [("site".into(), "lobby".into())].into();
        assert_eq!(from_map(&ok).unwrap(), ok);
        assert!(from_map(&Labels::new()).unwrap().is_empty());
        // A value may hold '='; a key may not.
        let eq: Labels = [("site".into(), "a=b".into())].into();
        assert_eq!(from_map(&eq).unwrap(), eq);
        for (k, v) in [("a=b", "c"), ("", "v"), ("K", "v"), ("k", "\n")] {
            let m: Labels = [(k.to_owned(), v.to_owned())].into();
            assert!(from_map(&m).is_err(), "{k:?}={v:?}");
        }
        let big: Labels = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(from_map(&big), Err(LabelError::TooMany));
    }
}
