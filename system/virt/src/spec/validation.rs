//! [`ValidationError`]: why a [`DomainSpec`](super::DomainSpec) or one of its parts was refused.

/// A domain description that Keel will not hand to libvirt, with the field, the value and the
/// limit, so the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A number outside its allowed range.
    #[error("{field} is {value}, must be between {min} and {max}")]
    OutOfRange {
        /// Path of the field, such as `vcpus` or `disks[1].iotune.total_iops_sec`.
        field: String,
        /// The value given.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// A string that does not have the required form.
    #[error("{field} {value:?} is invalid: {expected}")]
    Malformed {
        /// Path of the field.
        field: String,
        /// The value given.
        value: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// A list longer than Keel supports.
    #[error("{field} has {count} entries, at most {max} are allowed")]
    TooMany {
        /// Path of the list.
        field: String,
        /// Entries given.
        count: usize,
        /// Most entries allowed.
        max: usize,
    },
    /// A value that must be unique within a list appears twice.
    #[error("{field} repeats {value:?}")]
    Duplicate {
        /// Path of the second occurrence.
        field: String,
        /// The repeated value.
        value: String,
    },
    /// Two settings that cannot be combined.
    #[error("{field} cannot be combined with {other}: {reason}")]
    Conflict {
        /// Path of the field.
        field: String,
        /// Path of the field it conflicts with.
        other: String,
        /// Why, and what to do instead.
        reason: &'static str,
    },
}
