
# imgblk detach/recover DEVICE: the ublk block devices there are.
complete -c imgblk -n "__fish_imgblk_using_subcommand detach; or __fish_imgblk_using_subcommand recover" -f -a "(string match -r '^/dev/ublkb[0-9]+\$' /dev/ublkb*)"
