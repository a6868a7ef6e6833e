#!/usr/bin/env bash
# System packages and services the tests need (Debian; run as root), installed only when
# missing so repeated `make test` runs cost nothing. Each part lives in .ci/deps.d/*.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
for part in .ci/deps.d/*.sh; do
  [ -e "$part" ] || continue
  # shellcheck source=/dev/null
  . "$part"
done
