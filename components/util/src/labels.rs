//! Store labels (`zone=z1`): the one rule kv-server holds its own labels to at start and
//! PD every registering store's to.

/// Labels one store may have, at most.
pub const MAX_LABELS: usize = 64;
/// Longest label key or value, in bytes.
pub const MAX_LABEL_LEN: usize = 128;

/// Checks one label: key and value each 1 to `MAX_LABEL_LEN` ASCII letters, digits,
/// '-', '_' or '.'.
pub fn check(key: &str, value: &str) -> Result<(), String> {
    let ok = |s: &str| {
        (1..=MAX_LABEL_LEN).contains(&s.len())
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    };
    if ok(key) && ok(value) {
        return Ok(());
    }
    // A hostile label may be long: the error shows its start.
    let shown = |s: &str| s.chars().take(32).collect::<String>();
    Err(format!(
        "label {:?}={:?}: keys and values must be 1 to {MAX_LABEL_LEN} letters, digits, '-', '_' or '.'",
        shown(key),
        shown(value)
    ))
}

/// Checks a store's labels: each by [`check`], no key twice, at most `MAX_LABELS`.
pub fn check_all<'a>(
    labels: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("{} labels, at most {MAX_LABELS}", labels.len()));
    }
    let mut seen = std::collections::HashSet::new();
    for (k, v) in labels {
        check(k, v)?;
        if !seen.insert(k) {
            return Err(format!("label key {k:?} is given twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_short_plain_and_unique() {
        assert!(check_all([("zone", "z1"), ("host", "h-1.a_b")].into_iter()).is_ok());
        for (k, v) in [("", "z1"), ("zone", ""), ("zo ne", "z1"), ("zone", "z/1")] {
            assert!(check(k, v).is_err(), "{k:?}={v:?}");
        }
        let long = "é".repeat(200);
        let err = check("zone", &long).expect_err("too long");
        assert!(err.len() < 200, "{err}");
        assert!(check_all([("zone", "a"), ("zone", "b")].into_iter())
            .expect_err("twice")
            .contains("twice"));
        let many: Vec<(String, String)> = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert!(check_all(many.iter().map(|(k, v)| (k.as_str(), v.as_str()))).is_err());
    }
}
