#!/usr/bin/env bash
# System packages the tests and bench use (rsync for comparisons, iproute2 for network namespaces, zstd/openssl/netcat
# for the tar pipeline peer). Installed from Debian's packages when missing; quiet when all are present.
set -euo pipefail
need=()
command -v rsync >/dev/null || need+=(rsync)
command -v zstd >/dev/null || need+=(zstd)
command -v nc >/dev/null || need+=(netcat-openbsd)
command -v ip >/dev/null || need+=(iproute2)
command -v openssl >/dev/null || need+=(openssl)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing ${need[*]}; run as root or install them (apt-get install ${need[*]})" >&2
    exit 0
  fi
  echo "install-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
