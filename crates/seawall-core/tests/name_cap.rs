//! The process-wide cap on distinct names. In its own test binary: filling the table would starve
//! any other test that creates names.

use seawall_core::{name::MAX_DISTINCT, Name};

#[test]
fn past_the_distinct_name_cap_new_names_are_rejected_naming_the_callers_field() {
    for i in 0..MAX_DISTINCT {
        Name::validate("endpoint_name", &format!("n{i}")).expect("under the cap");
    }
    // Known names are still handed out; a new one is rejected, naming the field it came from.
    assert_eq!(Name::new("n0").unwrap().as_str(), "n0");
    let err = Name::validate("endpoint_name", "one-too-many").unwrap_err();
    assert_eq!(err.field(), "endpoint_name", "{err}");
    assert!(err.to_string().contains("4096 distinct"), "{err}");
}
