//! Field offsets of kernel structs, read from the running kernel's BTF.
//!
//! Rust eBPF programs cannot use CO-RE relocations, so the kernel programs read struct fields at
//! offsets that this module resolves at start-up and writes into the object's read-only data
//! ([`KernelOffsets`]). Only the little that offset lookup needs is parsed: the type section's
//! records, struct and union members (following anonymous members), and the string section.

use std::{borrow::Cow, path::Path};

use agentd_common::KernelOffsets;

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const HEADER_MIN_LEN: usize = 24;

// BTF kinds (include/uapi/linux/btf.h).
const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// How deep anonymous struct/union members are followed. The kernel nests two or three levels
/// (`task_struct`'s randomized-layout block, unions inside it); this bounds malformed input.
const MAX_ANON_DEPTH: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("unknown BTF kind {kind} for type id {id}")]
    UnknownKind { kind: u8, id: u32 },
    #[error("struct {0} not found in kernel BTF")]
    NoSuchStruct(String),
    #[error("field {field} not found in struct {strukt}")]
    NoSuchField { strukt: String, field: String },
    #[error("field {strukt}.{field} is a bitfield or not byte-aligned")]
    Unaligned { strukt: String, field: String },
    #[error("field {strukt}.{field} is at offset 0, which the kernel programs read as unresolved")]
    ZeroOffset { strukt: String, field: String },
}

/// One type record: its header and where its kind-specific trailer starts.
#[derive(Clone, Copy)]
struct TypeRecord {
    name_off: u32,
    kind: u8,
    vlen: u16,
    kind_flag: bool,
    size_or_type: u32,
    trailer: usize,
}

/// Parsed BTF, enough to look up struct member offsets.
pub struct KernelBtf {
    data: Vec<u8>,
    /// Index 0 is the implicit `void` type; type id N is `types[N]`.
    types: Vec<TypeRecord>,
    strings: (usize, usize),
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("record runs past the end of the data"))
}

fn usize_at(data: &[u8], at: usize) -> Result<usize, BtfError> {
    u32_at(data, at).map(|v| v as usize)
}

