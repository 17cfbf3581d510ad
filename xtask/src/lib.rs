//! Generated documentation for imgblk: man pages (`doc/man/*.1`) and shell completions
//! (`contrib/completions/`), all rendered from the same clap definitions as the binary.

use clap::CommandFactory;
use std::path::PathBuf;

/// Every generated file, as (path relative to the repository root, contents).
pub fn generated_files() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let command = imgblk::cli::Cli::command();
    files.push((
        PathBuf::from("doc/man/imgblk.1"),
        render_man(command.clone()),
    ));
    for sub in command.get_subcommands() {
        let name = format!("imgblk-{}", sub.get_name());
        let mut page = sub.clone().name(name.clone());
        if let Some(version) = command.get_version() {
            page = page.version(version.to_owned());
        }
        files.push((PathBuf::from(format!("doc/man/{name}.1")), render_man(page)));
    }
    for (shell, file) in [
        (clap_complete::Shell::Bash, "imgblk.bash"),
        (clap_complete::Shell::Zsh, "_imgblk"),
        (clap_complete::Shell::Fish, "imgblk.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), "imgblk", &mut out);
        files.push((PathBuf::from("contrib/completions").join(file), out));
    }
    files
}

fn render_man(command: clap::Command) -> Vec<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut out)
        .expect("rendering into a Vec cannot fail");
    out
}

/// The repository root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed man pages and completions must match the clap code.
    #[test]
    fn generated_docs_are_current() {
        let root = repo_root();
        let stale: Vec<String> = generated_files()
            .into_iter()
            .filter(|(path, contents)| {
                std::fs::read(root.join(path)).ok().as_ref() != Some(contents)
            })
            .map(|(path, _)| path.display().to_string())
            .collect();
        assert!(
            stale.is_empty(),
            "stale or missing generated files: {stale:?}; run `cargo xtask docs` and commit"
        );
    }

    #[test]
    fn every_command_has_a_man_page_with_an_example() {
        let files = generated_files();
        for name in ["attach", "detach", "list", "info", "doctor"] {
            let (_, page) = files
                .iter()
                .find(|(p, _)| p.ends_with(format!("imgblk-{name}.1")))
                .unwrap_or_else(|| panic!("no man page for {name}"));
            let text = String::from_utf8_lossy(page);
            assert!(text.contains("Examples"), "imgblk-{name}.1 has no examples");
        }
    }
}
