//! Helpers shared by the `<Kind>Update` PATCH bodies.

use crate::ValidationError;

/// Checks an update's `clear` list: every entry names a clearable field, none is repeated,
/// and none is also being set. `set` lists each clearable field with whether the update
/// also sets it.
pub(crate) fn check_clear(clear: &[String], set: &[(&str, bool)]) -> Result<(), ValidationError> {
    for (i, field) in clear.iter().enumerate() {
        let path = format!("clear[{i}]");
        match set.iter().find(|(name, _)| name == field) {
            None => {
                let names: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
                let allowed = if names.is_empty() {
                    "nothing here can be cleared".to_string()
                } else {
                    format!("clearable fields are: {}", names.join(", "))
                };
                return Err(ValidationError::new(
                    path,
                    format!("{field:?} cannot be cleared; {allowed}"),
                ));
            }
            Some((_, true)) => {
                return Err(ValidationError::new(
                    path,
                    format!("{field:?} is both set and cleared; do one or the other"),
                ))
            }
            Some(_) => {}
        }
        if clear[..i].contains(field) {
            return Err(ValidationError::new(
                path,
                format!("{field:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// Whether `field` is in the clear list.
pub(crate) fn clears(clear: &[String], field: &str) -> bool {
    clear.iter().any(|c| c == field)
}
