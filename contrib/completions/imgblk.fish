# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_imgblk_global_optspecs
    string join \n v/verbose q/quiet h/help V/version
end

function __fish_imgblk_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_imgblk_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_imgblk_using_subcommand
    set -l cmd (__fish_imgblk_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c imgblk -n "__fish_imgblk_needs_command" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_needs_command" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c imgblk -n "__fish_imgblk_needs_command" -s V -l version -d 'Print version'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "attach" -d 'Expose an image as a block device /dev/ublkbN'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "detach" -d 'Remove a device created by `imgblk attach`'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "doctor" -d 'Check that this host can run imgblk, and say how to fix what is missing'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "list" -d 'List ublk devices: imgblk\'s own, with their image, and orphaned ones'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "map" -d 'Show the allocation map of an image, like `qemu-img map`'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "cat" -d 'Copy an image\'s guest contents (the raw disk) to stdout or a file'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "convert" -d 'Copy an image\'s guest contents into a new qcow2 or raw image'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "recover" -d 'Serve again a device whose daemon died (ublk USER_RECOVERY)'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "mount" -d 'Mount a file system inside an image: attach the piece and mount it, in one step'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "umount" -d 'Unmount what `imgblk mount` mounted, flush, and detach its device'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "info" -d 'Show an image\'s format, virtual size and backing chain'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "inspect" -d 'Show partitions, LVM volume groups and file systems inside images, without ublk'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "fsck" -d 'Check the file systems inside images (e2fsck, xfs_repair, fsck.vfat, btrfs check)'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "ls" -d 'List a directory (or one file) inside an image\'s file system'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "get" -d 'Copy one regular file out of an image\'s file system, to stdout or a file'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "tar" -d 'Write a directory tree (or one file) of an image\'s file system as a POSIX pax tar'
complete -c imgblk -n "__fish_imgblk_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l part -d 'Use partition N of the (first) image, numbered as Linux numbers them (/dev/sdaN): MBR 1-4 primary, 5+ logical; GPT entries from 1' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l lv -d 'Use logical volume LV of the guest\'s volume group VG, found on any of the images given (for a VG spanning several disks, give them all)' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l key-file -d 'Read the LUKS key from FILE (all its bytes, as `cryptsetup --key-file`; `-` is standard input, or a passphrase asked for when it is a terminal). With --luks it decrypts the selected piece (without, the passphrase is asked for on the terminal); alone it unlocks every LUKS volume in the images, so that --lv can name a logical volume inside one, as `imgblk inspect --key-file` shows them' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -s f -l format -d 'Image format; detected from the file\'s magic when omitted' -r -f -a "raw\t'A plain byte-for-byte disk (or a block device)'
qcow2\t'QEMU copy-on-write v2/v3'
vmdk\t'VMware virtual disk: a descriptor plus flat or sparse extents'
vpc\t'Microsoft Virtual PC / VHD (fixed, dynamic, differencing); qemu-img calls it "vpc"'
vhdx\t'Microsoft VHDX (Hyper-V)'
vdi\t'VirtualBox disk image'"
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l queues -d 'Number of queues, each served by its own thread and io_uring' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -s d -l depth -d 'Requests in flight per queue' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l zero-copy -d 'How request data moves between the kernel and the image. `auto` uses zero copy where the kernel offers it (Linux 6.16+: the ublk driver lends the daemon each request\'s own pages, and image I/O goes straight between them and the file); elsewhere, and with `off`, each request is copied once through a buffer in the daemon. `on` fails on a kernel without zero copy' -r -f -a "auto\t'Where the kernel offers it (Linux 6.16+)'
on\t'Always: fail on a kernel without it'
off\t'Never: copy through the daemon\'s buffers on every kernel'"
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l overlay -d 'Make the device writable but send every write to an overlay, so that the image is opened read-only, may be shared with other readers, and is never changed. `memory` keeps the writes in RAM (lost at detach; memory use grows with what is written). Any other value is the path of a new qcow2 file to create, backed by the image (its absolute path and format recorded, as `qemu-img create -b IMAGE -F FMT` would): the writes stay in it after detach, for `qemu-img commit`, a later attach, or deleting. The file must not exist yet (write `./memory` for a file of that name). A file overlay needs a whole image: no --part, --lv, --luks or --snapshot' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l snapshot -d 'Serve this internal snapshot of a qcow2 image (matched by name, then by id, as `qemu-img snapshot -l` lists them) instead of its current state. Read-only; with --overlay memory the device is writable and the writes stay in RAM' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l disk -d 'Serve disk N (1 = the first, the default) of an OVA archive: its .vmdk members in archive order, as `imgblk info` lists them. Read-only' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l l2-cache-mib -d 'Most MiB of qcow2 L2 tables to cache per image of the chain. By default the chain shares one budget (memory-mib in /etc/imgblk/config.toml, 256): each image may cache 16 MiB (every table of a 128 GiB image with 64 KiB clusters), or half of what the ones above left if that is less; tables load on first use (the device asks the kernel to read them ahead as it starts)' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l backing-policy -d 'How far backing files and parents named by images are followed: `follow` any path (as QEMU does), only inside the image\'s directory `tree`, or `none` at all. Default from /etc/imgblk/config.toml, else follow' -r -f -a "follow\t'Any path, as QEMU does'
tree\t'Only files inside the image\'s directory tree'
none\t'No backing files: an image that has one is refused'"
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l luks -d 'Decrypt the selected partition or LV (or the whole image) as a LUKS1/LUKS2 volume'
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l rw -d 'Allow writes (the image must not be in use by another writer)'
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l foreground -d 'Serve from this process instead of a background daemon; stop with Ctrl-C'
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l json -d 'Print the device\'s details as JSON instead of its path'
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -s U -l force-share -d 'Read the image even if another process (a running VM) has it open for writing. What the device shows may then be inconsistent. Read-only only'
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l untrusted -d 'For images of unknown origin: every file an image names (backing file, parent, extent) must lie inside its directory tree and be a regular file, and external data files are refused'
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l allow-devices -d 'Let images name block devices (a VMDK of a raw disk, a qcow2 chain across LVs); by default only an image that is itself a block device may'
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -l no-direct -d 'Use buffered I/O on the image file instead of O_DIRECT'
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_using_subcommand attach" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c imgblk -n "__fish_imgblk_using_subcommand detach" -l timeout -d 'Seconds to wait for the daemon to stop' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand detach" -l all -d 'Detach every imgblk device (and orphaned ublk devices)'
complete -c imgblk -n "__fish_imgblk_using_subcommand detach" -l force -d 'Detach even if the device is mounted or held (its users will see I/O errors)'
complete -c imgblk -n "__fish_imgblk_using_subcommand detach" -l json -d 'Print the devices detached as a JSON array (also when some could not be)'
complete -c imgblk -n "__fish_imgblk_using_subcommand detach" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_using_subcommand detach" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_using_subcommand detach" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c imgblk -n "__fish_imgblk_using_subcommand doctor" -l json -d 'Print a JSON array of checks'
complete -c imgblk -n "__fish_imgblk_using_subcommand doctor" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_using_subcommand doctor" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_using_subcommand doctor" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c imgblk -n "__fish_imgblk_using_subcommand list" -l json -d 'Print a JSON array instead of a table'
complete -c imgblk -n "__fish_imgblk_using_subcommand list" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_using_subcommand list" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_using_subcommand list" -s h -l help -d 'Print help'
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -s f -l format -d 'Image format of all the images; detected from each file\'s magic when omitted' -r -f -a "raw\t'A plain byte-for-byte disk (or a block device)'
qcow2\t'QEMU copy-on-write v2/v3'
vmdk\t'VMware virtual disk: a descriptor plus flat or sparse extents'
vpc\t'Microsoft Virtual PC / VHD (fixed, dynamic, differencing); qemu-img calls it "vpc"'
vhdx\t'Microsoft VHDX (Hyper-V)'
vdi\t'VirtualBox disk image'"
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -l snapshot -d 'Read this internal snapshot of a qcow2 image (by name, then by id) instead of its current state' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -l disk -d 'Read disk N (1 = the first, the default) of an OVA archive: its .vmdk members in archive order, as `info` lists them' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -l backing-policy -d 'How far backing files and parents named by images are followed: `follow` any path (as QEMU does), only inside the image\'s directory `tree`, or `none` at all. Default from /etc/imgblk/config.toml, else follow' -r -f -a "follow\t'Any path, as QEMU does'
tree\t'Only files inside the image\'s directory tree'
none\t'No backing files: an image that has one is refused'"
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -l part -d 'Use partition N of the (first) image, numbered as Linux numbers them (/dev/sdaN): MBR 1-4 primary, 5+ logical; GPT entries from 1' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -l lv -d 'Use logical volume LV of the guest\'s volume group VG, found on any of the images given (for a VG spanning several disks, give them all)' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -l key-file -d 'Read the LUKS key from FILE (all its bytes, as `cryptsetup --key-file`; `-` is standard input, or a passphrase asked for when it is a terminal). With --luks it decrypts the selected piece (without, the passphrase is asked for on the terminal); alone it unlocks every LUKS volume in the images, so that --lv can name a logical volume inside one, as `imgblk inspect --key-file` shows them' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -l top-layers -d 'Only what the top N layers of the backing chain hold (1 = the top file alone): ranges supplied by deeper layers are unchanged and left out. With --part, --lv or --luks, the changed ranges of the images, as they fall in that piece' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -l since -d 'Only what the layers above BACKING-FILE (a file of the first image\'s backing chain) hold: what the guest wrote since BACKING-FILE was the top' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -l bitmap -d 'Only the ranges that the qcow2 persistent dirty bitmap NAME marks dirty (see `imgblk info`); a bitmap in use by a running or crashed QEMU is refused. Every image a piece reads from must have the bitmap' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -s U -l force-share -d 'Read the images even while another process (a running VM) writes them; what is read may then be inconsistent'
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -l untrusted -d 'For images of unknown origin: every file an image names (backing file, parent, extent) must lie inside its directory tree and be a regular file, and external data files are refused'
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -l allow-devices -d 'Let images name block devices (a VMDK of a raw disk, a qcow2 chain across LVs); by default only an image that is itself a block device may'
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -l luks -d 'Decrypt the selected partition or LV (or the whole image) as a LUKS1/LUKS2 volume'
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -l json -d 'Print JSON (the shape of `qemu-img map --output=json`)'
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_using_subcommand map" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -s f -l format -d 'Image format of all the images; detected from each file\'s magic when omitted' -r -f -a "raw\t'A plain byte-for-byte disk (or a block device)'
qcow2\t'QEMU copy-on-write v2/v3'
vmdk\t'VMware virtual disk: a descriptor plus flat or sparse extents'
vpc\t'Microsoft Virtual PC / VHD (fixed, dynamic, differencing); qemu-img calls it "vpc"'
vhdx\t'Microsoft VHDX (Hyper-V)'
vdi\t'VirtualBox disk image'"
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -l snapshot -d 'Read this internal snapshot of a qcow2 image (by name, then by id) instead of its current state' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -l disk -d 'Read disk N (1 = the first, the default) of an OVA archive: its .vmdk members in archive order, as `info` lists them' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -l backing-policy -d 'How far backing files and parents named by images are followed: `follow` any path (as QEMU does), only inside the image\'s directory `tree`, or `none` at all. Default from /etc/imgblk/config.toml, else follow' -r -f -a "follow\t'Any path, as QEMU does'
tree\t'Only files inside the image\'s directory tree'
none\t'No backing files: an image that has one is refused'"
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -l part -d 'Use partition N of the (first) image, numbered as Linux numbers them (/dev/sdaN): MBR 1-4 primary, 5+ logical; GPT entries from 1' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -l lv -d 'Use logical volume LV of the guest\'s volume group VG, found on any of the images given (for a VG spanning several disks, give them all)' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -l key-file -d 'Read the LUKS key from FILE (all its bytes, as `cryptsetup --key-file`; `-` is standard input, or a passphrase asked for when it is a terminal). With --luks it decrypts the selected piece (without, the passphrase is asked for on the terminal); alone it unlocks every LUKS volume in the images, so that --lv can name a logical volume inside one, as `imgblk inspect --key-file` shows them' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -s o -l output -d 'Write to this file or block device instead of stdout (a file is created, and truncated unless only changes are written; a device must be at least as large as the image)' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -l top-layers -d 'Only what the top N layers of the backing chain hold (1 = the top file alone): ranges supplied by deeper layers are unchanged and left out. With --part, --lv or --luks, the changed ranges of the images, as they fall in that piece' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -l since -d 'Only what the layers above BACKING-FILE (a file of the first image\'s backing chain) hold: what the guest wrote since BACKING-FILE was the top' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -l bitmap -d 'Only the ranges that the qcow2 persistent dirty bitmap NAME marks dirty (see `imgblk info`); a bitmap in use by a running or crashed QEMU is refused. Every image a piece reads from must have the bitmap' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -s U -l force-share -d 'Read the images even while another process (a running VM) writes them; what is read may then be inconsistent'
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -l untrusted -d 'For images of unknown origin: every file an image names (backing file, parent, extent) must lie inside its directory tree and be a regular file, and external data files are refused'
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -l allow-devices -d 'Let images name block devices (a VMDK of a raw disk, a qcow2 chain across LVs); by default only an image that is itself a block device may'
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -l luks -d 'Decrypt the selected partition or LV (or the whole image) as a LUKS1/LUKS2 volume'
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -l sparse -d 'Leave holes for zero runs in a file, zero them on a block device with BLKZEROOUT (a pipe still gets every byte)'
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -l progress -d 'Show progress on stderr: a bar on a terminal, else a line every 5 s or 10 % with bytes done, rate and ETA (default: a bar when stderr is a terminal)'
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -l no-progress -d 'Show no progress, even on a terminal'
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_using_subcommand cat" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -s f -l format -d 'Image format of all the images; detected from each file\'s magic when omitted' -r -f -a "raw\t'A plain byte-for-byte disk (or a block device)'
qcow2\t'QEMU copy-on-write v2/v3'
vmdk\t'VMware virtual disk: a descriptor plus flat or sparse extents'
vpc\t'Microsoft Virtual PC / VHD (fixed, dynamic, differencing); qemu-img calls it "vpc"'
vhdx\t'Microsoft VHDX (Hyper-V)'
vdi\t'VirtualBox disk image'"
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -l snapshot -d 'Read this internal snapshot of a qcow2 image (by name, then by id) instead of its current state' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -l disk -d 'Read disk N (1 = the first, the default) of an OVA archive: its .vmdk members in archive order, as `info` lists them' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -l backing-policy -d 'How far backing files and parents named by images are followed: `follow` any path (as QEMU does), only inside the image\'s directory `tree`, or `none` at all. Default from /etc/imgblk/config.toml, else follow' -r -f -a "follow\t'Any path, as QEMU does'
tree\t'Only files inside the image\'s directory tree'
none\t'No backing files: an image that has one is refused'"
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -l part -d 'Use partition N of the (first) image, numbered as Linux numbers them (/dev/sdaN): MBR 1-4 primary, 5+ logical; GPT entries from 1' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -l lv -d 'Use logical volume LV of the guest\'s volume group VG, found on any of the images given (for a VG spanning several disks, give them all)' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -l key-file -d 'Read the LUKS key from FILE (all its bytes, as `cryptsetup --key-file`; `-` is standard input, or a passphrase asked for when it is a terminal). With --luks it decrypts the selected piece (without, the passphrase is asked for on the terminal); alone it unlocks every LUKS volume in the images, so that --lv can name a logical volume inside one, as `imgblk inspect --key-file` shows them' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -s o -l output -d 'The new image (a qcow2 must not exist yet; a raw file is created or truncated)' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -s O -l output-format -d 'Format of the new image' -r -f -a "qcow2\t'qcow2 version 3, 64 KiB clusters'
raw\t'A raw file (holes for zero runs) or block device'"
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -s B -l backing -d 'Backing file of the new qcow2 (stored as given, so relative to the new image\'s folder): the previous backup, for an incremental one' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -s c -l compress -d 'Compress the qcow2\'s clusters (on every core), as `qemu-img convert -c` does; a cluster that does not shrink is stored as it is' -r -f -a "zlib\t'Deflate, QEMU\'s default (qcow2 compression type zlib)'
zstd\t'Zstandard (qcow2 compression type zstd; QEMU 5.1 and later read it)'"
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -l top-layers -d 'Only what the top N layers of the backing chain hold (1 = the top file alone): ranges supplied by deeper layers are unchanged and left out. With --part, --lv or --luks, the changed ranges of the images, as they fall in that piece' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -l since -d 'Only what the layers above BACKING-FILE (a file of the first image\'s backing chain) hold: what the guest wrote since BACKING-FILE was the top' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -l bitmap -d 'Only the ranges that the qcow2 persistent dirty bitmap NAME marks dirty (see `imgblk info`); a bitmap in use by a running or crashed QEMU is refused. Every image a piece reads from must have the bitmap' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -s U -l force-share -d 'Read the images even while another process (a running VM) writes them; what is read may then be inconsistent'
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -l untrusted -d 'For images of unknown origin: every file an image names (backing file, parent, extent) must lie inside its directory tree and be a regular file, and external data files are refused'
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -l allow-devices -d 'Let images name block devices (a VMDK of a raw disk, a qcow2 chain across LVs); by default only an image that is itself a block device may'
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -l luks -d 'Decrypt the selected partition or LV (or the whole image) as a LUKS1/LUKS2 volume'
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -l progress -d 'Show progress on stderr: a bar on a terminal, else a line every 5 s or 10 % with bytes done, rate and ETA (default: a bar when stderr is a terminal)'
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -l no-progress -d 'Show no progress, even on a terminal'
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_using_subcommand convert" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c imgblk -n "__fish_imgblk_using_subcommand recover" -l all -d 'Recover every orphaned device'
complete -c imgblk -n "__fish_imgblk_using_subcommand recover" -l json -d 'Print the records of the devices served again as a JSON array (as `attach --json` prints one)'
complete -c imgblk -n "__fish_imgblk_using_subcommand recover" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_using_subcommand recover" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_using_subcommand recover" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -l part -d 'Use partition N of the (first) image, numbered as Linux numbers them (/dev/sdaN): MBR 1-4 primary, 5+ logical; GPT entries from 1' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -l lv -d 'Use logical volume LV of the guest\'s volume group VG, found on any of the images given (for a VG spanning several disks, give them all)' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -s f -l format -d 'Image format; detected when omitted' -r -f -a "raw\t'A plain byte-for-byte disk (or a block device)'
qcow2\t'QEMU copy-on-write v2/v3'
vmdk\t'VMware virtual disk: a descriptor plus flat or sparse extents'
vpc\t'Microsoft Virtual PC / VHD (fixed, dynamic, differencing); qemu-img calls it "vpc"'
vhdx\t'Microsoft VHDX (Hyper-V)'
vdi\t'VirtualBox disk image'"
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -l disk -d 'Mount from disk N (1 = the first, the default) of an OVA archive: its .vmdk members in archive order, as `imgblk info` lists them' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -l key-file -d 'Unlock the LUKS volumes found with the key in FILE (all its bytes; `-` is standard input, or a passphrase asked for once when it is a terminal) and use what they hold, as disks named luks-NODE: a VG inside is assembled, so --lv can name its logical volumes' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -l backing-policy -d 'How far backing files and parents named by images are followed: `follow` any path (as QEMU does), only inside the image\'s directory `tree`, or `none` at all. Default from /etc/imgblk/config.toml, else follow' -r -f -a "follow\t'Any path, as QEMU does'
tree\t'Only files inside the image\'s directory tree'
none\t'No backing files: an image that has one is refused'"
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -l auto -d 'Pick the guest\'s root file system (or the only one), or list the choices'
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -l rw -d 'Mount read-write (the image must not be in use by another writer)'
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -l json -d 'Print what was mounted as JSON (device, mount point, piece, file system, options)'
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -l suid -d 'Honour the setuid and setgid bits of the image\'s files (mounted nosuid without it). Only for an image you trust: its setuid-root programs become usable by anyone who reaches the mount point'
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -l dev -d 'Let device nodes in the image be opened (mounted nodev without it). Only for an image you trust: a device node in it can reach this host\'s disks or memory'
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -l noexec -d 'Never run programs from the mounted file system (noexec)'
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -l untrusted -d 'For images of unknown origin: every file an image names (backing file, parent, extent) must lie inside its directory tree and be a regular file, and external data files are refused'
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -l allow-devices -d 'Let images name block devices (a VMDK of a raw disk, a qcow2 chain across LVs); by default only an image that is itself a block device may'
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_using_subcommand mount" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c imgblk -n "__fish_imgblk_using_subcommand umount" -l json -d 'Print what was unmounted and detached as JSON'
complete -c imgblk -n "__fish_imgblk_using_subcommand umount" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_using_subcommand umount" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_using_subcommand umount" -s h -l help -d 'Print help'
complete -c imgblk -n "__fish_imgblk_using_subcommand info" -s f -l format -d 'Image format; detected from the file\'s magic when omitted' -r -f -a "raw\t'A plain byte-for-byte disk (or a block device)'
qcow2\t'QEMU copy-on-write v2/v3'
vmdk\t'VMware virtual disk: a descriptor plus flat or sparse extents'
vpc\t'Microsoft Virtual PC / VHD (fixed, dynamic, differencing); qemu-img calls it "vpc"'
vhdx\t'Microsoft VHDX (Hyper-V)'
vdi\t'VirtualBox disk image'"
complete -c imgblk -n "__fish_imgblk_using_subcommand info" -l disk -d 'Read disk N (1 = the first, the default) of an OVA archive: its .vmdk members in archive order, as `info` lists them' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand info" -l backing-policy -d 'How far backing files and parents named by images are followed: `follow` any path (as QEMU does), only inside the image\'s directory `tree`, or `none` at all. Default from /etc/imgblk/config.toml, else follow' -r -f -a "follow\t'Any path, as QEMU does'
tree\t'Only files inside the image\'s directory tree'
none\t'No backing files: an image that has one is refused'"
complete -c imgblk -n "__fish_imgblk_using_subcommand info" -s U -l force-share -d 'Read the image even while another process (a running VM) writes it; what is read may then be inconsistent'
complete -c imgblk -n "__fish_imgblk_using_subcommand info" -l untrusted -d 'For images of unknown origin: every file an image names (backing file, parent, extent) must lie inside its directory tree and be a regular file, and external data files are refused'
complete -c imgblk -n "__fish_imgblk_using_subcommand info" -l allow-devices -d 'Let images name block devices (a VMDK of a raw disk, a qcow2 chain across LVs); by default only an image that is itself a block device may'
complete -c imgblk -n "__fish_imgblk_using_subcommand info" -l json -d 'Print JSON instead of text'
complete -c imgblk -n "__fish_imgblk_using_subcommand info" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_using_subcommand info" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_using_subcommand info" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c imgblk -n "__fish_imgblk_using_subcommand inspect" -s f -l format -d 'Image format of all the images; detected from each file\'s magic when omitted' -r -f -a "raw\t'A plain byte-for-byte disk (or a block device)'
qcow2\t'QEMU copy-on-write v2/v3'
vmdk\t'VMware virtual disk: a descriptor plus flat or sparse extents'
vpc\t'Microsoft Virtual PC / VHD (fixed, dynamic, differencing); qemu-img calls it "vpc"'
vhdx\t'Microsoft VHDX (Hyper-V)'
vdi\t'VirtualBox disk image'"
complete -c imgblk -n "__fish_imgblk_using_subcommand inspect" -l snapshot -d 'Read this internal snapshot of a qcow2 image (by name, then by id) instead of its current state' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand inspect" -l disk -d 'Read disk N (1 = the first, the default) of an OVA archive: its .vmdk members in archive order, as `info` lists them' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand inspect" -l backing-policy -d 'How far backing files and parents named by images are followed: `follow` any path (as QEMU does), only inside the image\'s directory `tree`, or `none` at all. Default from /etc/imgblk/config.toml, else follow' -r -f -a "follow\t'Any path, as QEMU does'
tree\t'Only files inside the image\'s directory tree'
none\t'No backing files: an image that has one is refused'"
complete -c imgblk -n "__fish_imgblk_using_subcommand inspect" -l key-file -d 'Unlock the LUKS volumes found with the key in FILE (all its bytes; `-` is standard input, or a passphrase asked for once when it is a terminal) and use what they hold, as disks named luks-NODE: a VG inside is assembled, so --lv can name its logical volumes' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand inspect" -s U -l force-share -d 'Read the images even while another process (a running VM) writes them; what is read may then be inconsistent'
complete -c imgblk -n "__fish_imgblk_using_subcommand inspect" -l untrusted -d 'For images of unknown origin: every file an image names (backing file, parent, extent) must lie inside its directory tree and be a regular file, and external data files are refused'
complete -c imgblk -n "__fish_imgblk_using_subcommand inspect" -l allow-devices -d 'Let images name block devices (a VMDK of a raw disk, a qcow2 chain across LVs); by default only an image that is itself a block device may'
complete -c imgblk -n "__fish_imgblk_using_subcommand inspect" -l json -d 'Print JSON instead of a tree'
complete -c imgblk -n "__fish_imgblk_using_subcommand inspect" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_using_subcommand inspect" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_using_subcommand inspect" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c imgblk -n "__fish_imgblk_using_subcommand fsck" -l part -d 'Use partition N of the (first) image, numbered as Linux numbers them (/dev/sdaN): MBR 1-4 primary, 5+ logical; GPT entries from 1' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand fsck" -l lv -d 'Use logical volume LV of the guest\'s volume group VG, found on any of the images given (for a VG spanning several disks, give them all)' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand fsck" -l key-file -d 'Unlock the LUKS volumes found with the key in FILE (all its bytes; `-` is standard input, or a passphrase asked for once when it is a terminal) and use what they hold, as disks named luks-NODE: a VG inside is assembled, so --lv can name its logical volumes' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand fsck" -s f -l format -d 'Image format of all the images; detected from each file\'s magic when omitted' -r -f -a "raw\t'A plain byte-for-byte disk (or a block device)'
qcow2\t'QEMU copy-on-write v2/v3'
vmdk\t'VMware virtual disk: a descriptor plus flat or sparse extents'
vpc\t'Microsoft Virtual PC / VHD (fixed, dynamic, differencing); qemu-img calls it "vpc"'
vhdx\t'Microsoft VHDX (Hyper-V)'
vdi\t'VirtualBox disk image'"
complete -c imgblk -n "__fish_imgblk_using_subcommand fsck" -s j -l jobs -d 'How many file systems to check at once' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand fsck" -l overlay -d 'With --repair: write the repairs into RAM (`memory`), leaving the image as it was. (Every file system checked gets its own RAM overlay: no overlay file.)' -r -f -a "memory\t''"
complete -c imgblk -n "__fish_imgblk_using_subcommand fsck" -l backing-policy -d 'How far backing files and parents named by images are followed: `follow` any path (as QEMU does), only inside the image\'s directory `tree`, or `none` at all. Default from /etc/imgblk/config.toml, else follow' -r -f -a "follow\t'Any path, as QEMU does'
tree\t'Only files inside the image\'s directory tree'
none\t'No backing files: an image that has one is refused'"
complete -c imgblk -n "__fish_imgblk_using_subcommand fsck" -l repair -d 'Repair what the checkers find (devices are attached read-write; refused while another writer holds the image)'
complete -c imgblk -n "__fish_imgblk_using_subcommand fsck" -l json -d 'Print the results as a JSON array instead of a table'
complete -c imgblk -n "__fish_imgblk_using_subcommand fsck" -l untrusted -d 'For images of unknown origin: every file an image names (backing file, parent, extent) must lie inside its directory tree and be a regular file, and external data files are refused'
complete -c imgblk -n "__fish_imgblk_using_subcommand fsck" -l allow-devices -d 'Let images name block devices (a VMDK of a raw disk, a qcow2 chain across LVs); by default only an image that is itself a block device may'
complete -c imgblk -n "__fish_imgblk_using_subcommand fsck" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_using_subcommand fsck" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_using_subcommand fsck" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -l part -d 'Use partition N of the (first) image, numbered as Linux numbers them (/dev/sdaN): MBR 1-4 primary, 5+ logical; GPT entries from 1' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -l lv -d 'Use logical volume LV of the guest\'s volume group VG, found on any of the images given (for a VG spanning several disks, give them all)' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -s f -l format -d 'Image format of all the images; detected from each file\'s magic when omitted' -r -f -a "raw\t'A plain byte-for-byte disk (or a block device)'
qcow2\t'QEMU copy-on-write v2/v3'
vmdk\t'VMware virtual disk: a descriptor plus flat or sparse extents'
vpc\t'Microsoft Virtual PC / VHD (fixed, dynamic, differencing); qemu-img calls it "vpc"'
vhdx\t'Microsoft VHDX (Hyper-V)'
vdi\t'VirtualBox disk image'"
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -l snapshot -d 'Read this internal snapshot of a qcow2 image (by name, then by id) instead of its current state' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -l disk -d 'Read disk N (1 = the first, the default) of an OVA archive: its .vmdk members in archive order, as `info` lists them' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -l backing-policy -d 'How far backing files and parents named by images are followed: `follow` any path (as QEMU does), only inside the image\'s directory `tree`, or `none` at all. Default from /etc/imgblk/config.toml, else follow' -r -f -a "follow\t'Any path, as QEMU does'
tree\t'Only files inside the image\'s directory tree'
none\t'No backing files: an image that has one is refused'"
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -l key-file -d 'Read the LUKS key from FILE (all its bytes, as `cryptsetup --key-file`; `-` is standard input, or a passphrase asked for when it is a terminal). With --luks it decrypts the selected piece (without, the passphrase is asked for on the terminal); alone it unlocks every LUKS volume in the images, so that --lv can name a logical volume inside one, as `imgblk inspect --key-file` shows them' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -l auto -d 'Pick the guest\'s root file system (or the only one), or list the choices'
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -s U -l force-share -d 'Read the images even while another process (a running VM) writes them; what is read may then be inconsistent'
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -l untrusted -d 'For images of unknown origin: every file an image names (backing file, parent, extent) must lie inside its directory tree and be a regular file, and external data files are refused'
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -l allow-devices -d 'Let images name block devices (a VMDK of a raw disk, a qcow2 chain across LVs); by default only an image that is itself a block device may'
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -l luks -d 'Decrypt the selected partition or LV (or the whole image) as a LUKS1/LUKS2 volume'
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -s l -l long -d 'Long listing: type and mode, link count, owner, group, size (a device\'s major, minor), modification time (as `ls -l`)'
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -s R -l recursive -d 'Everything below PATH, by full path'
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -l json -d 'Print a JSON array of entries (path, kind, size, mode, uid, gid, times, target, links, and file_id where the file system gives one)'
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_using_subcommand ls" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c imgblk -n "__fish_imgblk_using_subcommand get" -l part -d 'Use partition N of the (first) image, numbered as Linux numbers them (/dev/sdaN): MBR 1-4 primary, 5+ logical; GPT entries from 1' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand get" -l lv -d 'Use logical volume LV of the guest\'s volume group VG, found on any of the images given (for a VG spanning several disks, give them all)' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand get" -s f -l format -d 'Image format of all the images; detected from each file\'s magic when omitted' -r -f -a "raw\t'A plain byte-for-byte disk (or a block device)'
qcow2\t'QEMU copy-on-write v2/v3'
vmdk\t'VMware virtual disk: a descriptor plus flat or sparse extents'
vpc\t'Microsoft Virtual PC / VHD (fixed, dynamic, differencing); qemu-img calls it "vpc"'
vhdx\t'Microsoft VHDX (Hyper-V)'
vdi\t'VirtualBox disk image'"
complete -c imgblk -n "__fish_imgblk_using_subcommand get" -l snapshot -d 'Read this internal snapshot of a qcow2 image (by name, then by id) instead of its current state' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand get" -l disk -d 'Read disk N (1 = the first, the default) of an OVA archive: its .vmdk members in archive order, as `info` lists them' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand get" -l backing-policy -d 'How far backing files and parents named by images are followed: `follow` any path (as QEMU does), only inside the image\'s directory `tree`, or `none` at all. Default from /etc/imgblk/config.toml, else follow' -r -f -a "follow\t'Any path, as QEMU does'
tree\t'Only files inside the image\'s directory tree'
none\t'No backing files: an image that has one is refused'"
complete -c imgblk -n "__fish_imgblk_using_subcommand get" -l key-file -d 'Read the LUKS key from FILE (all its bytes, as `cryptsetup --key-file`; `-` is standard input, or a passphrase asked for when it is a terminal). With --luks it decrypts the selected piece (without, the passphrase is asked for on the terminal); alone it unlocks every LUKS volume in the images, so that --lv can name a logical volume inside one, as `imgblk inspect --key-file` shows them' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand get" -s o -l output -d 'Write to this file instead of stdout (created or truncated)' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand get" -l auto -d 'Pick the guest\'s root file system (or the only one), or list the choices'
complete -c imgblk -n "__fish_imgblk_using_subcommand get" -s U -l force-share -d 'Read the images even while another process (a running VM) writes them; what is read may then be inconsistent'
complete -c imgblk -n "__fish_imgblk_using_subcommand get" -l untrusted -d 'For images of unknown origin: every file an image names (backing file, parent, extent) must lie inside its directory tree and be a regular file, and external data files are refused'
complete -c imgblk -n "__fish_imgblk_using_subcommand get" -l allow-devices -d 'Let images name block devices (a VMDK of a raw disk, a qcow2 chain across LVs); by default only an image that is itself a block device may'
complete -c imgblk -n "__fish_imgblk_using_subcommand get" -l luks -d 'Decrypt the selected partition or LV (or the whole image) as a LUKS1/LUKS2 volume'
complete -c imgblk -n "__fish_imgblk_using_subcommand get" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_using_subcommand get" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_using_subcommand get" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -l part -d 'Use partition N of the (first) image, numbered as Linux numbers them (/dev/sdaN): MBR 1-4 primary, 5+ logical; GPT entries from 1' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -l lv -d 'Use logical volume LV of the guest\'s volume group VG, found on any of the images given (for a VG spanning several disks, give them all)' -r -f
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -s f -l format -d 'Image format of all the images; detected from each file\'s magic when omitted' -r -f -a "raw\t'A plain byte-for-byte disk (or a block device)'
qcow2\t'QEMU copy-on-write v2/v3'
vmdk\t'VMware virtual disk: a descriptor plus flat or sparse extents'
vpc\t'Microsoft Virtual PC / VHD (fixed, dynamic, differencing); qemu-img calls it "vpc"'
vhdx\t'Microsoft VHDX (Hyper-V)'
vdi\t'VirtualBox disk image'"
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -l snapshot -d 'Read this internal snapshot of a qcow2 image (by name, then by id) instead of its current state' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -l disk -d 'Read disk N (1 = the first, the default) of an OVA archive: its .vmdk members in archive order, as `info` lists them' -r
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -l backing-policy -d 'How far backing files and parents named by images are followed: `follow` any path (as QEMU does), only inside the image\'s directory `tree`, or `none` at all. Default from /etc/imgblk/config.toml, else follow' -r -f -a "follow\t'Any path, as QEMU does'
tree\t'Only files inside the image\'s directory tree'
none\t'No backing files: an image that has one is refused'"
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -l key-file -d 'Read the LUKS key from FILE (all its bytes, as `cryptsetup --key-file`; `-` is standard input, or a passphrase asked for when it is a terminal). With --luks it decrypts the selected piece (without, the passphrase is asked for on the terminal); alone it unlocks every LUKS volume in the images, so that --lv can name a logical volume inside one, as `imgblk inspect --key-file` shows them' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -s C -l directory -d 'The directory (or file) inside the file system to archive' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -s o -l output -d 'Write to this file instead of stdout (created or truncated)' -r -F
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -l auto -d 'Pick the guest\'s root file system (or the only one), or list the choices'
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -s U -l force-share -d 'Read the images even while another process (a running VM) writes them; what is read may then be inconsistent'
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -l untrusted -d 'For images of unknown origin: every file an image names (backing file, parent, extent) must lie inside its directory tree and be a regular file, and external data files are refused'
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -l allow-devices -d 'Let images name block devices (a VMDK of a raw disk, a qcow2 chain across LVs); by default only an image that is itself a block device may'
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -l luks -d 'Decrypt the selected partition or LV (or the whole image) as a LUKS1/LUKS2 volume'
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -s v -l verbose -d 'More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides'
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -s q -l quiet -d 'Only errors'
complete -c imgblk -n "__fish_imgblk_using_subcommand tar" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "attach" -d 'Expose an image as a block device /dev/ublkbN'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "detach" -d 'Remove a device created by `imgblk attach`'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "doctor" -d 'Check that this host can run imgblk, and say how to fix what is missing'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "list" -d 'List ublk devices: imgblk\'s own, with their image, and orphaned ones'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "map" -d 'Show the allocation map of an image, like `qemu-img map`'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "cat" -d 'Copy an image\'s guest contents (the raw disk) to stdout or a file'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "convert" -d 'Copy an image\'s guest contents into a new qcow2 or raw image'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "recover" -d 'Serve again a device whose daemon died (ublk USER_RECOVERY)'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "mount" -d 'Mount a file system inside an image: attach the piece and mount it, in one step'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "umount" -d 'Unmount what `imgblk mount` mounted, flush, and detach its device'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "info" -d 'Show an image\'s format, virtual size and backing chain'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "inspect" -d 'Show partitions, LVM volume groups and file systems inside images, without ublk'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "fsck" -d 'Check the file systems inside images (e2fsck, xfs_repair, fsck.vfat, btrfs check)'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "ls" -d 'List a directory (or one file) inside an image\'s file system'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "get" -d 'Copy one regular file out of an image\'s file system, to stdout or a file'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "tar" -d 'Write a directory tree (or one file) of an image\'s file system as a POSIX pax tar'
complete -c imgblk -n "__fish_imgblk_using_subcommand help; and not __fish_seen_subcommand_from attach detach doctor list map cat convert recover mount umount info inspect fsck ls get tar help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'

# imgblk detach/recover DEVICE: the ublk block devices there are.
complete -c imgblk -n "__fish_imgblk_using_subcommand detach; or __fish_imgblk_using_subcommand recover" -f -a "(string match -r '^/dev/ublkb[0-9]+\$' /dev/ublkb*)"
