#!/usr/bin/env bash
# Installs Exim 4.96 and OpenSMTPD from Debian's packages into private roots, next to an
# installed Postfix, for pipemail's interop tests.
#
#   scripts/interop-install.sh [ROOT]      default ROOT: /opt/pipemail-interop
#
# Debian cannot install exim4-daemon-light or opensmtpd next to postfix (all three provide
# mail-transport-agent), so their .deb files are fetched with `apt-get download` and
# unpacked with `dpkg-deb -x` (no maintainer scripts run, nothing is registered with dpkg):
#
#   ROOT/debs/        the downloaded .deb files
#   ROOT/exim/        exim4-daemon-light, exim4-base, exim4-config: ROOT/exim/usr/sbin/exim4
#   ROOT/opensmtpd/   opensmtpd: ROOT/opensmtpd/usr/sbin/smtpd
#   ROOT/VERSIONS     what was unpacked; its presence makes a second run a no-op
#
# What the maintainer scripts would have done and the daemons need at run time:
#   - libidn12, the one library Exim needs that Debian 12's base system lacks, installed
#     with apt-get (a plain library, no conflict; Exim re-executes itself to deliver with
#     privileges, where the loader ignores LD_LIBRARY_PATH, so it must be a system one);
#   - system users Debian-exim (Exim's compiled-in exim_user), opensmtpd and opensmtpq
#     (OpenSMTPD's privilege-separation users), created with useradd --system if missing;
#   - /var/lib/opensmtpd/empty, OpenSMTPD's chroot directory, and two empty directories,
#     /var/spool/smtpd and /usr/libexec/opensmtpd, where scripts/opensmtpd.sh mounts each
#     instance's queue and the unpacked helpers inside the instance's mount namespace.
# Nothing is started, configured or enabled: scripts/exim-smtpd.sh and scripts/opensmtpd.sh
# run private instances. Idempotent; needs root and `apt-get update` to have run once.
set -euo pipefail

ROOT="${1:-/opt/pipemail-interop}"
EXIM_DEBS=(exim4-daemon-light exim4-base exim4-config)
OPENSMTPD_DEBS=(opensmtpd)

die() {
    echo "interop-install.sh: $*" >&2
    exit 1
}

[[ $EUID -eq 0 ]] || die "must run as root"

ensure_user() {
    local user="$1" home="$2"
    if getent passwd "$user" >/dev/null; then
        return
    fi
    getent group "$user" >/dev/null || groupadd --system "$user"
    useradd --system --gid "$user" --home-dir "$home" --no-create-home \
        --shell /usr/sbin/nologin "$user"
    echo "created system user $user"
}

ensure_runtime() {
    if [[ "$(dpkg-query -W -f='${Status}' libidn12 2>/dev/null || true)" != "install ok installed" ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libidn12 >/dev/null ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libidn12 >/dev/null; }
        echo "installed libidn12"
    fi
    ensure_user Debian-exim /var/spool/exim4
    ensure_user opensmtpd /var/lib/opensmtpd
    ensure_user opensmtpq /var/lib/opensmtpd
    mkdir -p /var/lib/opensmtpd/empty /var/spool/smtpd /usr/libexec/opensmtpd
    chown root:root /var/lib/opensmtpd /var/lib/opensmtpd/empty
    chmod 755 /var/lib/opensmtpd /var/lib/opensmtpd/empty
}

installed() {
    [[ -s "$ROOT/VERSIONS" && -x "$ROOT/exim/usr/sbin/exim4" &&
        -x "$ROOT/opensmtpd/usr/sbin/smtpd" ]]
}

if installed; then
    ensure_runtime
    echo "already unpacked in $ROOT: $(tr '\n' ' ' <"$ROOT/VERSIONS")"
    exit 0
fi

mkdir -p "$ROOT/debs"
# apt-get download writes to the current directory; as root it warns that the _apt user
# cannot write there, which is harmless.
download() {
    (
        cd "$ROOT/debs"
        rm -f ./*.deb
        apt-get download -qq "${EXIM_DEBS[@]}" "${OPENSMTPD_DEBS[@]}" 2>&1 |
            grep -v 'Download is performed unsandboxed' || true
    )
    local p
    for p in "${EXIM_DEBS[@]}" "${OPENSMTPD_DEBS[@]}"; do
        compgen -G "$ROOT/debs/${p}_*.deb" >/dev/null || return 1
    done
}
# A fresh machine may have no package lists yet: update once and retry.
download || { apt-get update -qq && download; }
for p in "${EXIM_DEBS[@]}" "${OPENSMTPD_DEBS[@]}"; do
    compgen -G "$ROOT/debs/${p}_*.deb" >/dev/null || die "apt-get download $p failed"
done

rm -rf "$ROOT/exim" "$ROOT/opensmtpd"
mkdir -p "$ROOT/exim" "$ROOT/opensmtpd"
: >"$ROOT/VERSIONS.tmp"
for p in "${EXIM_DEBS[@]}"; do
    deb=$(compgen -G "$ROOT/debs/${p}_*.deb" | head -n 1)
    dpkg-deb -x "$deb" "$ROOT/exim"
    basename "$deb" >>"$ROOT/VERSIONS.tmp"
done
for p in "${OPENSMTPD_DEBS[@]}"; do
    deb=$(compgen -G "$ROOT/debs/${p}_*.deb" | head -n 1)
    dpkg-deb -x "$deb" "$ROOT/opensmtpd"
    basename "$deb" >>"$ROOT/VERSIONS.tmp"
done
ensure_runtime
mv "$ROOT/VERSIONS.tmp" "$ROOT/VERSIONS"
installed || die "unpacked, but the daemons are missing from $ROOT"
echo "unpacked in $ROOT: $(tr '\n' ' ' <"$ROOT/VERSIONS")"
