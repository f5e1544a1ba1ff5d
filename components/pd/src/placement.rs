//! Failure domains: where a store sits (its values of the configured location labels,
//! `[replication] location-labels`, top label first) and how far apart a set of replicas
//! is. The replica checker and the balancers ask these questions; nothing here decides a
//! move by itself.

use proto::metapb;

use crate::{Error, Result};

/// A store's values of the location labels, top first (for `zone, rack, host`:
/// `["z1", "r1", "h1"]`); empty when no location labels are configured.
pub type Location = Vec<String>;

/// Two stores' locations are compared label by label from the top; the first label they
/// differ on counts this many times more than the one below it, so one replica in
/// another zone always outweighs any number of replicas in other racks.
const LEVEL_WEIGHT: u64 = 100;

/// The store's location under `labels`; a label the store lacks is an empty value.
pub fn location_of(store: &metapb::Store, labels: &[String]) -> Location {
    labels
        .iter()
        .map(|l| {
            store
                .get_labels()
                .iter()
                .find(|sl| sl.get_key() == l)
                .map_or(String::new(), |sl| sl.get_value().to_string())
        })
        .collect()
}

/// Checks a registering store's labels: keys and values non-empty and bounded, keys
/// unique, and every location label present.
pub fn check_labels(store: &metapb::Store, location_labels: &[String]) -> Result<()> {
    let labels = store.get_labels();
    let bad = |why: String| {
        Err(Error::InvalidValue(format!(
            "store {}: {why}",
            store.get_id()
        )))
    };
    let pairs = labels.iter().map(|l| (l.get_key(), l.get_value()));
    if let Err(why) = util::labels::check_all(pairs) {
        return bad(why);
    }
    let missing: Vec<&str> = location_labels
        .iter()
        .filter(|k| !labels.iter().any(|l| l.get_key() == k.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return bad(format!(
            "labels lack {} (PD's replication.location-labels are {}): start the store with --labels {}",
            missing.join(", "),
            location_labels.join(", "),
            location_labels.iter().map(|k| format!("{k}=...")).collect::<Vec<_>>().join(",")
        ));
    }
    Ok(())
}

/// The first label (index) on which `a` and `b` differ; `None` if they share every one.
fn first_difference(a: &[String], b: &[String]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// How far `candidate` stands from `others`: the higher, the more failure domains apart.
/// Each other location adds `LEVEL_WEIGHT` to the power of how many labels lie below the
/// first one they differ on, and nothing if they share every label.
pub fn distinct_score(candidate: &[String], others: &[&Location]) -> u64 {
    others
        .iter()
        .filter_map(|o| {
            let i = first_difference(candidate, o)?;
            Some(LEVEL_WEIGHT.pow((candidate.len() - i - 1) as u32))
        })
        .sum()
}

/// The highest label at which every two of `locations` differ: `Some(0)` if all are in
/// different zones (for `zone, rack, host`), `Some(2)` if some share a rack but not a
/// host, `None` if two share every label. Fewer than two locations are apart at the top.
pub fn isolation(locations: &[&Location]) -> Option<usize> {
    let mut worst = 0;
    for (i, a) in locations.iter().enumerate() {
        for b in &locations[..i] {
            worst = worst.max(first_difference(a, b)?);
        }
    }
    Some(worst)
}

/// A region's placement as `kvctl region list` shows it: the name of the highest label
/// its replicas are apart at, "none" if two share every label, "" without location labels.
pub fn isolation_name(labels: &[String], level: Option<usize>) -> String {
    match level {
        _ if labels.is_empty() => String::new(),
        Some(i) => labels[i].clone(),
        None => "none".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> Location {
        s.split('/').map(String::from).collect()
    }

    #[test]
    fn a_replica_in_another_zone_outweighs_any_number_in_other_racks() {
        let (a, b, c) = (loc("z1/r1/h1"), loc("z1/r2/h2"), loc("z1/r3/h3"));
        let other_zone = distinct_score(&loc("z2/r1/h1"), &[&a]);
        let other_racks = distinct_score(&loc("z1/r9/h9"), &[&a, &b, &c]);
        assert!(other_zone > other_racks, "{other_zone} vs {other_racks}");
        assert_eq!(distinct_score(&loc("z1/r1/h1"), &[&a]), 0, "same host");
    }

    #[test]
    fn isolation_is_the_highest_label_every_pair_differs_at() {
        let (a, b, c) = (loc("z1/r1/h1"), loc("z2/r1/h1"), loc("z3/r1/h1"));
        assert_eq!(isolation(&[&a, &b, &c]), Some(0));
        let d = loc("z1/r2/h2");
        assert_eq!(isolation(&[&a, &b, &d]), Some(1));
        assert_eq!(isolation(&[&a, &b, &a]), None);
        assert_eq!(isolation(&[&a]), Some(0));
    }

    #[test]
    fn labels_are_checked_before_a_store_registers() {
        let mut s = metapb::Store::default();
        s.set_id(4);
        let label = |k: &str, v: &str| {
            let mut l = metapb::StoreLabel::default();
            l.set_key(k.into());
            l.set_value(v.into());
            l
        };
        let want = ["zone".to_string(), "host".to_string()];
        s.mut_labels().push(label("zone", "z1"));
        let err = check_labels(&s, &want).unwrap_err().to_string();
        assert!(err.contains("labels lack host"), "{err}");
        s.mut_labels().push(label("host", "h1"));
        check_labels(&s, &want).unwrap();
        s.mut_labels().push(label("zone", "z2"));
        let err = check_labels(&s, &want).unwrap_err().to_string();
        assert!(err.contains("\"zone\" is given twice"), "{err}");
        s.mut_labels().pop();
        s.mut_labels().push(label("", "x"));
        let err = check_labels(&s, &want).unwrap_err().to_string();
        assert!(err.contains("must be 1 to 128"), "{err}");
        assert_eq!(location_of(&s, &want), ["z1", "h1"]);
    }
}
