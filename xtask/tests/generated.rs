//! The generated man pages and completions, checked with the real readers: `man` renders
//! every page and the main page names every subcommand; bash, with the generated script
//! sourced, registers a completion for `remap` and completes subcommands and options.

use std::process::Command;

fn subcommands() -> Vec<String> {
    xtask::command()
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .filter(|n| n != "help")
        .collect()
}

fn run(c: &mut Command) -> String {
    let o = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e} (scripts/install-deps.sh installs it)"));
    assert!(
        o.status.success(),
        "{c:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `man -l PAGE` rendered as plain text, every run of white space (line breaks and the
/// justification's double spaces) made one space.
fn render(page: &std::path::Path) -> String {
    // --nh: no hyphenation, so a word broken across lines does not come back as "for‐ mat".
    run(Command::new("man")
        .arg("--nh")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "100")
        .env("MAN_KEEP_FORMATTING", "0")
        .env("PAGER", "cat")
        .env("MANPAGER", "cat"))
    // Overstrike bold and underline ("X\bX", "_\bX"): keep the last character of each.
    .chars()
    .fold(String::new(), |mut text, c| {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
        text
    })
    .split_whitespace()
    .collect::<Vec<_>>()
    .join(" ")
}

#[test]
fn the_man_pages_render_and_name_every_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = xtask::man_pages(dir.path()).expect("generate");
    let subs = subcommands();
    assert!(subs.len() >= 11, "{subs:?}");
    assert!(subs.iter().any(|s| s == "probe"), "{subs:?}");
    assert_eq!(files.len(), subs.len() + 1);

    let main = render(&dir.path().join("remap.1"));
    assert!(
        main.contains("remap - Keep a failing disk in service"),
        "{main}"
    );
    for sub in &subs {
        assert!(
            main.contains(&format!("remap-{sub}(1)")),
            "remap.1 does not name `{sub}`:\n{main}"
        );
        let page = render(&dir.path().join(format!("remap-{sub}.1")));
        let about = xtask::command()
            .find_subcommand(sub)
            .and_then(|c| c.get_about().map(ToString::to_string))
            .unwrap_or_default();
        assert!(!about.is_empty(), "{sub} has no about");
        assert!(
            page.contains(&format!("remap-{sub} - {about}")),
            "remap-{sub}.1 lacks its NAME line `{about}`:\n{page}"
        );
    }
    let probe = render(&dir.path().join("remap-probe.1"));
    assert!(probe.contains("--json"), "{probe}");
    assert!(probe.contains("ID_FS_TYPE=remap_spare"), "{probe}");
}

/// `bash` with the generated completion sourced; `script` runs after it.
fn bash_with_completion(script: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    xtask::completions(dir.path()).expect("generate");
    let bash = dir.path().join("remap");
    let full = format!("source {}\n{script}", bash.to_str().expect("utf-8 path"));
    run(Command::new("bash").arg("--norc").arg("-c").arg(full))
}

/// What the registered completion function offers for `words`, the last being completed.
fn complete(words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}\n\
         fn=$(complete -p remap | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p')\n\
         \"$fn\" remap '{cur}' '{prev}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words = quoted.join(" "),
        cword = words.len() - 1,
        line = words.join(" "),
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    bash_with_completion(&script)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_options() {
    let registered = bash_with_completion("complete -p remap");
    assert!(
        registered.contains("-F ") && registered.trim_end().ends_with(" remap"),
        "{registered}"
    );

    let all = complete(&["remap", ""]);
    for sub in subcommands() {
        assert!(all.contains(&sub), "`remap <TAB>` lacks {sub}: {all:?}");
    }
    assert_eq!(complete(&["remap", "pro"]), ["probe"]);
    let st = complete(&["remap", "st"]);
    assert_eq!(st, ["status"], "{st:?}");
    let opts = complete(&["remap", "probe", "--j"]);
    assert_eq!(opts, ["--json"], "{opts:?}");
    // compgen agrees on the word list the function uses.
    let words = bash_with_completion("compgen -W 'probe status' -- pr");
    assert_eq!(words.trim(), "probe");
}

#[test]
fn zsh_and_fish_scripts_name_every_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    xtask::completions(dir.path()).expect("generate");
    for name in ["_remap", "remap.fish"] {
        let text = std::fs::read_to_string(dir.path().join(name)).expect("read");
        for sub in subcommands() {
            assert!(text.contains(&sub), "{name} lacks {sub}");
        }
    }
}
