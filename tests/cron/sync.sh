#!/bin/bash
# The cron job gitreload replaces, written the way such jobs usually are:
# pull, rsync onto the config volume, and if anything changed, POST a
# reload to every address of the service. tests/cron_baseline.rs runs it
# against real servers to measure what it gets wrong; nothing else uses it.
#
# Environment: PROMETHEUS_CONFIG_REPO, PROMETHEUS_CONFIG_DIR,
# PROMETHEUS_HOST_DNS, PROMETHEUS_PORT, PROMETHEUS_NOTIFY_PATH, and for the
# test: WORK_DIR (its clone), DNS_SERVER, DNS_PORT.
cd "$WORK_DIR" || exit 1
if [ ! -d repo/.git ]; then
  git clone -q "$PROMETHEUS_CONFIG_REPO" repo
  changed=1
else
  out=$(cd repo && git pull 2>&1)
  case "$out" in
    *"Already up to date"*) changed=0 ;;
    *) changed=1 ;;
  esac
fi
rsync -a --exclude='.*' repo/ "$PROMETHEUS_CONFIG_DIR"/
[ "$changed" = 1 ] || exit 0
for ip in $(dig +short @"$DNS_SERVER" -p "$DNS_PORT" "$PROMETHEUS_HOST_DNS"); do
  curl -s -X POST "http://$ip:$PROMETHEUS_PORT$PROMETHEUS_NOTIFY_PATH"
done
echo "config synced"
