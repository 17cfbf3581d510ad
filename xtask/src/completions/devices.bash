
# imgblk detach/recover DEVICE: the ublk block devices there are (clap's static
# completions cannot list them); everything else as above.
_imgblk_devices() {
    local cur="${COMP_WORDS[COMP_CWORD]}" word
    for word in "${COMP_WORDS[@]:1:COMP_CWORD-1}"; do
        case "${word}" in
            detach|recover)
                if [[ "${cur}" != -* ]]; then
                    COMPREPLY=( $(compgen -W "$(compgen -G '/dev/ublkb*' | grep -E 'ublkb[0-9]+$')" -- "${cur}") )
                    return 0
                fi
                ;;
            -*) ;;
            *) break ;;
        esac
    done
    _imgblk "$@"
}
complete -F _imgblk_devices -o bashdefault -o default imgblk
