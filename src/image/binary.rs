//! Pure inspection of binaries the image is made of: where a bzImage keeps its
//! compressed kernel, whether an ELF file is an uncompressed kernel, and
//! whether an ELF executable is static (needs no dynamic loader).
//!
//! It does not decompress or run anything; see `build.rs` for that.

/// The magic of an XZ stream.
pub const XZ_MAGIC: [u8; 6] = [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00];
const ELF_MAGIC: [u8; 4] = [0x7F, b'E', b'L', b'F'];

/// Why a kernel file cannot be turned into a bootable vmlinux.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("not a bzImage (no \"HdrS\" boot header)")]
    NotBzImage,
    #[error("the bzImage payload is not XZ-compressed (this kernel uses another compressor)")]
    NotXz,
}

fn u32_le(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u16_le(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at + 2)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn u64_le(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

/// The byte offset of the XZ-compressed kernel inside a bzImage.
///
/// Uses the boot protocol header (`setup_sects` at 0x1f1, `payload_offset`
/// at 0x248, relative to the protected-mode code) and checks the XZ magic
/// there; if the header disagrees, falls back to the first XZ magic after
/// the setup code.
pub fn xz_payload_offset(bzimage: &[u8]) -> Result<usize, PayloadError> {
    if bzimage.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        return Err(PayloadError::NotBzImage);
    }
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let pm_start = (setup_sects + 1) * 512;
    if let Some(payload) = u32_le(bzimage, 0x248) {
        let at = pm_start + payload as usize;
        if bzimage.get(at..at + 6) == Some(XZ_MAGIC.as_slice()) {
            return Ok(at);
        }
    }
    bzimage
        .get(pm_start..)
        .and_then(|rest| rest.windows(6).position(|w| w == XZ_MAGIC))
        .map(|p| pm_start + p)
        .ok_or(PayloadError::NotXz)
}

/// Whether `bytes` start like an ELF file.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(&ELF_MAGIC)
}

/// Whether a 64-bit little-endian ELF file has no `PT_INTERP` program header
/// (so it runs without a dynamic loader). `None` if it is not such an ELF.
pub fn is_static_elf64(bytes: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if !is_elf(bytes) || bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return None;
    }
    let phoff = u64_le(bytes, 0x20)? as usize;
    let phentsize = u16_le(bytes, 0x36)? as usize;
    let phnum = u16_le(bytes, 0x38)? as usize;
    for i in 0..phnum {
        let p_type = u32_le(bytes, phoff + i * phentsize)?;
        if p_type == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bzimage(setup_sects: u8, payload_offset: u32, xz_at: usize) -> Vec<u8> {
        let mut b = vec![0u8; xz_at + 64];
        b[0x1f1] = setup_sects;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x248..0x24c].copy_from_slice(&payload_offset.to_le_bytes());
        b[xz_at..xz_at + 6].copy_from_slice(&XZ_MAGIC);
        b
    }

    #[test]
    fn payload_found_from_the_header() {
        // Debian 6.1: setup_sects 39, payload_offset 716 -> 40*512+716 = 21196.
        let b = fake_bzimage(39, 716, 21196);
        assert_eq!(xz_payload_offset(&b), Ok(21196));
    }

    #[test]
    fn zero_setup_sects_means_four() {
        let b = fake_bzimage(0, 100, 5 * 512 + 100);
        assert_eq!(xz_payload_offset(&b), Ok(2660));
    }

    #[test]
    fn falls_back_to_scanning_when_the_header_is_off() {
        let b = fake_bzimage(1, 7, 3000);
        assert_eq!(xz_payload_offset(&b), Ok(3000));
    }

    #[test]
    fn rejects_non_bzimage_and_non_xz() {
        assert_eq!(
            xz_payload_offset(&[0u8; 4096]),
            Err(PayloadError::NotBzImage)
        );
        let mut b = fake_bzimage(1, 0, 2000);
        b[2000] = 0x1f; // gzip, not xz
        assert_eq!(xz_payload_offset(&b), Err(PayloadError::NotXz));
    }

    fn fake_elf(types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56 * types.len()];
        b[..4].copy_from_slice(&ELF_MAGIC);
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            b[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
        }
        b
    }

    #[test]
    fn static_and_dynamic_elf() {
        assert_eq!(is_static_elf64(&fake_elf(&[6, 1, 1])), Some(true));
        assert_eq!(is_static_elf64(&fake_elf(&[6, 3, 1])), Some(false));
        assert_eq!(is_static_elf64(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn real_binaries_on_this_host() {
        // /bin/sh on Debian is dynamic dash; busybox-static (installed by
        // scripts/setup-host.sh) is static.
        let sh = std::fs::read("/bin/sh").unwrap();
        assert_eq!(is_static_elf64(&sh), Some(false));
        let bb = std::fs::read("/bin/busybox")
            .expect("read /bin/busybox (scripts/setup-host.sh installs busybox-static)");
        assert_eq!(is_static_elf64(&bb), Some(true));
    }
}
