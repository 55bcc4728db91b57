//! The BTF the rule tables are created with.
//!
//! A table must match its outer map's inner-map template, which aya creates with the BPF
//! object's BTF (a `u32` key, a struct value). Linux 5.15 to 6.1 compare, among other
//! things, where a timer sits in the value (`bpf_map_meta_equal` checks `timer_off`), and a
//! map without BTF has a different answer (`-EINVAL`) from one whose value is a struct without
//! a timer (`-ENOENT`): installing a table made without BTF fails there with `EINVAL`. Later
//! kernels compare the value's special fields instead, and accept either.
//!
//! So each table gets BTF too: [`TableBtf`] holds a `u32` and a struct of each chunk size,
//! without members (the programs never read a table's BTF; only its kind and size matter).
use std::{
    io,
    os::fd::{AsFd, BorrowedFd, FromRawFd as _, OwnedFd},
};

/// `BTF_KIND_INT` and `BTF_KIND_STRUCT` (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_STRUCT: u32 = 4;
/// `BPF_BTF_LOAD` (include/uapi/linux/bpf.h).
const BPF_BTF_LOAD: libc::c_long = 18;

/// Type ids in a [`TableBtf`].
pub const KEY_TYPE: u32 = 1;

/// A loaded BTF with [`KEY_TYPE`] a `u32` and, from id 2 on, one member-less struct per value
/// size given to [`TableBtf::load`], in that order.
pub struct TableBtf {
    fd: OwnedFd,
}

