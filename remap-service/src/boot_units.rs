//! The systemd units that bring the pairs of `/etc/remaptab` up at boot, as the generator
//! (`remap systemd-generator`, installed as `/usr/lib/systemd/system-generators/remap`)
//! writes them: one `remap-activate@NAME.service` per pair, bound to its devices so that it
//! runs `remap activate` as soon as both exist, and required by `dev-mapper-NAME.device`
//! so that an `/etc/fstab` line mounting `/dev/mapper/NAME` pulls it in. The layout follows
//! systemd-cryptsetup-generator's for `/etc/crypttab`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::remaptab::{DeviceSpec, Entry, Remaptab, override_flags};

/// Why the units could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnitsError {
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A string as systemd escapes it for a unit name (`systemd-escape`): `/` becomes `-`, and
/// every byte outside `[A-Za-z0-9:_.]` (and a leading `.`) becomes `\xNN`.
pub fn escape(text: &str) -> String {
    let mut out = String::new();
    for (i, b) in text.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.') => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// A path as systemd escapes it (`systemd-escape --path`): without its leading and trailing
/// slashes and with repeated slashes collapsed; `/` itself is `-`.
pub fn escape_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let parts: Vec<&str> = text.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return "-".to_string();
    }
    escape(&parts.join("/"))
}

/// The `.device` unit of a device node or udev symlink.
pub fn device_unit(path: &Path) -> String {
    format!("{}.device", escape_path(path))
}

/// The unit name of a pair's activation.
pub fn activation_unit(name: &str) -> String {
    format!("remap-activate@{}.service", escape(name))
}

/// The text of a pair's activation unit. `remap` is the binary's installed path.
pub fn unit_text(entry: &Entry, source: &Path, remap: &Path) -> String {
    let name = entry.name.as_str();
    let mut devices = vec![device_unit(&entry.main)];
    if let DeviceSpec::Path(p) = &entry.spare {
        devices.push(device_unit(p));
    }
    let devices = devices.join(" ");
    let mut exec = format!(
        "{} activate {} {} {}",
        remap.display(),
        name,
        entry.main.display(),
        entry.spare.argument()
    );
    for flag in override_flags(&entry.overrides) {
        exec.push(' ');
        exec.push_str(&flag);
    }
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by remap's systemd generator from {}, line {}.",
        source.display(),
        entry.line
    );
    t.push_str("[Unit]\n");
    let _ = writeln!(t, "Description=remap: bring up /dev/mapper/{name}");
    t.push_str("Documentation=man:remap-activate(1) man:remap(1)\n");
    let _ = writeln!(t, "SourcePath={}", source.display());
    t.push_str("DefaultDependencies=no\nIgnoreOnIsolate=true\n");
    t.push_str("Conflicts=umount.target\n");
    let _ = writeln!(t, "BindsTo={devices}");
    // systemd's own template loads the target's module (and ignores one built in).
    t.push_str("Wants=modprobe@dm_remap.service\n");
    let _ = writeln!(t, "After={devices} modprobe@dm_remap.service");
    t.push_str("Before=umount.target\n");
    if !entry.nofail {
        // Local filesystems wait for the pair; with nofail they do not.
        t.push_str("Before=local-fs-pre.target\n");
    }
    if matches!(entry.spare, DeviceSpec::SpareUuid(_)) {
        // A spare named by its metadata UUID has no device unit: wait until udev has
        // seen the devices present at boot before looking for it.
        t.push_str("After=systemd-udev-settle.service\nWants=systemd-udev-settle.service\n");
    }
    t.push_str("\n[Service]\nType=oneshot\nRemainAfterExit=yes\n");
    let _ = writeln!(t, "ExecStart={exec}");
    let _ = writeln!(t, "ExecStop={} deactivate {name}", remap.display());
    t
}

/// Write every pair's unit into `dir` (the generator's normal directory), with the links
/// that pull it in: from `dev-mapper-NAME.device` (`.requires`), and from
/// `local-fs-pre.target` (`.wants`, or `.requires` without `nofail`). Returns the units
/// written.
pub fn write_units(
    dir: &Path,
    tab: &Remaptab,
    source: &Path,
    remap: &Path,
) -> Result<Vec<PathBuf>, UnitsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UnitsError::Write { path, source }
    };
    let mut written = Vec::new();
    for entry in &tab.entries {
        let unit = activation_unit(entry.name.as_str());
        let path = dir.join(&unit);
        std::fs::write(&path, unit_text(entry, source, remap)).map_err(io(&path))?;
        let mapper = device_unit(&entry.name.device_path());
        let target_link = if entry.nofail { "wants" } else { "requires" };
        for link_dir in [
            dir.join(format!("{mapper}.requires")),
            dir.join(format!("local-fs-pre.target.{target_link}")),
        ] {
            std::fs::create_dir_all(&link_dir).map_err(io(&link_dir))?;
            let link = link_dir.join(&unit);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..").join(&unit), &link)
                    .map_err(io(&link))?;
            }
        }
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_as_systemd_does() {
        // The expected values are what `systemd-escape` prints (the test suite also checks
        // against the tool itself; see tests/boot_units.rs).
        assert_eq!(escape_path(Path::new("/dev/sdb")), "dev-sdb");
        assert_eq!(
            escape_path(Path::new(
                "/dev/disk/by-id/ata-WDC_WD10EZEX-00BN5A0_WD-WCC3F1234567"
            )),
            "dev-disk-by\\x2did-ata\\x2dWDC_WD10EZEX\\x2d00BN5A0_WD\\x2dWCC3F1234567"
        );
        assert_eq!(escape_path(Path::new("//dev//mapper/x/")), "dev-mapper-x");
        assert_eq!(escape_path(Path::new("/")), "-");
        assert_eq!(escape("sdb-remap+1"), "sdb\\x2dremap\\x2b1");
        assert_eq!(escape(".hidden"), "\\x2ehidden");
    }
}
