# Debian's chromium for the browser tests (tests/hpo/test_dashboard.py, test_report.py), which
# drive it with Playwright (executable_path=/usr/bin/chromium; Playwright never downloads one).
# Sourced by .ci/system-deps.sh as root; does nothing when chromium is already there.
if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (Debian package) for the browser tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
fi
