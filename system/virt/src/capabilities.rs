//! [`Capabilities`]: what a host's libvirt can run.

use serde::Deserialize;

use crate::{DomainType, XmlError};

/// The parts of libvirt's capabilities Keel schedules and chooses defaults by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Host architecture, e.g. `x86_64`.
    pub arch: String,
    /// The host CPU model libvirt matched, e.g. `Skylake-Client-IBRS`, if it found one.
    pub host_cpu_model: Option<String>,
    /// Domain types libvirt offers for full-virtualisation guests of the host architecture.
    /// `kvm` here only means `/dev/kvm` opens: see [`KvmStatus`](crate::KvmStatus).
    pub domain_types: Vec<DomainType>,
    /// Named CPU models QEMU knows for the host architecture (usable with
    /// [`CpuMode::Model`](crate::CpuMode::Model)), sorted.
    pub cpu_models: Vec<String>,
}

#[derive(Deserialize)]
struct CapsXml {
    host: HostXml,
    #[serde(default)]
    guest: Vec<GuestXml>,
}

#[derive(Deserialize)]
struct HostXml {
    cpu: HostCpuXml,
}

#[derive(Deserialize)]
struct HostCpuXml {
    arch: String,
    model: Option<String>,
}

#[derive(Deserialize)]
struct GuestXml {
    os_type: String,
    arch: GuestArchXml,
}

#[derive(Deserialize)]
struct GuestArchXml {
    #[serde(rename = "@name")]
    name: String,
    #[serde(default)]
    domain: Vec<GuestDomainXml>,
}

#[derive(Deserialize)]
struct GuestDomainXml {
    #[serde(rename = "@type")]
    kind: String,
}

impl Capabilities {
    /// Reads `virConnectGetCapabilities` XML; `cpu_models` is left empty (it comes from
    /// another call).
    pub fn from_xml(xml: &str) -> Result<Self, XmlError> {
        let caps: CapsXml = quick_xml::de::from_str(xml).map_err(|source| XmlError::Parse {
            what: "capabilities",
            source,
        })?;
        let arch = caps.host.cpu.arch;
        let mut domain_types: Vec<DomainType> = caps
            .guest
            .iter()
            .filter(|g| g.os_type == "hvm" && g.arch.name == arch)
            .flat_map(|g| g.arch.domain.iter())
            .filter_map(|d| match d.kind.as_str() {
                "kvm" => Some(DomainType::Kvm),
                "qemu" => Some(DomainType::Qemu),
                _ => None,
            })
            .collect();
        domain_types.sort();
        domain_types.dedup();
        Ok(Self {
            arch,
            host_cpu_model: caps.host.cpu.model,
            domain_types,
            cpu_models: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_arch_model_and_domain_types() {
        let xml = r#"<capabilities>
  <host>
    <uuid>5c1b9ae5-6b1c-4a5c-9d1b-0c2a3e4f5a6b</uuid>
    <cpu>
      <arch>x86_64</arch>
      <model>Skylake-Client-IBRS</model>
      <vendor>Intel</vendor>
      <feature name='ds'/>
    </cpu>
    <power_management/>
  </host>
  <guest>
    <os_type>hvm</os_type>
    <arch name='i686'>
      <wordsize>32</wordsize>
      <domain type='qemu'/>
    </arch>
  </guest>
  <guest>
    <os_type>hvm</os_type>
    <arch name='x86_64'>
      <wordsize>64</wordsize>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <machine maxCpus='255'>pc-i440fx-7.2</machine>
      <machine canonical='pc-i440fx-7.2' maxCpus='255'>pc</machine>
      <domain type='qemu'/>
      <domain type='kvm'/>
    </arch>
    <features><acpi default='on' toggle='yes'/></features>
  </guest>
</capabilities>"#;
        let caps = Capabilities::from_xml(xml).unwrap();
        assert_eq!(caps.arch, "x86_64");
        assert_eq!(caps.host_cpu_model.as_deref(), Some("Skylake-Client-IBRS"));
        assert_eq!(caps.domain_types, vec![DomainType::Kvm, DomainType::Qemu]);
    }

    #[test]
    fn refuses_garbage() {
        assert!(Capabilities::from_xml("<nope/>").is_err());
    }
}
