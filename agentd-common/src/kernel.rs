//! Offsets of kernel structures, read from the running kernel's BTF by userspace and written
//! into the programs before load.

use core::mem::size_of;

/// Byte offsets of kernel struct fields that the programs read, resolved by userspace from the
/// running kernel's BTF at load time and written into the programs' read-only data. Zero means
/// "not resolved": programs treat the value as unreadable rather than guess.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `linux_binprm.filename`
    pub bprm_filename: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `file.f_flags`
    pub file_flags: u32,
    /// `inode.i_ino`
    pub inode_ino: u32,
    /// `inode.i_sb`
    pub inode_sb: u32,
    /// `super_block.s_dev`
    pub sb_dev: u32,
    /// `task_struct.pid`
    pub task_pid: u32,
    /// `task_struct.signal`
    pub task_signal: u32,
    /// `signal_struct.live` (an `atomic_t`: live threads of the process)
    pub signal_live: u32,
    /// `task_struct.exit_code`
    pub task_exit_code: u32,
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `mm_struct.arg_start`
    pub mm_arg_start: u32,
    /// `mm_struct.arg_end`
    pub mm_arg_end: u32,
    /// `linux_binprm.file`
    pub bprm_file: u32,
    /// `file.f_path.dentry` (`file.f_path` plus `path.dentry`)
    pub file_dentry: u32,
    /// `dentry.d_parent`
    pub dentry_parent: u32,
    /// `dentry.d_inode`
    pub dentry_inode: u32,
    /// `file.f_path`
    pub file_path: u32,
    /// `path.dentry` (may legitimately be 0: it is read only together with `file_path`)
    pub path_dentry: u32,
    /// `dentry.d_name.name` (`dentry.d_name` plus `qstr.name`)
    pub dentry_name: u32,
    /// `task_struct.files`
    pub task_files: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.fd`
    pub fdtable_fd: u32,
    /// `fdtable.max_fds` (may legitimately be 0: it is read only together with `fdtable_fd`)
    pub fdtable_max_fds: u32,
    /// `dentry.d_name.len` (`dentry.d_name` plus `qstr.len`)
    pub dentry_name_len: u32,
    /// `inode.i_nlink` (0 for a memfd, an `O_TMPFILE` not linked in, an unlinked file)
    pub inode_nlink: u32,
    /// `vm_area_struct.vm_file`
    pub vma_file: u32,
    /// `dentry.d_flags` (may legitimately be 0: the first field)
    pub dentry_flags: u32,
    /// `inode.i_dentry` (the `hlist_head` of the inode's dentries)
    pub inode_dentries: u32,
    /// `dentry.d_u` (whose `d_alias` links the dentry into its inode's `i_dentry`)
    pub dentry_alias: u32,
    /// `super_block.s_magic` (the file system's kind: overlayfs's files stand for a layer's)
    pub sb_magic: u32,
    /// `file.private_data` (an overlay file's: the layer's file it reads and maps)
    pub file_private_data: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 136);

impl KernelOffsets {
    /// Every offset unresolved: the value compiled into the eBPF object.
    pub const UNRESOLVED: Self = Self {
        task_real_parent: 0,
        task_tgid: 0,
        bprm_filename: 0,
        file_inode: 0,
        file_flags: 0,
        inode_ino: 0,
        inode_sb: 0,
        sb_dev: 0,
        task_pid: 0,
        task_signal: 0,
        signal_live: 0,
        task_exit_code: 0,
        task_mm: 0,
        mm_arg_start: 0,
        mm_arg_end: 0,
        bprm_file: 0,
        file_dentry: 0,
        dentry_parent: 0,
        dentry_inode: 0,
        file_path: 0,
        path_dentry: 0,
        dentry_name: 0,
        task_files: 0,
        files_fdt: 0,
        fdtable_fd: 0,
        fdtable_max_fds: 0,
        dentry_name_len: 0,
        inode_nlink: 0,
        vma_file: 0,
        dentry_flags: 0,
        inode_dentries: 0,
        dentry_alias: 0,
        sb_magic: 0,
        file_private_data: 0,
    };
}

/// The symbol name of the `KernelOffsets` global in the eBPF object.
pub const KERNEL_OFFSETS_SYMBOL: &str = "KERNEL_OFFSETS";
