//! The generators behind `xtask` (see `src/main.rs`): man pages with `clap_mangen`, shell
//! completions with `clap_complete`, both from `remap_cli::Cli`, so `--help`, the man pages
//! and the completions never disagree.
#![forbid(unsafe_code)]

use std::io;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// The name the binary is installed as.
pub const BIN: &str = "remap";

/// The `remap` command as clap builds it, with every subcommand.
pub fn command() -> clap::Command {
    remap_cli::Cli::command()
}

/// Write `remap.1` and one `remap-SUBCOMMAND.1` per subcommand into `dir` (created if
/// missing); returns the files written.
pub fn man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let cmd = command();
    clap_mangen::generate_to(cmd.clone(), dir)?;
    let mut files = vec![dir.join(format!("{BIN}.1"))];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        files.push(dir.join(format!("{BIN}-{}.1", sub.get_name())));
    }
    for f in &files {
        if !f.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("clap_mangen did not write {}", f.display()),
            ));
        }
    }
    Ok(files)
}

/// The shells completions are made for, with the file name each shell's loader looks for
/// (bash-completion loads `completions/remap` on demand; zsh `_remap`; fish `remap.fish`).
pub const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, BIN),
    (Shell::Zsh, "_remap"),
    (Shell::Fish, "remap.fish"),
];

/// Write the bash, zsh and fish completions into `dir` (created if missing); returns the
/// files written.
pub fn completions(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = command();
    let mut files = Vec::new();
    for (shell, name) in SHELLS {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, BIN, &mut script);
        let path = dir.join(name);
        std::fs::write(&path, script)?;
        files.push(path);
    }
    Ok(files)
}
