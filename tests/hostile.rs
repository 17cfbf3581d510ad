//! Hostile images (issue 27): whatever an image of unknown origin holds, the commands that
//! read it (`info`, `map`, `cat`, `inspect`) finish quickly with a clear error or a
//! result, within bounded memory, and print nothing that drives the terminal.

mod common;

use common::qemu_img;
use imgblk::image::Format;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a command on a hostile image may take before the test calls it a hang.
const PATIENCE: Duration = Duration::from_secs(30);

/// What one run of `imgblk` did.
struct Run {
    /// Whether it exited with status 0.
    success: bool,
    /// Its exit status, if it exited.
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// The processor time it used (user and system): unlike the time it took, what a
    /// busy host does not inflate.
    cpu: Duration,
    /// Its peak resident set, in KiB (`ru_maxrss` from `wait4`).
    max_rss_kib: i64,
}

impl Run {
    /// Standard error, as text.
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Reads all of `pipe` on a thread of its own, so that a child filling it never blocks.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).expect("read imgblk's output");
        bytes
    })
}

/// Runs `imgblk ARGS` in `dir`, with no configuration file (see [`imgblk_config`]).
fn imgblk(dir: &Path, args: &[&str]) -> Run {
    imgblk_config(dir, &dir.join("no-such-config.toml"), args)
}

