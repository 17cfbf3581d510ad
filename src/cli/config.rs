//! The configuration file (`/etc/imgblk/config.toml`, or the file `$IMGBLK_CONFIG`
//! names) and the options that override it: which host files images may name.
//!
//! The file holds `key = value` lines (a subset of TOML: strings in double quotes,
//! `true`/`false`, `#` comments, an optional `[images]` table):
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

/// The settings that the text of a configuration file makes.
fn parse(text: &str) -> Result<Config> {
    let (mut backing, mut untrusted, mut allow_devices) = (None, false, false);
    let mut memory_budget = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() || line == "[images]" {
            continue;
        }
        let wrong = |what: &str| Error::invalid(format!("line {}: {what}", number + 1));
        let (key, value) = line
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| wrong("expected `key = value` or `[images]`"))?;
        let flag = || match value {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(wrong(&format!("{key} must be true or false"))),
        };
        match key {
            "backing-policy" => {
                let name = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .ok_or_else(|| wrong("backing-policy must be a quoted string"))?;
                backing = Some(name.parse::<Backing>().map_err(|e| wrong(&e.to_string()))?);
            }
            "memory-mib" => {
                let mib = value
                    .parse::<u64>()
                    .ok()
                    .filter(|&mib| (1..=1 << 20).contains(&mib))
                    .ok_or_else(|| wrong("memory-mib must be a whole number of MiB, 1 or more"))?;
                memory_budget = Some(mib << 20);
            }
            "untrusted" => untrusted = flag()?,
            "allow-devices" => allow_devices = flag()?,
            _ => return Err(wrong(&format!("unknown key `{key}`"))),
        }
    }
    let mut policy = match untrusted {
        true => NamePolicy::UNTRUSTED,
        false => NamePolicy::default(),
    };
    if let Some(backing) = backing {
        policy.backing = backing;
    }
    if allow_devices {
        policy.devices = Devices::Allow;
    }
    Ok(Config {
        policy,
        memory_budget,
    })
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
            (
                "backing-policy = tree",
                "line 1: backing-policy must be a quoted string",
            ),
            (
                "\nbacking-policy = \"all\"",
                "line 2: unknown backing policy `all`",
            ),
            ("untrusted = yes", "untrusted must be true or false"),
            ("color = \"red\"", "unknown key `color`"),
            ("what", "expected `key = value`"),
            ("memory-mib = 0", "memory-mib must be a whole number"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }
}
