#!/usr/bin/env bash
# Installs what `npm run bench` needs besides Node, from Debian packages, if missing:
#   rsync (peer), zstd + openssl + netcat-openbsd (tar pipeline peer), iproute2 (ip netns, tc: shaped link),
#   time (/usr/bin/time, CPU/RSS of external peers); and what the tests use: e2fsprogs (mkfs.ext4: a filesystem with
#   whole-second timestamps on a loop image), xfsprogs (mkfs.xfs: a filesystem with reflinks on a loop image),
#   util-linux-extra (fincore: which pages of a file are cached), strace (which files a pull flushes).
# Idempotent; silent when everything is present. Needs root (or sudo) only when something is missing.
set -euo pipefail

# command to check -> Debian package providing it
declare -A NEED=(
  [rsync]=rsync
  [zstd]=zstd
  [openssl]=openssl
  [nc.openbsd]=netcat-openbsd
  [ip]=iproute2
  [tc]=iproute2
  [/usr/bin/time]=time
  [mkfs.ext4]=e2fsprogs
  [mkfs.xfs]=xfsprogs
  [fincore]=util-linux-extra
  [strace]=strace
)

missing=()
for cmd in "${!NEED[@]}"; do
  if [[ $cmd == /* ]]; then [[ -x $cmd ]] && continue
  else command -v "$cmd" >/dev/null 2>&1 && continue
  fi
  pkg=${NEED[$cmd]}
  [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
done

((${#missing[@]} == 0)) && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: missing ${missing[*]} and no apt-get here; install them by hand" >&2
  exit 1
fi
SUDO=()
if ((EUID != 0)); then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
    echo "install-deps: missing ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { "${SUDO[@]}" apt-get update -qq && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "install-deps: apt-get failed" >&2
  exit 1
fi
echo "install-deps: done" >&2
