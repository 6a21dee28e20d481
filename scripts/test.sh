#!/usr/bin/env bash
# The test command: on a Debian/Ubuntu machine as root, installs what is missing (see setup.sh),
# then runs the whole suite, which starts real sshd servers on loopback.
#
#   scripts/test.sh [CARGO_TEST_ARGS...]
#   e.g. scripts/test.sh sync_ -- --nocapture     scripts/test.sh -p mtr-testkit (one package)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/setup.sh
source scripts/setup.sh
mtr_setup

scope=--workspace
for arg in "$@"; do
    case $arg in
    -p | --package | --package=*) scope= ;;
    --) break ;;
    esac
done
echo "+ cargo test $scope $*" >&2
exec cargo test $scope "$@"
