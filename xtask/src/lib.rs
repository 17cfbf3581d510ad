//! Generated documentation for imgblk: man pages (`doc/man/*.1`) and shell completions
//! (`contrib/completions/`), all rendered from the same clap definitions as the binary.

use clap::CommandFactory;
use std::path::PathBuf;

/// Every generated file, as (path relative to the repository root, contents).
pub fn generated_files() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    // Built, so that the subcommands carry the global options (-v, -q); without `help`,
    // which has no page of its own.
    let mut command = imgblk::cli::Cli::command().disable_help_subcommand(true);
    command.build();
    let pages: Vec<String> = command
        .get_subcommands()
        .map(|sub| format!("imgblk-{}", sub.get_name()))
        .collect();
    files.push((
        PathBuf::from("doc/man/imgblk.1"),
        render_man(command.clone(), &pages),
    ));
    for sub in command.get_subcommands() {
        let name = format!("imgblk-{}", sub.get_name());
        let mut page = sub.clone().name(name.clone());
        if let Some(version) = command.get_version() {
            // for the page's title line; subcommands take no -V
            page = page.version(version.to_owned()).disable_version_flag(true);
        }
        let see_also = std::iter::once("imgblk".to_string())
            .chain(
                related(sub.get_name())
                    .iter()
                    .map(|r| format!("imgblk-{r}")),
            )
            .collect::<Vec<_>>();
        files.push((
            PathBuf::from(format!("doc/man/{name}.1")),
            render_man(page, &see_also),
        ));
    }
    // Devices and pieces cannot be listed by clap's static completions: the bash script
    // gets a few lines that offer the devices there are to detach and recover, and the
    // pieces of the images given to --part and --lv; fish the devices (zsh completes the
    // device's path as a file already).
    for (shell, file, devices) in [
        (clap_complete::Shell::Bash, "imgblk.bash", DYNAMIC_BASH),
        (clap_complete::Shell::Zsh, "_imgblk", ""),
        (clap_complete::Shell::Fish, "imgblk.fish", DEVICES_FISH),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut imgblk::cli::Cli::command(), "imgblk", &mut out);
        out.extend_from_slice(devices.as_bytes());
        files.push((PathBuf::from("contrib/completions").join(file), out));
    }
    files
}

/// Bash completion of the devices `detach` and `recover` take, and of pieces.
const DYNAMIC_BASH: &str = include_str!("completions/dynamic.bash");
/// Fish completion of the devices `detach` and `recover` take.
const DEVICES_FISH: &str = include_str!("completions/devices.fish");

/// The commands a reader of `command`'s page will want next.
fn related(command: &str) -> &'static [&'static str] {
    match command {
        "attach" => &["detach", "list", "recover", "mount"],
        "detach" | "recover" => &["attach", "list"],
        "list" => &["attach", "detach", "recover"],
        "mount" => &["umount", "inspect", "fsck"],
        "umount" => &["mount", "detach"],
        "fsck" => &["inspect", "mount"],
        "info" | "map" | "cat" => &["info", "map", "cat", "inspect"],
        "inspect" => &["mount", "attach", "fsck"],
        _ => &["attach"],
    }
}