/// Runs `imgblk ARGS` in `dir` with the configuration file `config`, killing it (and
/// failing the test) if it has not finished within [`PATIENCE`]. The child is reaped by
/// `wait4`, which reports its peak memory.
#[allow(clippy::zombie_processes)]
fn imgblk_config(dir: &Path, config: &Path, args: &[&str]) -> Run {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgblk"))
        .args(args)
        .env("IMGBLK_CONFIG", config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run imgblk");
    let stdout = drain(child.stdout.take().expect("stdout piped"));
    let stderr = drain(child.stderr.take().expect("stderr piped"));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child, writing into two locals.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            break;
        }
        assert_eq!(reaped, 0, "wait4: {}", std::io::Error::last_os_error());
        if start.elapsed() > PATIENCE {
            child.kill().ok();
            child.wait().ok();
            panic!("imgblk {args:?} still running after {PATIENCE:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Run {
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        cpu: cpu_time(&usage.ru_utime) + cpu_time(&usage.ru_stime),
        max_rss_kib: usage.ru_maxrss,
    }
}

/// A `timeval` of `rusage` as a duration.
fn cpu_time(time: &libc::timeval) -> Duration {
    Duration::from_secs(time.tv_sec as u64) + Duration::from_micros(time.tv_usec as u64)
}

/// Asserts that `imgblk COMMAND image` fails, for every command that reads images, with
/// an error that contains each of `wanted`.
fn refused_by_every_reader(dir: &Path, image: &str, wanted: &[&str]) {
    refused_by_every_reader_with(dir, &[], image, wanted);
}

/// Asserts that `imgblk COMMAND OPTIONS image` fails, for every command that reads images,
/// as an unusable input (exit 3), with an error that contains each of `wanted`.
fn refused_by_every_reader_with(dir: &Path, options: &[&str], image: &str, wanted: &[&str]) {
    for command in ["info", "map", "cat", "inspect"] {
        let run = imgblk(dir, &[&[command], options, &[image]].concat());
        let stderr = run.stderr();
        assert_eq!(
            run.code,
            Some(3),
            "imgblk {command} {options:?} {image}: {stderr}"
        );
        for want in wanted {
            assert!(
                stderr.contains(want),
                "imgblk {command} {image}: {want:?} missing from: {stderr}"
            );
        }
    }
}

/// Makes a 1 MiB qcow2 `name` in `dir` whose backing file is `backing` (of `format`),
/// whether or not that exists or is an image.
fn qcow2_backed_by(dir: &Path, name: &str, backing: &str, format: &str) {
    qemu_img(
        dir,
        &[
            "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", format, name, "1M",
        ],
    );
}

/// Makes a 1 MiB `data.qcow2` in `dir` keeping its data in the external `data.raw`.
fn qcow2_with_data_file(dir: &Path) {
    let options = ["-o", "data_file=data.raw"];
    qemu_img(
        dir,
        &[
            &["create", "-q", "-f", "qcow2"],
            &options[..],
            &["data.qcow2", "1M"],
        ]
        .concat(),
    );
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

#[test]
fn special_files_named_by_an_image_are_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mkfifo(&d.join("fifo"));
    std::fs::create_dir(d.join("dir")).unwrap();
    for (name, target, what) in [
        ("fifo.qcow2", "fifo", "a FIFO"),
        ("dir.qcow2", "dir", "a directory"),
        ("null.qcow2", "/dev/null", "a character device"),
    ] {
        qcow2_backed_by(d, name, target, "raw");
        refused_by_every_reader(d, name, &[name, "backing file", target, what]);
    }
    // An external data file that is a FIFO: made as a file, then replaced.
    qcow2_with_data_file(d);
    std::fs::remove_file(d.join("data.raw")).unwrap();
    mkfifo(&d.join("data.raw"));
    refused_by_every_reader(
        d,
        "data.qcow2",
        &["data.qcow2", "data file", "data.raw", "a FIFO"],
    );
}

#[test]
fn a_vmdk_extent_that_is_a_fifo_is_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    nix::unistd::mkfifo(
        &d.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::fs::write(
        d.join("disk.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\n\nRW 2048 FLAT \"fifo\" 0\n",
    )
    .unwrap();
    refused_by_every_reader(d, "disk.vmdk", &["disk.vmdk", "extent 1", "fifo", "a FIFO"]);
}

#[test]
fn a_backing_chain_that_loops_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Its own backing file (qemu-img refuses to create that, so it is renamed into place).
    qcow2_backed_by(d, "made.qcow2", "self.qcow2", "qcow2");
    std::fs::rename(d.join("made.qcow2"), d.join("self.qcow2")).unwrap();
    refused_by_every_reader(
        d,
        "self.qcow2",
        &["self.qcow2", "this image itself", "loops"],
    );
    // A loop through a second file and a symlink to the first.
    std::os::unix::fs::symlink("a.qcow2", d.join("link.qcow2")).unwrap();
    qcow2_backed_by(d, "a.qcow2", "b.qcow2", "qcow2");
    qcow2_backed_by(d, "b.qcow2", "link.qcow2", "qcow2");
    refused_by_every_reader(
        d,
        "a.qcow2",
        &["b.qcow2: its backing file link.qcow2", "a.qcow2", "loops"],
    );
}

/// Most memory a command may use on an image whose tables are almost all empty: the L1
/// table the image really holds (32 MiB here) and the program itself.
const BOMB_RSS_KIB: i64 = 64 << 10;

/// Most processor time a command may use on such an image.
const BOMB_CPU: Duration = Duration::from_secs(5);

/// Makes `name` in `dir` a qcow2 with clusters of 2^`cluster_bits` bytes and a virtual
/// size needing 4 Mi L1 entries (the most accepted), every one of them empty: a file of a
/// few hundred KiB on disk (the 32 MiB L1 table is a hole) claiming petabytes.
fn l1_bomb(dir: &Path, name: &str, cluster_bits: u32) {
    let cluster = format!("cluster_size={}", 1u64 << cluster_bits);
    qemu_img(
        dir,
        &["create", "-q", "-f", "qcow2", "-o", &cluster, name, "1M"],
    );
    let l1_entries: u64 = 4 << 20;
    let per_l1_entry = 1u64 << (cluster_bits + cluster_bits - 3);
    let l1_offset = 3u64 << cluster_bits; // after qemu-img's header and refcount clusters
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(name))
        .unwrap();
    file.write_all_at(&(l1_entries * per_l1_entry).to_be_bytes(), 24)
        .unwrap();
    file.write_all_at(&(l1_entries as u32).to_be_bytes(), 36)
        .unwrap();
    file.write_all_at(&l1_offset.to_be_bytes(), 40).unwrap();
    file.set_len(l1_offset + 8 * l1_entries).unwrap();
}

