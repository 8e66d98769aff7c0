//! The kernel modules the vm tier's guests load, and the order they load in, from the kernel
//! package's own module index.
//!
//! Debian's kernel packages carry no `modules.dep` (their postinst runs `depmod`), so the fetch
//! runs `depmod` over the extracted modules and keeps the index (`modules.dep`,
//! `modules.softdep`, `modules.alias`, `modules.builtin`) next to the modules the guest needs.
//! The load order comes from that index on every build of a guest: nothing here names a
//! kernel's dependencies (crc16, mbcache, jbd2, crc32c, ...).

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// Modules the guest loads at boot, by name; their dependencies come along.
///
/// - `inet_diag`, `tcp_diag`, `udp_diag`: socket diagnostics, through which agentd's resolver
///   finds the socket (and so the agent) a query came from; without them the guest would
///   refuse every agent's DNS query.
/// - `loop`, `ext4`, `overlay`: the disk file systems the vm tests enforce file rules on (an
///   ext4 image on a loop device, an overlay whose layers are on it): the guest's own root is
///   the initramfs, a tmpfs.
///
/// Debian builds them all as modules; a kernel with one built in has no file for it and skips
/// it.
pub const GUEST_MODULES: [&str; 6] = [
    "inet_diag",
    "tcp_diag",
    "udp_diag",
    "loop",
    "ext4",
    "overlay",
];

/// The index files kept in a kernel's cache, under `lib/modules/<version>/`.
pub const INDEX_FILES: [&str; 4] = [
    "modules.dep",
    "modules.softdep",
    "modules.alias",
    "modules.builtin",
];

/// A module's name from its file (`kernel/arch/x86/crypto/crc32c-intel.ko.xz` is
/// `crc32c_intel`): the kernel spells `-` as `_`.
fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    base.split(".ko").next().unwrap_or(base).replace('-', "_")
}

/// A kernel's module index: what `depmod` wrote.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// Module name to (its file relative to `lib/modules/<version>`, the files it depends on,
    /// in `modules.dep`'s order: the last loads first).
    deps: HashMap<String, (String, Vec<String>)>,
    /// Module name to the names (or aliases) `softdep ... pre:` loads before it.
    pre: HashMap<String, Vec<String>>,
    /// Alias to the modules that provide it, in `modules.alias`'s order.
    aliases: HashMap<String, Vec<String>>,
    /// Modules built into the kernel.
    builtin: HashSet<String>,
}

impl ModuleIndex {
    /// Parses the index files' text.
    #[must_use]
    pub fn parse(dep: &str, softdep: &str, alias: &str, builtin: &str) -> Self {
        let mut index = Self::default();
        for line in dep.lines() {
            let Some((file, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            index
                .deps
                .insert(module_name(file), (file.trim().to_owned(), deps));
        }
        for line in softdep.lines() {
            // softdep MODULE pre: A B post: C
            let mut words = line.split_whitespace();
            let (Some("softdep"), Some(module)) = (words.next(), words.next()) else {
                continue;
            };
            let mut pre = false;
            for word in words {
                match word {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    name if pre => index
                        .pre
                        .entry(module.replace('-', "_"))
                        .or_default()
                        .push(name.to_owned()),
                    _ => {}
                }
            }
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(alias), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                index
                    .aliases
                    .entry(alias.to_owned())
                    .or_default()
                    .push(module.replace('-', "_"));
            }
        }
        index.builtin = builtin.lines().map(module_name).collect();
        index
    }

    /// Reads the index of the modules under `dir` (`lib/modules/<version>`).
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        };
        Ok(Self::parse(
            &read("modules.dep")?,
            &read("modules.softdep")?,
            &read("modules.alias")?,
            &read("modules.builtin")?,
        ))
    }

    /// The files of `wanted` and everything they need, in load order (relative to
    /// `lib/modules/<version>`). A module built into the kernel is skipped; a name the kernel
    /// knows neither as a module nor as built in is an error.
    pub fn load_order(&self, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in wanted {
            let name = name.replace('-', "_");
            anyhow::ensure!(
                self.deps.contains_key(&name) || self.builtin.contains(&name),
                "the kernel has no module `{name}`, neither as a file in modules.dep nor in \
                 modules.builtin"
            );
            self.visit(&name, &mut seen, &mut order);
        }
        Ok(order)
    }

    fn visit(&self, name: &str, seen: &mut HashSet<String>, order: &mut Vec<String>) {
        if !seen.insert(name.to_owned()) {
            return;
        }
        // Soft dependencies first (ext4 and jbd2 want `crypto-crc32c`, which the kernel would
        // ask modprobe for at mount time; the guest has none): a name or an alias, all of whose
        // providers load, as modprobe does. One that resolves to nothing is built in.
        for soft in self.pre.get(name).into_iter().flatten() {
            let module = soft.replace('-', "_");
            if self.deps.contains_key(&module) {
                self.visit(&module, seen, order);
            }
            for provider in self.aliases.get(soft).into_iter().flatten() {
                self.visit(provider, seen, order);
            }
        }
        let Some((file, deps)) = self.deps.get(name) else {
            // Built in: no file.
            return;
        };
        for dep in deps.iter().rev() {
            self.visit(&module_name(dep), seen, order);
        }
        order.push(file.clone());
    }
}