impl KernelBtf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data)
    }

    /// Parses raw little-endian BTF (the format of `/sys/kernel/btf/vmlinux`).
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        if data.len() < HEADER_MIN_LEN {
            return Err(BtfError::Malformed("shorter than the BTF header"));
        }
        if u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = usize_at(&data, 4)?;
        let type_start = hdr_len + usize_at(&data, 8)?;
        let type_end = type_start + usize_at(&data, 12)?;
        let str_start = hdr_len + usize_at(&data, 16)?;
        let str_end = str_start + usize_at(&data, 20)?;
        if type_end > data.len() || str_end > data.len() {
            return Err(BtfError::Malformed("section runs past the end of the data"));
        }

        let void = TypeRecord {
            name_off: 0,
            kind: 0,
            vlen: 0,
            kind_flag: false,
            size_or_type: 0,
            trailer: 0,
        };
        let mut types = vec![void];
        let mut at = type_start;
        while at < type_end {
            let info = u32_at(&data, at + 4)?;
            let record = TypeRecord {
                name_off: u32_at(&data, at)?,
                kind: ((info >> 24) & 0x1f) as u8,
                vlen: (info & 0xffff) as u16,
                kind_flag: info >> 31 == 1,
                size_or_type: u32_at(&data, at + 8)?,
                trailer: at + 12,
            };
            let vlen = usize::from(record.vlen);
            let trailer_len = match record.kind {
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                kind => {
                    let id = u32::try_from(types.len()).unwrap_or(u32::MAX);
                    return Err(BtfError::UnknownKind { kind, id });
                }
            };
            types.push(record);
            at = record.trailer + trailer_len;
        }
        if at != type_end {
            return Err(BtfError::Malformed(
                "last type record runs past the type section",
            ));
        }
        Ok(Self {
            data,
            types,
            strings: (str_start, str_end),
        })
    }

    fn name(&self, name_off: u32) -> Cow<'_, str> {
        let (start, end) = self.strings;
        let from = start + name_off as usize;
        let bytes = self.data.get(from..end).unwrap_or_default();
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..len])
    }

    fn record(&self, id: u32) -> Result<&TypeRecord, BtfError> {
        self.types
            .get(id as usize)
            .ok_or(BtfError::Malformed("type id out of range"))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<&TypeRecord, BtfError> {
        for _ in 0..MAX_ANON_DEPTH * 4 {
            let record = self.record(id)?;
            match record.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = record.size_or_type;
                }
                _ => return Ok(record),
            }
        }
        Err(BtfError::Malformed("typedef chain too long"))
    }

    /// Searches `record`'s members for `field`, descending into anonymous members. Returns the
    /// bit offset from the start of `record`.
    fn find_member(
        &self,
        record: &TypeRecord,
        field: &str,
        depth: u32,
    ) -> Result<Option<(u32, bool)>, BtfError> {
        if depth > MAX_ANON_DEPTH {
            return Ok(None);
        }
        for index in 0..usize::from(record.vlen) {
            let at = record.trailer + index * 12;
            let name_off = u32_at(&self.data, at)?;
            let type_id = u32_at(&self.data, at + 4)?;
            let raw_offset = u32_at(&self.data, at + 8)?;
            // With kind_flag set, the top 8 bits hold a bitfield size.
            let (bit_offset, bitfield) = if record.kind_flag {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24 != 0)
            } else {
                (raw_offset, false)
            };
            if name_off != 0 {
                if self.name(name_off) == field {
                    return Ok(Some((bit_offset, bitfield)));
                }
                continue;
            }
            let inner = self.resolve(type_id)?;
            if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some((inner_offset, inner_bitfield)) =
                    self.find_member(inner, field, depth + 1)?
            {
                return Ok(Some((bit_offset + inner_offset, inner_bitfield)));
            }
        }
        Ok(None)
    }

    /// The byte offset of `strukt.field`.
    pub fn member_offset(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        let record = self
            .types
            .iter()
            .find(|r| r.kind == KIND_STRUCT && self.name(r.name_off) == strukt)
            .ok_or_else(|| BtfError::NoSuchStruct(strukt.to_owned()))?;
        let (bits, bitfield) =
            self.find_member(record, field, 0)?
                .ok_or_else(|| BtfError::NoSuchField {
                    strukt: strukt.to_owned(),
                    field: field.to_owned(),
                })?;
        if bitfield || bits % 8 != 0 {
            return Err(BtfError::Unaligned {
                strukt: strukt.to_owned(),
                field: field.to_owned(),
            });
        }
        Ok(bits / 8)
    }

    /// Like [`Self::member_offset`], but an offset of 0 is an error: the programs treat 0 as
    /// "unresolved".
    fn nonzero_offset(&self, strukt: &str, field: &str) -> Result<u32, BtfError> {
        match self.member_offset(strukt, field)? {
            0 => Err(BtfError::ZeroOffset {
                strukt: strukt.to_owned(),
                field: field.to_owned(),
            }),
            offset => Ok(offset),
        }
    }

    /// Resolves every offset the kernel programs read.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let KernelOffsets {
            task_real_parent: _,
            task_tgid: _,
            bprm_filename: _,
            file_inode: _,
            file_flags: _,
            inode_ino: _,
            inode_sb: _,
            sb_dev: _,
            task_pid: _,
            task_signal: _,
            signal_live: _,
            task_exit_code: _,
            task_mm: _,
            mm_arg_start: _,
            mm_arg_end: _,
            bprm_file: _,
            file_dentry: _,
            dentry_parent: _,
            dentry_inode: _,
            file_path: _,
            path_dentry: _,
            dentry_name: _,
            task_files: _,
            files_fdt: _,
            fdtable_fd: _,
            fdtable_max_fds: _,
            dentry_name_len: _,
            inode_nlink: _,
            vma_file: _,
            dentry_flags: _,
            inode_dentries: _,
            dentry_alias: _,
            sb_magic: _,
            file_private_data: _,
        } = KernelOffsets::UNRESOLVED;
        Ok(KernelOffsets {
            task_real_parent: self.nonzero_offset("task_struct", "real_parent")?,
            task_tgid: self.nonzero_offset("task_struct", "tgid")?,
            bprm_filename: self.nonzero_offset("linux_binprm", "filename")?,
            file_inode: self.nonzero_offset("file", "f_inode")?,
            file_flags: self.nonzero_offset("file", "f_flags")?,
            inode_ino: self.nonzero_offset("inode", "i_ino")?,
            inode_sb: self.nonzero_offset("inode", "i_sb")?,
            sb_dev: self.nonzero_offset("super_block", "s_dev")?,
            task_pid: self.nonzero_offset("task_struct", "pid")?,
            task_signal: self.nonzero_offset("task_struct", "signal")?,
            signal_live: self.nonzero_offset("signal_struct", "live")?,
            task_exit_code: self.nonzero_offset("task_struct", "exit_code")?,
            task_mm: self.nonzero_offset("task_struct", "mm")?,
            mm_arg_start: self.nonzero_offset("mm_struct", "arg_start")?,
            mm_arg_end: self.nonzero_offset("mm_struct", "arg_end")?,
            bprm_file: self.nonzero_offset("linux_binprm", "file")?,
            file_dentry: self.nonzero_offset("file", "f_path")?
                + self.member_offset("path", "dentry")?,
            dentry_parent: self.nonzero_offset("dentry", "d_parent")?,
            dentry_inode: self.nonzero_offset("dentry", "d_inode")?,
            file_path: self.nonzero_offset("file", "f_path")?,
            path_dentry: self.member_offset("path", "dentry")?,
            dentry_name: self.nonzero_offset("dentry", "d_name")?
                + self.member_offset("qstr", "name")?,
            task_files: self.nonzero_offset("task_struct", "files")?,
            files_fdt: self.nonzero_offset("files_struct", "fdt")?,
            fdtable_fd: self.nonzero_offset("fdtable", "fd")?,
            fdtable_max_fds: self.member_offset("fdtable", "max_fds")?,
            dentry_name_len: self.nonzero_offset("dentry", "d_name")?
                + self.member_offset("qstr", "len")?,
            inode_nlink: self.nonzero_offset("inode", "i_nlink")?,
            vma_file: self.nonzero_offset("vm_area_struct", "vm_file")?,
            dentry_flags: self.member_offset("dentry", "d_flags")?,
            inode_dentries: self.nonzero_offset("inode", "i_dentry")?,
            dentry_alias: self.nonzero_offset("dentry", "d_u")?,
            sb_magic: self.nonzero_offset("super_block", "s_magic")?,
            file_private_data: self.nonzero_offset("file", "private_data")?,
        })
    }

    /// How many parameters the kernel function `func` takes, from its prototype; `None` when
    /// this kernel has no such function. LSM hooks changed arity between kernels (an idmap
    /// argument was added in front), and a program must read its arguments where they are.
    #[must_use]
    pub fn func_param_count(&self, func: &str) -> Option<u16> {
        let record = self
            .types
            .iter()
            .find(|r| r.kind == KIND_FUNC && self.name(r.name_off) == func)?;
        let proto = self.record(record.size_or_type).ok()?;
        (proto.kind == KIND_FUNC_PROTO).then_some(proto.vlen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `int`, and
    /// `struct outer { int a; union { int pad; struct { int deep; }; }; int flags:3; }`.
    fn sample_btf() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0pad\0deep\0flags\0".to_vec();
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            let pos = strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap();
            u32::try_from(pos + 1).unwrap()
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        let info = |kind: u32, vlen: u32, kind_flag: bool| {
            (u32::from(kind_flag) << 31) | (kind << 24) | vlen
        };
        // 1: int (size 4, 32 bits)
        push(&[s("int"), info(1, 0, false), 4, 32]);
        // 2: anonymous struct { int deep; }
        push(&[0, info(4, 1, false), 4, s("deep"), 1, 0]);
        // 3: anonymous union { int pad; struct {...}; }
        push(&[0, info(5, 2, false), 4, s("pad"), 1, 0, 0, 2, 0]);
        // 4: struct outer, kind_flag set (bitfield member)
        push(&[
            s("outer"),
            info(4, 3, true),
            12,
            s("a"),
            1,
            0,
            0,
            3,
            32,
            s("flags"),
            1,
            (3 << 24) | 64,
        ]);
        let mut blob = Vec::new();
        blob.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        let type_len = u32::try_from(types.len()).unwrap();
        let str_len = u32::try_from(strings.len()).unwrap();
        for word in [24, 0, type_len, type_len, str_len] {
            blob.extend_from_slice(&u32::to_le_bytes(word));
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn member_offset_follows_anonymous_unions_and_structs() {
        let btf = KernelBtf::parse(sample_btf()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "pad").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "deep").unwrap(), 4);
    }

    #[test]
    fn bitfield_member_is_refused() {
        let btf = KernelBtf::parse(sample_btf()).unwrap();
        let err = btf.member_offset("outer", "flags").unwrap_err();
        assert!(matches!(err, BtfError::Unaligned { .. }), "{err}");
    }

    #[test]
    fn missing_struct_and_field_are_named_in_the_error() {
        let btf = KernelBtf::parse(sample_btf()).unwrap();
        let err = btf.member_offset("inner", "a").unwrap_err();
        assert_eq!(err.to_string(), "struct inner not found in kernel BTF");
        let err = btf.member_offset("outer", "nope").unwrap_err();
        assert_eq!(err.to_string(), "field nope not found in struct outer");
    }

    #[test]
    fn zero_offset_is_refused_for_kernel_programs() {
        let btf = KernelBtf::parse(sample_btf()).unwrap();
        let err = btf.nonzero_offset("outer", "a").unwrap_err();
        assert!(matches!(err, BtfError::ZeroOffset { .. }), "{err}");
    }

    #[test]
    fn truncated_and_foreign_input_is_rejected() {
        let mut blob = sample_btf();
        blob.truncate(blob.len() - 10);
        assert!(matches!(
            KernelBtf::parse(blob),
            Err(BtfError::Malformed(_))
        ));
        assert!(matches!(
            KernelBtf::parse(vec![0; 64]),
            Err(BtfError::Malformed(_))
        ));
    }
}
