//! `cargo run -p xtask -- man DIR` and `cargo run -p xtask -- completions DIR`: the man
//! pages and shell completions of `remap`, generated from its clap definitions
//! (`remap_cli::Cli`), for the packages (`packaging/build-deb.sh`).
//!
//! A separate binary rather than a hidden `remap` subcommand: the generators stay out of
//! the installed binary and out of `cargo build -p remap-cli`; only packaging builds them.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: xtask man DIR           write remap.1 and remap-SUBCOMMAND.1 into DIR\n       \
         xtask completions DIR   write bash (remap), zsh (_remap) and fish (remap.fish) into DIR"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [task, dir] = args.as_slice() else {
        return usage();
    };
    let dir = PathBuf::from(dir);
    let result = match task.as_str() {
        "man" => xtask::man_pages(&dir),
        "completions" => xtask::completions(&dir),
        _ => return usage(),
    };
    match result {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask {task}: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