/// Asserts that `imgblk COMMAND image` stays within the bomb bounds, and succeeds if
/// `succeeds`.
fn within_bomb_bounds(dir: &Path, command: &str, image: &str, succeeds: bool) {
    let run = imgblk(dir, &[command, image]);
    assert_eq!(
        run.success,
        succeeds,
        "imgblk {command} {image}: {}",
        run.stderr()
    );
    assert!(
        run.max_rss_kib < BOMB_RSS_KIB,
        "imgblk {command} {image} used {} KiB of memory",
        run.max_rss_kib
    );
    assert!(
        run.cpu < BOMB_CPU,
        "imgblk {command} {image} used {:?} of processor time",
        run.cpu
    );
}

#[test]
fn an_image_declaring_millions_of_empty_l1_entries_costs_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 64 KiB clusters: 2 PiB; 2 MiB clusters: 2 EiB, 2^31 GiB to walk through.
    l1_bomb(d, "bomb.qcow2", 16);
    l1_bomb(d, "huge.qcow2", 21);
    for image in ["bomb.qcow2", "huge.qcow2"] {
        for command in ["info", "map", "inspect"] {
            within_bomb_bounds(d, command, image, true);
        }
    }
    let map = imgblk(d, &["map", "--json", "bomb.qcow2"]);
    let runs: serde_json::Value = serde_json::from_slice(&map.stdout).unwrap();
    assert_eq!(
        runs,
        serde_json::json!([{"start": 0, "length": 1u64 << 51, "depth": 0, "present": false,
            "zero": true, "data": false, "compressed": false}])
    );
    // The same file as its own backing file: refused before a second layer is opened.
    std::fs::rename(d.join("bomb.qcow2"), d.join("loop.qcow2")).unwrap();
    qemu_img(
        d,
        &[
            "rebase",
            "-q",
            "-u",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "loop.qcow2",
            "loop.qcow2",
        ],
    );
    for command in ["info", "map", "inspect"] {
        within_bomb_bounds(d, command, "loop.qcow2", false);
    }
}

/// Asserts that `output` of `what` holds no control character but line ends (no C0, DEL
/// or C1 code), and shows `escaped` instead.
fn shows_escaped(output: &[u8], what: &str, escaped: &str) {
    let text = String::from_utf8_lossy(output);
    let raw: Vec<char> = text
        .chars()
        .filter(|&c| c != '\n' && c.is_control())
        .collect();
    assert!(
        raw.is_empty(),
        "{what} printed control characters {raw:?}: {text}"
    );
    assert!(
        text.contains(escaped),
        "{what}: {escaped} missing from: {text}"
    );
}

#[test]
fn control_characters_from_an_image_never_reach_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Retitles the terminal, then clears it.
    let attack = "\u{1b}]0;pwn\u{7}\u{1b}[2J";
    let disk = d.join("label.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", attack])
        .arg(&disk)
        .status()
        .expect("mkfs.ext4 is required for this test (apt-get install e2fsprogs)");
    assert!(made.success(), "mkfs.ext4 failed");
    let inspect = imgblk(d, &["inspect", "label.raw"]);
    assert!(inspect.success, "inspect: {}", inspect.stderr());
    shows_escaped(&inspect.stdout, "inspect", "\\x1b]0;pwn\\x07\\x1b[2J");
    // Error messages that quote the image: a backing file named with the attack.
    qcow2_backed_by(d, "named.qcow2", attack, "raw");
    let info = imgblk(d, &["info", "named.qcow2"]);
    assert!(!info.success, "info of a missing backing file succeeded");
    shows_escaped(&info.stderr, "info", "\\x1b]0;pwn\\x07\\x1b[2J");
}

#[test]
fn an_overlay_file_is_no_more_readable_than_its_image() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for mode in [0o600, 0o640] {
        let base = d.join(format!("base-{mode:o}.raw"));
        std::fs::write(&base, [0u8; 4096]).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(mode)).unwrap();
        let overlay = d.join(format!("overlay-{mode:o}.qcow2"));
        imgblk::image::qcow2::create::create_overlay(&overlay, &base, Format::Raw, 4096).unwrap();
        let got = std::fs::metadata(&overlay).unwrap().permissions().mode() & 0o777;
        assert_eq!(got & !mode, 0, "overlay is {got:o}, its image {mode:o}");
    }
}

