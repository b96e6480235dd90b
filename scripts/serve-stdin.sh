# Shell functions for scripts that feed a file to `ccmetrics serve --source stdin` and
# watch its /metrics (scripts/bench.sh's scrape mode, scripts/pgo.sh's training).
# Source it; it defines functions only.

# serve_addr OUT PID: print the host:port serve announced in its stdout file OUT
# ("metrics at http://HOST:PORT/metrics"), waiting up to 30 s. When it does not come,
# or PID exits first, PID is stopped and the status is 1.
serve_addr() {
  local out=$1 pid=$2 addr= _
  for _ in $(seq 300); do
    addr=$(sed -nE 's|.*metrics at http://([^/]+)/metrics.*|\1|p' "$out")
    [ -n "$addr" ] && { echo "$addr"; return 0; }
    kill -0 "$pid" 2> /dev/null || return 1
    sleep 0.1
  done
  kill "$pid" 2> /dev/null || true
  return 1
}

# serve_read ADDR PID LINES [SECONDS=600]: poll /metrics until serve has read LINES
# lines (ccmetrics_events_read_total). Prints the last count read; status 1 when PID
# exits first or SECONDS pass.
serve_read() {
  local addr=$1 pid=$2 lines=$3 deadline=$((SECONDS + ${4:-600})) read_total=0
  while [ "$SECONDS" -lt "$deadline" ]; do
    # A scrape can fail while serve is busy: not fatal, poll again.
    read_total=$( (curl -s "http://$addr/metrics" || true) | awk '/^ccmetrics_events_read_total/ {print int($2)}' | head -1)
    [ "${read_total:-0}" -ge "$lines" ] && { echo "$read_total"; return 0; }
    kill -0 "$pid" 2> /dev/null || break
    sleep 0.5
  done
  echo "${read_total:-0}"
  return 1
}
