//! Whether a VM's new disks fit any pool: pure, so the refusal of "a disk larger than the
//! pool" is decided (and tested) without a cluster.

use keel_model::{Bytes, ValidationError};

/// A pool's free space as its node last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolFree {
    /// The pool.
    pub pool: String,
    /// Its node.
    pub node: String,
    /// Bytes free.
    pub available: u64,
}

/// One new disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskNeed {
    /// The disk's name.
    pub disk: String,
    /// Bytes it needs.
    pub bytes: u64,
    /// Its path in the request body (`spec.disks[0].source.size`).
    pub field: String,
}

/// Refuses a disk that is larger than every candidate pool's free space, naming the disk's
/// field, then disks that together exceed it. `pools` holds the candidate pools only (those
/// of ready nodes, or of the pinned node); with none known there is nothing to check yet.
pub fn check(needs: &[DiskNeed], pools: &[PoolFree]) -> Result<(), ValidationError> {
    let Some(largest) = pools.iter().map(|p| p.available).max() else {
        return Ok(());
    };
    let free = || {
        let mut v: Vec<String> = pools
            .iter()
            .map(|p| format!("{} on {}: {} free", p.pool, p.node, Bytes::new(p.available)))
            .collect();
        v.sort();
        v.join("; ")
    };
    for n in needs {
        if n.bytes > largest {
            return Err(ValidationError::new(
                n.field.clone(),
                format!(
                    "disk {} needs {} but no pool has that much free ({}); make it smaller or free space",
                    n.disk,
                    Bytes::new(n.bytes),
                    free()
                ),
            ));
        }
    }
    let total = needs
        .iter()
        .map(|n| n.bytes)
        .fold(0u64, u64::saturating_add);
    if total > largest {
        return Err(ValidationError::new(
            "spec.disks",
            format!(
                "the disks need {} together but no pool has that much free ({}); a VM's disks live in one node's pool",
                Bytes::new(total),
                free()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn pools() -> Vec<PoolFree> {
        vec![
            PoolFree {
                pool: "node1-local".into(),
                node: "node1".into(),
                available: 10 * GIB,
            },
            PoolFree {
                pool: "node2-local".into(),
                node: "node2".into(),
                available: 20 * GIB,
            },
        ]
    }

    fn need(i: usize, bytes: u64) -> DiskNeed {
        DiskNeed {
            disk: format!("d{i}"),
            bytes,
            field: format!("spec.disks[{i}].source.size"),
        }
    }

    #[test]
    fn a_disk_larger_than_every_pool_names_its_field() {
        check(&[need(0, 20 * GIB)], &pools()).unwrap();
        let err = check(&[need(0, GIB), need(1, 21 * GIB)], &pools()).unwrap_err();
        assert_eq!(err.field, "spec.disks[1].source.size");
        assert!(
            err.message.contains("disk d1 needs 21 GiB"),
            "{}",
            err.message
        );
        assert!(
            err.message
                .contains("node1-local on node1: 10 GiB free; node2-local on node2: 20 GiB free"),
            "{}",
            err.message
        );
    }

    #[test]
    fn disks_together_must_fit_one_pool() {
        let err = check(&[need(0, 15 * GIB), need(1, 15 * GIB)], &pools()).unwrap_err();
        assert_eq!(err.field, "spec.disks");
        assert!(err.message.contains("30 GiB together"), "{}", err.message);
    }

    #[test]
    fn nothing_known_nothing_refused() {
        check(&[need(0, u64::MAX)], &[]).unwrap();
        check(&[], &pools()).unwrap();
    }
}
