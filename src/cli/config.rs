//! The configuration file (`/etc/imgblk/config.toml`, or the file `$IMGBLK_CONFIG`
//! names) and the options that override it: which host files images may name.
//!
//! The file is TOML (read with the `toml` crate); its keys stand at the top or in an
//! `[images]` table, and any other key is an error naming its line:
//!
//! ```toml
//! [images]
//! backing-policy = "tree" # follow (default), tree or none
//! untrusted = true        # as --untrusted for every call
//! allow-devices = false   # as --allow-devices
//! memory-mib = 256        # the memory budget of a backing chain's tables
//! ```

use crate::error::{Error, Result};
use crate::image::open::ChainBudget;
use crate::image::policy::{Backing, Devices, NamePolicy};
use crate::image::OpenOptions;
use std::ffi::OsString;
use std::path::PathBuf;

/// Where the configuration file is unless `$IMGBLK_CONFIG` names another.
pub const DEFAULT_PATH: &str = "/etc/imgblk/config.toml";

/// The configuration file in use: `$IMGBLK_CONFIG`, else [`DEFAULT_PATH`].
pub fn path() -> PathBuf {
    std::env::var_os("IMGBLK_CONFIG").map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from)
}

/// What the configuration file sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    /// Which host files images may name.
    pub policy: NamePolicy,
    /// The memory budget of a backing chain's tables, in bytes (`None`: the default).
    pub memory_budget: Option<u64>,
}

/// The configuration file's settings (the defaults where there is no file); an error
/// naming the file and line for one that cannot be read or understood.
pub fn load() -> Result<Config> {
    let path = path();
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text).map_err(|e| e.with_path(&path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(Error::io("cannot read the configuration file", e).with_path(&path)),
    }
}

/// The keys a configuration file may hold, at its top or in its `[images]` table.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Keys {
    backing_policy: Option<toml::Spanned<String>>,
    untrusted: Option<bool>,
    allow_devices: Option<bool>,
    memory_mib: Option<toml::Spanned<u64>>,
}

/// A whole configuration file: the keys, and the same keys in `[images]`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    backing_policy: Option<toml::Spanned<String>>,
    untrusted: Option<bool>,
    allow_devices: Option<bool>,
    memory_mib: Option<toml::Spanned<u64>>,
    images: Option<Keys>,
}

/// The settings that the text of a configuration file makes (parsed by the `toml`
/// crate); errors say the line.
fn parse(text: &str) -> Result<Config> {
    let file: File = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|span| line_of(text, span.start));
        let message = e.message().trim_end();
        Error::invalid(match line {
            Some(line) => format!("line {line}: {message}"),
            None => message.to_string(),
        })
    })?;
    let images = file.images.unwrap_or_default();
    let wrong =
        |at: usize, what: &str| Error::invalid(format!("line {}: {what}", line_of(text, at)));
    let mut policy = match images.untrusted.or(file.untrusted).unwrap_or(false) {
        true => NamePolicy::UNTRUSTED,
        false => NamePolicy::default(),
    };
    if let Some(name) = images.backing_policy.or(file.backing_policy) {
        policy.backing = name
            .get_ref()
            .parse::<Backing>()
            .map_err(|e| wrong(name.span().start, &e.to_string()))?;
    }
    if images.allow_devices.or(file.allow_devices).unwrap_or(false) {
        policy.devices = Devices::Allow;
    }
    let memory_budget = match images.memory_mib.or(file.memory_mib) {
        Some(mib) if (1..=1 << 20).contains(mib.get_ref()) => Some(mib.get_ref() << 20),
        Some(mib) => {
            return Err(wrong(
                mib.span().start,
                "memory-mib must be a whole number of MiB, 1 or more",
            ))
        }
        None => None,
    };
    Ok(Config {
        policy,
        memory_budget,
    })
}

/// The line (from 1) that byte `at` of `text` is on.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Which host files images may name, for every command that opens images (see the README's
/// Security section); overrides the configuration file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PolicyArgs {
    /// How far backing files and parents named by images are followed: `follow` any path
    /// (as QEMU does), only inside the image's directory `tree`, or `none` at all.
    /// Default from /etc/imgblk/config.toml, else follow.
    #[arg(long, value_name = "POLICY", value_enum)]
    backing_policy: Option<Backing>,
    /// For images of unknown origin: every file an image names (backing file, parent,
    /// extent) must lie inside its directory tree and be a regular file, and external
    /// data files are refused.
    #[arg(long, conflicts_with_all = ["backing_policy", "allow_devices"])]
    untrusted: bool,
    /// Let images name block devices (a VMDK of a raw disk, a qcow2 chain across LVs);
    /// by default only an image that is itself a block device may.
    #[arg(long)]
    allow_devices: bool,
}

/// `--backing-policy`'s values, each with a line of help.
impl clap::ValueEnum for Backing {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self {
            Backing::Follow => "Any path, as QEMU does",
            Backing::Tree => "Only files inside the image's directory tree",
            Backing::None => "No backing files: an image that has one is refused",
        };
        Some(clap::builder::PossibleValue::new(self.name()).help(help))
    }
}

impl PolicyArgs {
    /// The options to open images with: the configuration file's policy with these
    /// options applied, and its memory budget; the rest default.
    pub fn open_options(&self) -> Result<OpenOptions> {
        let config = load()?;
        let mut policy = config.policy;
        if self.untrusted {
            policy = NamePolicy::UNTRUSTED;
        }
        if let Some(backing) = self.backing_policy {
            policy.backing = backing;
        }
        if self.allow_devices {
            policy.devices = Devices::Allow;
        }
        Ok(OpenOptions {
            policy,
            memory_budget: config.memory_budget.map(ChainBudget::new),
            ..OpenOptions::default()
        })
    }

    /// These options as arguments of a child `imgblk attach`.
    pub fn cli_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if let Some(backing) = self.backing_policy {
            args.extend(["--backing-policy".into(), backing.name().into()]);
        }
        if self.untrusted {
            args.push("--untrusted".into());
        }
        if self.allow_devices {
            args.push("--allow-devices".into());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_sets_the_policy() {
        assert_eq!(parse("").unwrap(), Config::default());
        let text =
            "# imgblk\n[images]\nbacking-policy = \"tree\"  # only inside\nallow-devices = true\n";
        let policy = parse(text).unwrap().policy;
        assert_eq!(policy.backing, Backing::Tree);
        assert_eq!(policy.devices, Devices::Allow);
        assert!(policy.data_files);
        assert_eq!(
            parse("untrusted = true").unwrap().policy,
            NamePolicy::UNTRUSTED
        );
        assert_eq!(
            parse("memory-mib = 64").unwrap().memory_budget,
            Some(64 << 20)
        );
        for (text, wanted) in [
            ("backing-policy = tree", "line 1: "),
            (
                "\nbacking-policy = \"all\"",
                "line 2: unknown backing policy `all`",
            ),
            ("untrusted = yes", "line 1: "),
            ("color = \"red\"", "unknown field `color`"),
            ("what", "line 1: "),
            (
                "memory-mib = 0",
                "line 1: memory-mib must be a whole number",
            ),
            ("[images]\nuntrusted = 3", "line 2: invalid type"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }
}
