#!/usr/bin/env bash
# Checks the Prometheus rules: syntax (promtool check rules) and behaviour
# (promtool test rules). Needs promtool: `apt-get install -y prometheus` on Debian.
set -euo pipefail
cd "$(dirname "$0")/rules"

if ! command -v promtool >/dev/null; then
    echo "check.sh: promtool not found; install it with: apt-get install -y prometheus" >&2
    exit 1
fi

promtool check rules palisade.rules.yml
promtool test rules palisade.rules.test.yml