/// The one `lib/modules/<version>` directory under `root`.
pub fn version_dir(root: &Path) -> anyhow::Result<PathBuf> {
    let lib = root.join("lib/modules");
    let mut versions: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect();
    anyhow::ensure!(
        versions.len() == 1,
        "expected one kernel version under {}, found {versions:?}",
        lib.display()
    );
    Ok(versions.remove(0))
}

/// The guest's modules of the kernel cached at `root`, in load order, as (name, file).
pub fn cached(root: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let dir = version_dir(root)?;
    let index = ModuleIndex::read(&dir)?;
    Ok(index
        .load_order(&GUEST_MODULES)?
        .into_iter()
        .map(|file| (module_name(&file), dir.join(file)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as Debian's 6.12 kernel's depmod writes them.
    const DEP: &str = "kernel/fs/mbcache.ko.xz:
kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/fs/overlayfs/overlay.ko.xz:
kernel/arch/x86/crypto/crc32c-intel.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/net/ipv4/inet_diag.ko.xz:
kernel/net/ipv4/tcp_diag.ko.xz: kernel/net/ipv4/inet_diag.ko.xz
";
    const SOFTDEP: &str = "# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crypto-crc32c
softdep jbd2 pre: crypto-crc32c
";
    const ALIAS: &str = "alias crypto-crc32c crc32c_intel
alias crc32c crc32c_intel
alias crypto-crc32c crc32c_generic
";
    const BUILTIN: &str = "kernel/drivers/block/loop.ko\n";

    #[test]
    fn dependencies_and_soft_dependencies_load_first_once_and_builtins_are_skipped() {
        let index = ModuleIndex::parse(DEP, SOFTDEP, ALIAS, BUILTIN);
        let order = index
            .load_order(&["tcp_diag", "loop", "ext4", "overlay"])
            .unwrap();
        assert_eq!(
            order,
            [
                "kernel/net/ipv4/inet_diag.ko.xz",
                "kernel/net/ipv4/tcp_diag.ko.xz",
                "kernel/arch/x86/crypto/crc32c-intel.ko.xz",
                "kernel/crypto/crc32c_generic.ko.xz",
                "kernel/fs/jbd2/jbd2.ko.xz",
                "kernel/fs/mbcache.ko.xz",
                "kernel/lib/crc16.ko.xz",
                "kernel/fs/ext4/ext4.ko.xz",
                "kernel/fs/overlayfs/overlay.ko.xz",
            ]
        );
        assert_eq!(
            module_name("kernel/arch/x86/crypto/crc32c-intel.ko.xz"),
            "crc32c_intel"
        );
    }

    #[test]
    fn a_module_the_kernel_does_not_know_is_an_error() {
        let index = ModuleIndex::parse(DEP, SOFTDEP, ALIAS, BUILTIN);
        let err = index.load_order(&["ext5"]).unwrap_err().to_string();
        assert!(err.contains("`ext5`"), "{err}");
    }
}
