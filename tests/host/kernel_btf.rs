use agentd::kernel_btf::KernelBtf;

#[test]
fn kernel_offsets_resolve_from_running_kernel_btf() {
    let btf = KernelBtf::from_sys_fs().expect("reading /sys/kernel/btf/vmlinux");
    let offsets = btf
        .kernel_offsets()
        .expect("resolving every offset the programs read");
    // `tgid` and `real_parent` are both in task_struct's identity block, well past its start,
    // and `real_parent` follows `tgid` in every kernel since 2.6.
    assert!(offsets.task_tgid > 0, "{offsets:?}");
    assert!(offsets.task_real_parent > offsets.task_tgid, "{offsets:?}");
    // s_dev follows the s_list list_head (two pointers) in struct super_block.
    assert_eq!(offsets.sb_dev, 16, "{offsets:?}");
}
