//! Device-mapper through `dmsetup`: create, message, remove, and the questions asked before
//! (is the target registered, does a name exist, how many hold it open).
//!
//! `dmsetup` rather than the ioctl interface: it is the tool operators run and read in logs,
//! it synchronises with udev the way every other device-mapper user does (LVM, cryptsetup),
//! and it keeps `unsafe` ioctls out of this crate. Its error text is passed on whole.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Why running `dmsetup` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DmsetupError {
    /// The program could not be started (not installed, not executable).
    #[error("cannot run {}: {source} (is the dmsetup package installed?)", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed; `stderr` is what it said.
    #[error("`dmsetup {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: String,
        stderr: String,
    },
}

/// Whether udev runs and will create `/dev/mapper` nodes (and must be waited for), or not
/// (an initramfs without udev: `dmsetup` makes the nodes itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Udev {
    Running,
    Absent,
}

impl Udev {
    /// udev's control socket exists while it runs.
    pub fn detect() -> Udev {
        if std::path::Path::new("/run/udev/control").exists() {
            Udev::Running
        } else {
            Udev::Absent
        }
    }
}

/// The `dmsetup` program and how to run it.
#[derive(Debug, Clone)]
pub struct Dmsetup {
    pub program: PathBuf,
    pub udev: Udev,
}

impl Dmsetup {
    /// `dmsetup` from `PATH`, udev as it is now.
    pub fn system() -> Dmsetup {
        Dmsetup {
            program: PathBuf::from("dmsetup"),
            udev: Udev::detect(),
        }
    }

    fn run(&self, args: &[&str]) -> Result<Output, DmsetupError> {
        Command::new(&self.program)
            .args(args)
            .output()
            .map_err(|source| DmsetupError::Spawn {
                program: self.program.clone(),
                source,
            })
    }

    /// Run and require success; return stdout.
    fn ok(&self, args: &[&str]) -> Result<String, DmsetupError> {
        let out = self.run(args)?;
        if !out.status.success() {
            return Err(DmsetupError::Failed {
                args: args.join(" "),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .replace('\n', "; "),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn udev_args(&self) -> &'static [&'static str] {
        match self.udev {
            Udev::Running => &[],
            Udev::Absent => &["--noudevsync"],
        }
    }

    /// The registered targets' names (`dmsetup targets`).
    pub fn targets(&self) -> Result<Vec<String>, DmsetupError> {
        Ok(self
            .ok(&["targets"])?
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect())
    }

    /// Whether a device of this name exists.
    pub fn exists(&self, name: &str) -> Result<bool, DmsetupError> {
        let out = self.run(&["info", "-c", "--noheadings", "-o", "name", name])?;
        Ok(out.status.success() && !out.stdout.trim_ascii().is_empty())
    }

    /// How many hold the device open (mounts, other device-mapper devices, processes).
    pub fn open_count(&self, name: &str) -> Result<u64, DmsetupError> {
        let text = self.ok(&["info", "-c", "--noheadings", "-o", "open", name])?;
        text.trim().parse().map_err(|_| DmsetupError::Failed {
            args: format!("info -c --noheadings -o open {name}"),
            status: "unexpected output".to_string(),
            stderr: text.trim().to_string(),
        })
    }

    /// The device's table, one line per segment.
    pub fn table(&self, name: &str) -> Result<String, DmsetupError> {
        self.ok(&["table", name])
    }

    /// Create and resume a device with a one-line table; make its node when udev does not.
    pub fn create(&self, name: &str, uuid: &str, table: &str) -> Result<(), DmsetupError> {
        let mut args = vec!["create"];
        args.extend_from_slice(self.udev_args());
        args.extend_from_slice(&[name, "--uuid", uuid, "--table", table]);
        self.ok(&args)?;
        if self.udev == Udev::Absent {
            self.ok(&["mknodes", name])?;
        }
        Ok(())
    }

    /// Send a target message to sector 0; return the answer.
    pub fn message(&self, name: &str, message: &str) -> Result<String, DmsetupError> {
        Ok(self
            .ok(&["message", name, "0", message])?
            .trim()
            .to_string())
    }

    /// Remove the device (device-mapper suspends it first, flushing what is queued).
    pub fn remove(&self, name: &str) -> Result<(), DmsetupError> {
        let mut args = vec!["remove"];
        args.extend_from_slice(self.udev_args());
        args.push(name);
        self.ok(&args).map(|_| ())
    }
}