#[test]
fn a_block_device_is_a_backing_file_only_where_the_user_gave_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A node for /dev/loop0 (major 7, minor 0), which needs root to make.
    let device = d.join("blk");
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
    let kind = nix::sys::stat::SFlag::S_IFBLK;
    if let Err(e) = nix::sys::stat::mknod(&device, kind, mode, nix::sys::stat::makedev(7, 0)) {
        eprintln!("skipped: cannot make a block device node ({e}); run as root");
        return;
    }
    let device_name = device.to_str().unwrap();
    qcow2_backed_by(d, "dev.qcow2", device_name, "raw");
    refused_by_every_reader(
        d,
        "dev.qcow2",
        &["dev.qcow2", device_name, "a block device"],
    );
    // Opted in: a VMDK of a raw disk, a qcow2 chain across LVs. Never for --untrusted.
    assert!(imgblk(d, &["info", "--allow-devices", "dev.qcow2"]).success);
    let untrusted = imgblk(d, &["info", "--untrusted", "dev.qcow2"]);
    assert_eq!(untrusted.code, Some(3), "{}", untrusted.stderr());
    let config = d.join("config.toml");
    std::fs::write(&config, "allow-devices = true\n").unwrap();
    assert!(imgblk_config(d, &config, &["info", "dev.qcow2"]).success);
    // The image an `--overlay FILE` was made over is the user's: a device is fine there.
    let options = imgblk::image::OpenOptions {
        user_paths: vec![device.clone()],
        ..Default::default()
    };
    let opened = imgblk::image::open_image(&d.join("dev.qcow2"), &options);
    assert!(opened.is_ok(), "{}", opened.err().unwrap());
}

/// Makes `vm/` in `dir` with images naming a host file outside it, `secret.raw`, in
/// three ways (an absolute name, a relative one, a symlink inside `vm/`), and a chain
/// that stays inside (`inside.qcow2` over `base.qcow2`).
fn images_naming_host_files(dir: &Path) -> std::path::PathBuf {
    let vm = dir.join("vm");
    std::fs::create_dir(&vm).unwrap();
    std::fs::write(dir.join("secret.raw"), [b's'; 1 << 20]).unwrap();
    let secret = dir.join("secret.raw");
    qcow2_backed_by(&vm, "absolute.qcow2", secret.to_str().unwrap(), "raw");
    qcow2_backed_by(&vm, "relative.qcow2", "../secret.raw", "raw");
    std::os::unix::fs::symlink(&secret, vm.join("link.raw")).unwrap();
    qcow2_backed_by(&vm, "symlink.qcow2", "link.raw", "raw");
    qemu_img(&vm, &["create", "-q", "-f", "qcow2", "base.qcow2", "1M"]);
    qcow2_backed_by(&vm, "inside.qcow2", "base.qcow2", "qcow2");
    vm
}

