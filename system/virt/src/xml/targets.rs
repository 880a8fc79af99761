//! Reads the guest-side device names out of a live domain's XML: the `<target dev=…>` of each
//! disk and of each interface (the host tap), which libvirt's counters are keyed by.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

fn attr(e: &BytesStart<'_>, name: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == name)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

/// `(disk targets, interface targets)` of a domain's XML, in document order. Unreadable XML
/// yields what was read before the error.
pub(crate) fn device_targets(xml: &str) -> (Vec<String>, Vec<String>) {
    let mut reader = Reader::from_str(xml);
    let (mut disks, mut nics) = (Vec::new(), Vec::new());
    // Which device element we are inside: 1 = disk, 2 = interface.
    let mut inside = 0u8;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => match e.name().as_ref() {
                b"disk" => inside = 1,
                b"interface" => inside = 2,
                _ => {}
            },
            Ok(Event::Empty(e)) if e.name().as_ref() == b"target" && inside != 0 => {
                if let Some(dev) = attr(&e, b"dev") {
                    if inside == 1 {
                        disks.push(dev);
                    } else {
                        nics.push(dev);
                    }
                }
            }
            Ok(Event::End(e)) if matches!(e.name().as_ref(), b"disk" | b"interface") => inside = 0,
            Ok(Event::Eof) | Err(_) => break,
            Ok(_) => {}
        }
    }
    (disks, nics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_disk_and_tap_targets_only() {
        let xml = r#"<domain type='qemu'><name>x</name><devices>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/a.qcow2'/><target dev='vda' bus='virtio'/></disk>
  <disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>
  <interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/><target dev='vnet3'/></interface>
  <serial type='pty'><target type='isa-serial' port='0'/></serial>
  <console type='pty'><target type='serial' port='0'/></console>
</devices></domain>"#;
        let (d, n) = device_targets(xml);
        assert_eq!(d, vec!["vda".to_string(), "sda".into()]);
        assert_eq!(n, vec!["vnet3".to_string()]);
    }

    #[test]
    fn garbage_yields_nothing() {
        assert_eq!(device_targets("<<not xml"), (vec![], vec![]));
    }
}
