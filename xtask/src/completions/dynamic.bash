
# What clap's static completions cannot know: the devices there are, for detach and
# recover, and the pieces of the images on the command line, for --part and --lv (as
# `imgblk inspect` finds them). Everything else as above.
_imgblk_dynamic() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" word i
    local images=() names
    case "${prev}" in
        --part|--lv)
            for i in "${!COMP_WORDS[@]}"; do
                word="${COMP_WORDS[i]}"
                if [[ ${i} -gt 1 && ${i} -ne ${COMP_CWORD} && ( -f "${word}" || -b "${word}" ) ]]; then
                    images+=("${word}")
                fi
            done
            [[ ${#images[@]} -gt 0 ]] || return 0
            names=$(imgblk inspect --json "${images[@]}" 2>/dev/null \
                | sed -n 's/^ *"name": "\(.*\)",$/\1/p')
            if [[ "${prev}" == --part ]]; then
                names=$(sed -n 's/^disk0p\([0-9][0-9]*\)$/\1/p' <<< "${names}")
            else
                names=$(grep / <<< "${names}")
            fi
            COMPREPLY=( $(compgen -W "${names}" -- "${cur}") )
            return 0
            ;;
    esac
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
complete -F _imgblk_dynamic -o bashdefault -o default imgblk