#[test]
fn backing_files_outside_the_image_directory_are_refused_where_the_policy_says() {
    let dir = tempfile::tempdir().unwrap();
    let vm = images_naming_host_files(dir.path());
    for options in [&["--untrusted"][..], &["--backing-policy", "tree"]] {
        for image in ["absolute.qcow2", "relative.qcow2", "symlink.qcow2"] {
            refused_by_every_reader_with(
                &vm,
                options,
                image,
                &[image, "backing file", "secret.raw", "outside", options[0]],
            );
        }
        let run = imgblk(&vm, &[&["info"], options, &["inside.qcow2"]].concat());
        assert!(run.success, "{options:?}: {}", run.stderr());
    }
    let none = imgblk(&vm, &["info", "--backing-policy", "none", "inside.qcow2"]);
    assert_eq!(none.code, Some(3));
    assert!(
        none.stderr().contains("--backing-policy none"),
        "{}",
        none.stderr()
    );
    // As QEMU does by default: the host file is the guest's disk.
    let cat = imgblk(&vm, &["cat", "symlink.qcow2"]);
    assert!(cat.success, "{}", cat.stderr());
    assert_eq!(cat.stdout, [b's'; 1 << 20]);
    // info says where each name led.
    let info = imgblk(&vm, &["info", "--json", "symlink.qcow2"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let secret = dir.path().canonicalize().unwrap().join("secret.raw");
    assert_eq!(info["chain"][1]["path"], "link.raw");
    assert_eq!(info["chain"][1]["resolved"], secret.to_str().unwrap());
    let text = String::from_utf8(imgblk(&vm, &["info", "symlink.qcow2"]).stdout).unwrap();
    assert!(
        text.contains(&format!(
            "backing file [1]: link.raw -> {}",
            secret.display()
        )),
        "{text}"
    );
}

#[test]
fn an_external_data_file_is_refused_for_images_of_unknown_origin() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    qcow2_with_data_file(d);
    refused_by_every_reader_with(
        d,
        &["--untrusted"],
        "data.qcow2",
        &["data.qcow2", "data file", "data.raw", "--untrusted"],
    );
    assert!(imgblk(d, &["info", "data.qcow2"]).success);
}

#[test]
fn the_configuration_file_sets_the_policy_and_options_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let vm = images_naming_host_files(dir.path());
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[images]\nuntrusted = true\n").unwrap();
    let run = imgblk_config(&vm, &config, &["info", "relative.qcow2"]);
    assert_eq!(run.code, Some(3), "{}", run.stderr());
    assert!(run.stderr().contains("outside"), "{}", run.stderr());
    let run = imgblk_config(
        &vm,
        &config,
        &["info", "--backing-policy", "follow", "relative.qcow2"],
    );
    assert!(run.success, "{}", run.stderr());
    std::fs::write(&config, "backing-policy = \"nowhere\"\n").unwrap();
    let run = imgblk_config(&vm, &config, &["info", "inside.qcow2"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr());
    let stderr = run.stderr();
    assert!(
        stderr.contains("config.toml") && stderr.contains("line 1"),
        "{stderr}"
    );
    let run = imgblk(
        &vm,
        &["info", "--untrusted", "--allow-devices", "inside.qcow2"],
    );
    assert_eq!(run.code, Some(2), "{}", run.stderr());
}

/// Makes `top.qcow2` in `dir` the top of a chain of `layers` L1 bombs (32 MiB of L1 table
/// each, in a file of a few hundred KiB).
fn chain_of_bombs(dir: &Path, layers: usize) {
    for layer in 0..layers {
        let name = format!("layer{layer}.qcow2");
        l1_bomb(dir, &name, 16);
        if layer > 0 {
            let below = format!("layer{}.qcow2", layer - 1);
            let rebase = ["rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b"];
            qemu_img(
                dir,
                &[&rebase[..], &[below.as_str(), name.as_str()]].concat(),
            );
        }
    }
    std::fs::rename(
        dir.join(format!("layer{}.qcow2", layers - 1)),
        dir.join("top.qcow2"),
    )
    .unwrap();
}

#[test]
fn a_chain_shares_one_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Half of the default 256 MiB is for L1 tables: four of 32 MiB fit, a fifth does not.
    chain_of_bombs(d, 5);
    let run = imgblk(d, &["info", "top.qcow2"]);
    assert_eq!(run.code, Some(3), "{}", run.stderr());
    let stderr = run.stderr();
    assert!(
        stderr.contains("layer0.qcow2") && stderr.contains("memory budget"),
        "{stderr}"
    );
    assert!(run.max_rss_kib < 200 << 10, "used {} KiB", run.max_rss_kib);
    // A smaller budget from the configuration file: one layer's L1 table fits.
    let config = d.join("config.toml");
    std::fs::write(&config, "memory-mib = 64\n").unwrap();
    let run = imgblk_config(d, &config, &["map", "layer1.qcow2"]);
    assert_eq!(run.code, Some(3), "{}", run.stderr());
    assert!(run.stderr().contains("layer0.qcow2"), "{}", run.stderr());
    assert!(run.max_rss_kib < 80 << 10, "used {} KiB", run.max_rss_kib);
    assert!(imgblk_config(d, &config, &["map", "layer0.qcow2"]).success);
}