impl TableBtf {
    /// Loads the BTF into the kernel.
    ///
    /// # Errors
    /// The kernel refuses it (no BTF support, or no privilege).
    pub fn load(value_sizes: &[u32]) -> io::Result<Self> {
        /// The `BPF_BTF_LOAD` part of `union bpf_attr`.
        #[repr(C)]
        struct BtfLoadAttr {
            btf: u64,
            btf_log_buf: u64,
            btf_size: u32,
            btf_log_size: u32,
            btf_log_level: u32,
        }
        let blob = encode(value_sizes);
        let attr = BtfLoadAttr {
            btf: blob.as_ptr() as u64,
            btf_log_buf: 0,
            btf_size: u32::try_from(blob.len()).map_err(io::Error::other)?,
            btf_log_size: 0,
            btf_log_level: 0,
        };
        // Up to the end of btf_log_level, not the struct's padding after it: Linux 6.1 refuses
        // (EINVAL) an attr with a non-zero byte after the last field it knows, and from 6.4 the
        // kernel writes btf_log_true_size there when the size given covers it.
        let size = std::mem::offset_of!(BtfLoadAttr, btf_log_level) + size_of::<u32>();
        // SAFETY: a valid bpf_attr prefix for BPF_BTF_LOAD, all of it initialized; `blob`
        // outlives the call.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_BTF_LOAD, &raw const attr, size) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(io::Error::other)?;
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// The type id of the struct for the `index`th value size given to [`TableBtf::load`].
    #[must_use]
    pub fn value_type(index: u32) -> u32 {
        KEY_TYPE + 1 + index
    }
}

impl AsFd for TableBtf {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The raw BTF: header, types, strings (Documentation/bpf/btf.rst).
fn encode(value_sizes: &[u32]) -> Vec<u8> {
    const STRINGS: &[u8] = b"\0u32\0chunk\0";
    const U32_NAME: u32 = 1;
    const CHUNK_NAME: u32 = 5;
    // [1] int u32: name, info, size, then bits 32 unsigned at offset 0.
    let mut types = vec![U32_NAME, KIND_INT << 24, 4, 32];
    for &size in value_sizes {
        // [2..] struct chunk { } of `size` bytes: name, info (no members), size.
        types.extend([CHUNK_NAME, KIND_STRUCT << 24, size]);
    }
    let words = |n: usize| u32::try_from(n).expect("a few dozen bytes");
    let type_len = words(types.len() * 4);
    let mut blob = Vec::with_capacity(24 + types.len() * 4 + STRINGS.len());
    blob.extend_from_slice(&0xeb9f_u16.to_ne_bytes()); // magic
    blob.extend_from_slice(&[1, 0]); // version, flags
    // header length, type offset and length, string offset and length
    for word in [24, 0, type_len, type_len, words(STRINGS.len())] {
        blob.extend_from_slice(&word.to_ne_bytes());
    }
    for word in types {
        blob.extend_from_slice(&word.to_ne_bytes());
    }
    blob.extend_from_slice(STRINGS);
    blob
}

/// Offsets of `msg_control` and `msg_controllen` in the running kernel's `struct msghdr`, from
/// /sys/kernel/btf/vmlinux: the control-message check reads them (its layout changes between
/// releases, and aya relocates no field of a Rust program). `None` without kernel BTF.
#[must_use]
pub fn msghdr_control() -> Option<(u32, u32)> {
    let blob = std::fs::read("/sys/kernel/btf/vmlinux").ok()?;
    struct_member_offsets(&blob, "msghdr", "msg_control", "msg_controllen")
}

/// The byte offsets of members `first` and `second` of struct `name` in the raw BTF `blob`; a
/// member may be in an anonymous union or struct member (`msg_control` is).
fn struct_member_offsets(blob: &[u8], name: &str, first: &str, second: &str) -> Option<(u32, u32)> {
    const KIND_UNION: u32 = 5;
    let word = |at: usize| Some(u32::from_ne_bytes(blob.get(at..at + 4)?.try_into().ok()?));
    if blob.get(..2)? != 0xeb9f_u16.to_ne_bytes() {
        return None;
    }
    let hdr_len = word(4)? as usize;
    let (type_start, type_len) = (hdr_len + word(8)? as usize, word(12)? as usize);
    let str_start = hdr_len + word(16)? as usize;
    let name_at = |off: u32| -> Option<&[u8]> {
        let rest = blob.get(str_start + off as usize..)?;
        Some(&rest[..rest.iter().position(|&b| b == 0)?])
    };
    // Where each type starts, by id (id 0 is void).
    let mut starts = vec![0usize];
    let mut at = type_start;
    while at < type_start + type_len {
        starts.push(at);
        let info = word(at + 4)?;
        let vlen = (info & 0xffff) as usize;
        let extra = match (info >> 24) & 0x1f {
            1 | 14 | 17 => 4,
            3 => 12,
            4 | 5 | 15 | 19 => 12 * vlen,
            6 | 13 => 8 * vlen,
            _ => 0,
        };
        at += 12 + extra;
    }
    // A member's byte offset: the low 24 bits when the kind flag says it holds bitfield sizes.
    let members = |id: usize| -> Option<Vec<(u32, u32, u32)>> {
        let at = *starts.get(id)?;
        let info = word(at + 4)?;
        let bits = |o: u32| if info >> 31 == 1 { o & 0xff_ffff } else { o };
        (0..(info & 0xffff) as usize)
            .map(|m| {
                let base = at + 12 + 12 * m;
                Some((word(base)?, word(base + 4)?, bits(word(base + 8)?) / 8))
            })
            .collect()
    };
    let target = (1..starts.len()).find(|&id| {
        word(starts[id] + 4).is_some_and(|info| (info >> 24) & 0x1f == KIND_STRUCT)
            && word(starts[id]).and_then(name_at) == Some(name.as_bytes())
    })?;
    let find = |wanted: &str| -> Option<u32> {
        let list = members(target)?;
        for &(member, _, offset) in &list {
            if name_at(member)? == wanted.as_bytes() {
                return Some(offset);
            }
        }
        for &(member, ty, offset) in &list {
            let kind = word(*starts.get(ty as usize)? + 4).map(|i| (i >> 24) & 0x1f);
            if member == 0 && matches!(kind, Some(KIND_STRUCT | KIND_UNION)) {
                for (inner, _, inner_offset) in members(ty as usize)? {
                    if name_at(inner)? == wanted.as_bytes() {
                        return Some(offset + inner_offset);
                    }
                }
            }
        }
        None
    };
    Some((find(first)?, find(second)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_header_types_strings() {
        let blob = encode(&[8, 16]);
        assert_eq!(&blob[..4], &[0x9f, 0xeb, 1, 0]);
        let word = |i: usize| u32::from_ne_bytes(blob[i..i + 4].try_into().unwrap());
        let (type_len, str_off, str_len) = (word(12), word(16), word(20));
        assert_eq!(type_len, 4 * (4 + 3 + 3));
        assert_eq!(str_off, type_len);
        assert_eq!(blob.len(), 24 + (type_len + str_len) as usize);
        assert_eq!(word(24 + 16 + 12 + 8), 16, "the second struct's size");
        assert_eq!(TableBtf::value_type(1), 3);
    }

    #[test]
    fn msghdr_offsets_come_from_the_kernel_btf() {
        if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            eprintln!("skipped: this kernel has no BTF at /sys/kernel/btf/vmlinux");
            return;
        }
        let (control, len) = msghdr_control().expect("struct msghdr in the kernel BTF");
        // msg_name, msg_namelen and msg_iter come first; msg_controllen after msg_control.
        assert!(control >= 16 && len > control, "{control} {len}");
        assert_eq!(control % 8, 0);
        assert_eq!(len % 8, 0);
    }
}
