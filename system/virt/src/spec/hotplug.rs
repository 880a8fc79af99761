//! [`Hotplug`]: how far a running domain may grow without a restart.

use serde::{Deserialize, Serialize};

use super::ValidationError;

/// Room for hot-adding vCPUs and memory to the running domain. Rendered as
/// `<vcpu current='vcpus'>max_vcpus</vcpu>` and `<maxMemory slots='…'>max_memory_mib</maxMemory>`
/// with one guest NUMA cell holding the boot memory (QEMU plugs memory as DIMMs into a NUMA
/// node; this works under TCG too). Unplugged vCPUs and DIMM slots cost the host nothing: QEMU
/// creates a vCPU thread only when it is plugged and maps a DIMM only when it is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hotplug {
    /// Most vCPUs the running domain can have (at least `vcpus`).
    pub max_vcpus: u32,
    /// Most memory the running domain can have, MiB (at least `memory_mib`).
    pub max_memory_mib: u64,
}

impl Hotplug {
    /// DIMM slots: each memory hot-add takes one.
    pub const MEMORY_SLOTS: u32 = 16;

    /// The headroom Keel gives a domain of `vcpus` and `memory_mib` on a host with `host_cpus`
    /// CPUs (pure): vCPUs up to twice as many, but not beyond the host's CPUs (more vCPUs than
    /// host CPUs only slow a guest down), never below `vcpus`; memory up to twice as much and at
    /// least 1 GiB more, within `max_memory_mib`.
    pub fn headroom(vcpus: u32, memory_mib: u64, host_cpus: u32, max_memory_mib: u64) -> Self {
        let max_vcpus = vcpus
            .saturating_mul(2)
            .min(host_cpus)
            .max(vcpus)
            .min(super::DomainSpec::MAX_VCPUS.max(vcpus));
        let max_memory_mib = memory_mib
            .saturating_mul(2)
            .max(memory_mib.saturating_add(1024))
            .min(max_memory_mib.max(memory_mib));
        Self {
            max_vcpus,
            max_memory_mib,
        }
    }

    /// Checks the limits against the domain's boot size.
    pub(super) fn validate(&self, vcpus: u32, memory_mib: u64) -> Result<(), ValidationError> {
        if self.max_vcpus < vcpus || self.max_vcpus > super::DomainSpec::MAX_VCPUS {
            return Err(ValidationError::OutOfRange {
                field: "hotplug.max_vcpus".into(),
                value: self.max_vcpus.into(),
                min: vcpus.into(),
                max: super::DomainSpec::MAX_VCPUS.into(),
            });
        }
        if self.max_memory_mib < memory_mib
            || self.max_memory_mib > super::DomainSpec::MAX_MEMORY_MIB
        {
            return Err(ValidationError::OutOfRange {
                field: "hotplug.max_memory_mib".into(),
                value: self.max_memory_mib,
                min: memory_mib,
                max: super::DomainSpec::MAX_MEMORY_MIB,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_is_bounded_by_the_host_and_never_shrinks() {
        let h = Hotplug::headroom(1, 128, 2, 4 << 20);
        assert_eq!((h.max_vcpus, h.max_memory_mib), (2, 1152));
        let h = Hotplug::headroom(4, 4096, 2, 4 << 20);
        assert_eq!((h.max_vcpus, h.max_memory_mib), (4, 8192));
        let h = Hotplug::headroom(2, 4 << 20, 64, 4 << 20);
        assert_eq!((h.max_vcpus, h.max_memory_mib), (4, 4 << 20));
        assert!(h.validate(2, 4 << 20).is_ok());
        assert!(h.validate(5, 1024).is_err());
    }
}
