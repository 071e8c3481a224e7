//! `remap systemd-generator NORMAL_DIR [EARLY_DIR LATE_DIR]`: systemd's generator for
//! `/etc/remaptab` (installed as `/usr/lib/systemd/system-generators/remap-generator`,
//! `dist/systemd/remap-generator`): one `remap-activate@NAME.service` per pair.

use std::io::Write;
use std::path::PathBuf;

use crate::error::CliError;
use remap_service::{boot_units, remaptab};

const AFTER_HELP: &str = "\
systemd runs this at boot and at `systemctl daemon-reload` with three directories; the units
go to the first. Each unit waits for both devices (BindsTo= their .device units), runs
`remap activate NAME MAIN SPARE [options]`, and is required by dev-mapper-NAME.device, so
an /etc/fstab line for /dev/mapper/NAME pulls it in; `local-fs-pre.target` waits for it
unless the line says nofail. A bad line is reported with its number and skipped; the other
lines still get their units, and the exit status is 1.

Examples:
  remap systemd-generator /tmp/units               see what boot would do
  systemd-analyze verify /tmp/units/remap-activate@salvage.service";

/// Write the systemd units that bring up the pairs of /etc/remaptab at boot.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Where the units go (systemd's "normal" generator directory).
    #[arg(value_name = "NORMAL_DIR")]
    pub normal_dir: PathBuf,
    /// systemd's early and late directories (not used).
    #[arg(value_name = "EARLY_DIR LATE_DIR", num_args = 0..=2)]
    pub other_dirs: Vec<PathBuf>,
    /// The configuration file.
    #[arg(long, value_name = "PATH", default_value = remaptab::PATH)]
    pub remaptab: PathBuf,
    /// The `remap` binary the units run (default: this one).
    #[arg(long, value_name = "PATH")]
    pub remap_binary: Option<PathBuf>,
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    let text = match std::fs::read_to_string(&args.remaptab) {
        Ok(t) => t,
        // No file: no pairs, nothing to do (as systemd-cryptsetup-generator without crypttab).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CliError::Remaptab {
                path: args.remaptab.clone(),
                source,
            });
        }
    };
    let tab = remaptab::parse(&args.remaptab, &text);
    let remap = match &args.remap_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|source| CliError::Remaptab {
            path: PathBuf::from("/proc/self/exe"),
            source,
        })?,
    };
    let written = boot_units::write_units(&args.normal_dir, &tab, &args.remaptab, &remap)?;
    for unit in &written {
        writeln!(out, "wrote {}", unit.display())?;
    }
    for e in &tab.errors {
        eprintln!("remap: {e}; line skipped");
    }
    if !tab.errors.is_empty() {
        return Err(CliError::RemaptabLines {
            path: args.remaptab.clone(),
            bad: tab.errors.len(),
        });
    }
    Ok(())
}
