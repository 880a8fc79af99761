//! Virtual hardware choices shared by images and VMs: [`Firmware`], [`DiskBus`], [`NicModel`],
//! [`Arch`], [`OsType`].

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Guest firmware.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// Legacy BIOS (SeaBIOS).
    #[default]
    Bios,
    /// UEFI (OVMF), with per-VM NVRAM.
    Uefi,
}

/// The bus a disk is attached on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    /// Paravirtual (fastest; needs virtio drivers in the guest).
    #[default]
    Virtio,
    /// Emulated SATA (AHCI).
    Sata,
    /// virtio-scsi.
    Scsi,
    /// Emulated IDE (old guests).
    Ide,
}

/// The emulated NIC model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NicModel {
    /// Paravirtual (fastest; needs virtio drivers in the guest).
    #[default]
    Virtio,
    /// Intel e1000 (guests without virtio drivers).
    E1000,
    /// Realtek RTL8139 (very old guests).
    Rtl8139,
}

/// Guest CPU architecture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum Arch {
    /// 64-bit x86.
    #[default]
    #[serde(rename = "x86_64")]
    X86_64,
}

/// The guest operating system family: picks defaults that suit it (clock, devices).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OsType {
    /// Linux or another Unix-like system.
    Linux,
    /// Microsoft Windows.
    Windows,
    /// Anything else.
    #[default]
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        assert_eq!(serde_json::to_string(&Arch::X86_64).unwrap(), "\"x86_64\"");
        assert_eq!(serde_json::to_string(&Firmware::Uefi).unwrap(), "\"uefi\"");
        assert_eq!(serde_json::to_string(&DiskBus::Scsi).unwrap(), "\"scsi\"");
        assert_eq!(
            serde_json::to_string(&NicModel::E1000).unwrap(),
            "\"e1000\""
        );
        assert!(serde_json::from_str::<Arch>("\"aarch64\"").is_err());
        assert!(serde_json::from_str::<DiskBus>("\"nvme\"").is_err());
    }
}