const ENVIRONMENT: &str = "\
RUST_LOG
  Log filter (tracing's EnvFilter syntax, e.g. imgblk=debug); overrides -v and -q.
IMGBLK_CONFIG
  The configuration file to read instead of /etc/imgblk/config.toml.
IMGBLK_RUN_DIR
  The folder of device records, daemon logs and qcow2 metadata journals, instead of
  /run/imgblk.
PATH
  Where mount, umount and the file system checkers are found (the sbin folders are
  searched too).";

const FILES: &str = "\
/etc/imgblk/config.toml
  Which host files images may name, for every call: backing-policy = \"follow\",
  \"tree\" or \"none\"; untrusted = true; allow-devices = true (options override it);
  memory-mib = N, the memory budget of a backing chain's qcow2 tables (256).
/run/imgblk/ublkbN.json
  The record of device N: what it serves, its daemon (imgblk list, detach, recover).
/run/imgblk/ublkbN.log
  The log of device N's background daemon.
/run/imgblk/journal/
  Metadata journals of qcow2 images served read-write, replayed after a crash.
/dev/ublk-control
  The ublk driver's control device (modprobe ublk_drv); in a container, pass it in
  together with the /dev/ublkcN and /dev/ublkbN nodes.
/dev/ublkbN, /dev/ublkbNpM
  The block devices served, and their partitions.";

/// One of clap_mangen's section renderers.
type Render = fn(&clap_mangen::Man, &mut dyn std::io::Write) -> std::io::Result<()>;

/// The man page of `command`: clap_mangen's sections, then the text after the options
/// as sections of their own (a paragraph headed `Examples:` becomes EXAMPLES), then
/// ENVIRONMENT, FILES and SEE ALSO (`see_also`: pages in section 1).
fn render_man(command: clap::Command, see_also: &[String]) -> Vec<u8> {
    let man = clap_mangen::Man::new(command.clone());
    let mut out = Vec::new();
    let parts: [Render; 5] = [
        clap_mangen::Man::render_title,
        clap_mangen::Man::render_name_section,
        clap_mangen::Man::render_synopsis_section,
        clap_mangen::Man::render_description_section,
        clap_mangen::Man::render_options_section,
    ];
    for part in parts {
        part(&man, &mut out).expect("rendering into a Vec cannot fail");
    }
    if command.has_subcommands() {
        man.render_subcommands_section(&mut out)
            .expect("rendering into a Vec cannot fail");
    }
    let after = command
        .get_after_long_help()
        .or(command.get_after_help())
        .map(|t| t.to_string())
        .unwrap_or_default();
    for (heading, body) in sections(&after) {
        section(&mut out, &heading, &body);
    }
    section(&mut out, "ENVIRONMENT", ENVIRONMENT);
    section(&mut out, "FILES", FILES);
    let pages: Vec<String> = see_also.iter().map(|p| format!("{p}(1)")).collect();
    section(&mut out, "SEE ALSO", &pages.join(", "));
    if command.get_version().is_some() {
        man.render_version_section(&mut out)
            .expect("rendering into a Vec cannot fail");
    }
    out
}

/// Help text cut into (heading, body) at paragraphs whose first line is `Heading:`; a
/// paragraph without one belongs to the section before.
fn sections(text: &str) -> Vec<(String, String)> {
    let mut sections: Vec<(String, String)> = Vec::new();
    for paragraph in text.split("\n\n").filter(|p| !p.trim().is_empty()) {
        let (first, rest) = paragraph.split_once('\n').unwrap_or((paragraph, ""));
        match first.strip_suffix(':').filter(|h| !h.starts_with(' ')) {
            Some(heading) => sections.push((heading.to_uppercase(), rest.to_string())),
            None => match sections.last_mut() {
                Some((_, body)) => *body = format!("{body}\n\n{paragraph}"),
                None => sections.push(("NOTES".into(), paragraph.to_string())),
            },
        }
    }
    sections
}

/// Appends a man page section holding `body` as preformatted lines.
fn section(out: &mut Vec<u8>, heading: &str, body: &str) {
    out.extend_from_slice(format!(".SH \"{heading}\"\n.nf\n").as_bytes());
    for line in body.lines() {
        let line = line.replace('\\', "\\e").replace('-', "\\-");
        let guard = if line.starts_with(['.', '\'']) {
            "\\&"
        } else {
            ""
        };
        out.extend_from_slice(format!("{guard}{line}\n").as_bytes());
    }
    out.extend_from_slice(b".fi\n");
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

    /// The text of the generated man page `name`.
    fn page(name: &str) -> String {
        let files = generated_files();
        let (_, page) = files
            .iter()
            .find(|(p, _)| p.ends_with(format!("{name}.1")))
            .unwrap_or_else(|| panic!("no man page {name}"));
        String::from_utf8_lossy(page).into_owned()
    }

    #[test]
    fn pages_have_the_sections_of_a_man_page() {
        let top = page("imgblk");
        for section in [
            "EXAMPLES",
            "EXIT STATUS",
            "ENVIRONMENT",
            "FILES",
            "SEE ALSO",
        ] {
            assert!(
                top.contains(&format!(".SH \"{section}\"")),
                "imgblk.1 lacks {section}"
            );
        }
        assert!(!top.contains("EXTRA"), "exit codes under EXTRA");
        assert!(
            !top.contains("imgblk\\-help"),
            "imgblk.1 names imgblk-help(1)"
        );
        let fsck = page("imgblk-fsck");
        assert!(
            fsck.contains(".SH \"EXIT STATUS\""),
            "imgblk-fsck.1: no EXIT STATUS"
        );
    }

    #[test]
    fn subcommand_pages_list_the_global_options_and_no_version_flag() {
        let attach = page("imgblk-attach");
        assert!(attach.contains("\\-\\-verbose"), "imgblk-attach.1 lacks -v");
        assert!(attach.contains("\\-\\-quiet"), "imgblk-attach.1 lacks -q");
        assert!(
            !attach.contains("\\-\\-version"),
            "imgblk-attach.1 lists -V"
        );
    }

    #[test]
    fn devices_and_pieces_complete_in_bash() {
        let command = imgblk::cli::Cli::command();
        for name in ["detach", "recover"] {
            let sub = command.find_subcommand(name).unwrap();
            assert!(
                sub.get_positionals().any(|a| a.get_id() == "device"),
                "{name}"
            );
            assert!(
                DYNAMIC_BASH.contains(name) && DEVICES_FISH.contains(name),
                "{name}"
            );
        }
        let (_, bash) = generated_files()
            .into_iter()
            .find(|(p, _)| p.ends_with("imgblk.bash"))
            .unwrap();
        // `imgblk inspect --json` as it prints names, for an image with two partitions
        // (one with a GPT name) and an LV
        let inspect = r#"imgblk() { printf '%s\n' '  "name": "disk0",' \
            '      "name": "disk0p1",' '        "name": null,' '      "name": "disk0p2",' \
            '        "name": "EFI system",' '        "name": "vg0/root",'; }"#;
        let image = std::env::current_exe().unwrap();
        let image = image.display();
        // what completes the word at `at` of the words typed
        let complete_at = |words: &str, at: &str| {
            let script = format!(
                "{}\n{inspect}\nCOMP_WORDS=({words}); COMP_CWORD={at}; \
                 _imgblk_dynamic imgblk; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                String::from_utf8_lossy(&bash)
            );
            let out = std::process::Command::new("bash")
                .args(["-c", &script])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let complete = |words: &str| complete_at(words, "$((${#COMP_WORDS[@]}-1))");
        assert_eq!(
            complete(&format!("imgblk mount {image} --part ''")),
            "1\n2\n"
        );
        assert_eq!(complete(&format!("imgblk cat {image} --part 2")), "2\n");
        assert_eq!(
            complete(&format!("imgblk attach {image} --lv ''")),
            "vg0/root\n"
        );
        let before = complete_at(&format!("imgblk mount --lv '' {image} /mnt"), "3");
        assert_eq!(before, "vg0/root\n", "the image typed after the option");
        assert_eq!(
            complete("imgblk mount --part ''"),
            "\n",
            "no image, no pieces"
        );
        assert!(complete("imgblk detach --").contains("--force"));
        assert!(complete("imgblk attach --r").contains("--rw"));
        let devices = complete("imgblk detach ''");
        let listed = std::fs::read_dir("/dev")
            .unwrap()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("ublkb")
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
            .count();
        assert_eq!(
            devices.lines().filter(|l| !l.is_empty()).count(),
            listed,
            "{devices}"
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
            assert!(
                text.contains(".SH \"EXAMPLES\""),
                "imgblk-{name}.1 has no examples"
            );
        }
    }
}
