# Sourced by ci/install-deps and ci/vm, which both add a Debian suite this host's apt
# sources do not list (bookworm-backports; the VM kernel's suite) from the same mirror.

# debian_mirror: the Debian archive URI of this host's apt sources (deb822 or one-line
# format), or deb.debian.org when none is configured or it is not a Debian archive.
debian_mirror() {
  local uri
  uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$uri" ] || uri=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  case $uri in
    *debian*) echo "$uri" ;;
    *) echo http://deb.debian.org/debian ;;
  esac
}
