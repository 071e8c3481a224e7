#!/usr/bin/env bash
# The dm-remap-v4 acceptance test in real kernels: for each Debian kernel (6.1, 6.12),
# build the module, format a spare on the host with `remap create`, boot the kernel under
# qemu (TCG) twice with guest/test.sh, and check what the guest reports and what the host
# then reads from the spare with `remap dump` and `remap check`.
#
#   guest-test.sh [6.1|6.12|all]        (default: all)
#
# Boot 1 runs everything and ends with a remapped write followed at once by a forced
# power-off; boot 2 checks that remap and every earlier one survived, and runs `remap
# table/activate/deactivate` and their refusals. Boots 3 and 4 put ext4 and xfs on remap
# devices over failing segments, power off with writes in flight and check the filesystems
# and `remap dump` after the reboot (guest/fs.sh). Fails loudly on a
# guest panic, oops, BUG or WARN, on a hang (timeout), on any FAIL line, and when a
# phase's SUMMARY is missing or does not account for every check it planned.
#
# Environment: REMAP_GUEST_TIMEOUT (seconds per boot, default 300), REMAP_BIN (a built
# `remap` binary; default: built here with cargo).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
crate=$(cd "$here/.." && pwd)
repo=$(cd "$crate/.." && pwd)
timeout_s=${REMAP_GUEST_TIMEOUT:-300}

log() { echo "guest-test: $*" >&2; }
die() { echo "guest-test: FAILED: $*" >&2; exit 1; }

case "${1:-all}" in
  all) flavours="6.1 6.12" ;;
  6.1 | 6.12) flavours=$1 ;;
  *) die "usage: guest-test.sh [6.1|6.12|all]" ;;
esac

for tool in qemu-system-x86_64 busybox dmsetup cpio xz objcopy; do
  command -v "$tool" >/dev/null || die "$tool is not installed (scripts/test.sh installs it)"
done

if [ -z "${REMAP_BIN:-}" ]; then
  log "building the remap CLI"
  (cd "$repo" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target} cargo build -q -p remap-cli --release)
  REMAP_BIN=${CARGO_TARGET_DIR:-$repo/target}/release/remap
fi
[ -x "$REMAP_BIN" ] || die "no remap binary at $REMAP_BIN"
log "building the dm-log-writes replay check"
(cd "$repo" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target} cargo build -q -p remap-kmod --release --example log_replay)
LOG_REPLAY=${CARGO_TARGET_DIR:-$repo/target}/release/examples/log_replay
[ -x "$LOG_REPLAY" ] || die "no log_replay at $LOG_REPLAY"

# One boot. Returns qemu's status; the console goes to $2. no_timer_check: under a loaded
# host the emulated timer can miss the kernel's IO-APIC check, which then panics at boot
# ("IO-APIC + timer doesn't work"). Two guest CPUs, run by one TCG
# thread: with a thread per vCPU, the kernel's live code patching (int3 + text_poke) races
# in TCG and early boot can oops at random, before anything of ours is loaded.
boot() { # phase log [more kernel parameters]
  local phase=$1 out=$2 extra=${3:-} rc=0
  timeout --foreground "$timeout_s" qemu-system-x86_64 -accel tcg,thread=single -cpu max -m 512 -smp 2 \
    -nographic -no-reboot \
    -kernel "$KIMAGE" -initrd "$wd/initrd.gz" \
    -append "console=ttyS0 no_timer_check panic=-1 oops=panic panic_on_warn=1 loglevel=4 rdinit=/init remap.phase=$phase remap.hang=$((timeout_s - 30)) $extra" \
    -drive "file=$wd/main.img,if=virtio,format=raw,cache=unsafe" \
    -drive "file=$wd/spare.img,if=virtio,format=raw,cache=unsafe" \
    -drive "file=$wd/blank.img,if=virtio,format=raw,cache=unsafe" \
    -drive "file=$wd/small.img,if=virtio,format=raw,cache=unsafe" \
    -drive "file=$wd/logspare.img,if=virtio,format=raw,cache=unsafe" \
    -drive "file=$wd/log.img,if=virtio,format=raw,cache=unsafe" \
    -drive "file=$wd/fs-ext4.img,if=virtio,format=raw,cache=unsafe" \
    -drive "file=$wd/fs-ext4-spare.img,if=virtio,format=raw,cache=unsafe" \
    -drive "file=$wd/fs-xfs.img,if=virtio,format=raw,cache=unsafe" \
    -drive "file=$wd/fs-xfs-spare.img,if=virtio,format=raw,cache=unsafe" \
    </dev/null 2>&1 | tr -d '\r' > "$out" || rc=$?
  return "$rc"
}

# Judge one boot's console log.
judge() { # phase log qemu-status
  local phase=$1 out=$2 rc=$3 plan summary passed failed
  grep -E '^(RESULT|FAIL|PERF|EXPECT|PLAN|SUMMARY|FINAL|STAGE)' "$out" | grep -v '^RESULT ok' >&2 || true
  [ "$rc" -ne 124 ] || die "$KREL phase $phase: the guest hung (no power-off within ${timeout_s}s); see $out"
  if grep -q -E 'Kernel panic|BUG:|Oops|WARNING:|general protection fault|Call Trace:|Rust panic|stack overflow' "$out"; then
    grep -n -E -A20 'Kernel panic|BUG:|Oops|WARNING:|general protection fault|Call Trace:|Rust panic|stack overflow' "$out" | head -60 >&2
    die "$KREL phase $phase: the kernel reported a panic, oops, BUG or WARN; see $out"
  fi
  [ "$rc" -eq 0 ] || die "$KREL phase $phase: qemu exited with status $rc; see $out"
  grep -q '^FAIL' "$out" && die "$KREL phase $phase: checks failed (FAIL lines above); see $out"
  plan=$(sed -n "s/^PLAN phase=$phase checks=\([0-9]*\)$/\1/p" "$out")
  summary=$(grep "^SUMMARY phase=$phase " "$out" || true)
  [ -n "$plan" ] || die "$KREL phase $phase: no PLAN line; see $out"
  [ -n "$summary" ] || die "$KREL phase $phase: no SUMMARY line (the test stopped early); see $out"
  passed=$(echo "$summary" | sed -n 's/.* passed=\([0-9]*\) .*/\1/p')
  failed=$(echo "$summary" | sed -n 's/.* failed=\([0-9]*\)$/\1/p')
  [ "$failed" = 0 ] || die "$KREL phase $phase: $failed checks failed; see $out"
  [ "$passed" = "$plan" ] || die "$KREL phase $phase: $passed checks passed of $plan planned; see $out"
  log "$KREL phase $phase: $passed/$plan checks passed"
}

# The remapped blocks `remap dump` finds on the spare, sorted, one per line.
dumped_remaps() {
  "$REMAP_BIN" dump "$wd/main.img" "$wd/spare.img" --json |
    grep -o '"block":[0-9]*,"state":"remapped"' | sed 's/"block":\([0-9]*\),.*/\1/' | sort -n
}

compare_dump() { # label
  local got want
  got=$(dumped_remaps) || die "$KREL: remap dump failed ($1)"
  want=$(sed -n 's/^EXPECT remapped \([0-9]*\)$/\1/p' "$wd/boot1.log" | sort -n)
  [ -n "$want" ] || die "$KREL: the guest printed no EXPECT lines"
  if [ "$got" != "$want" ]; then
    echo "expected remaps: $(echo $want)" >&2
    echo "remap dump:      $(echo $got)" >&2
    die "$KREL: remap dump of the spare ($1) does not list exactly the remaps the kernel made"
  fi
  log "$KREL: remap dump ($1) lists exactly the $(echo "$want" | wc -l) remaps the kernel made"
  if "$REMAP_BIN" dump "$wd/main.img" "$wd/spare.img" --json | grep -q '"state":"pending"'; then
    die "$KREL: remap dump ($1) shows pending blocks; the guest rewrote them all"
  fi
}

# Every block `remap dump` lists as remapped on a filesystem pair lies in one of the
# failing segments the guest printed (FSSEG), and every segment holds at least one: the
# filesystem really wrote over each, and nothing outside them moved.
check_fs_remaps() { # fs
  local fs=$1 remapped segs
  remapped=$("$REMAP_BIN" dump "$wd/fs-$fs.img" "$wd/fs-$fs-spare.img" --json |
    grep -o '"block":[0-9]*,"state":"remapped"' | sed 's/"block":\([0-9]*\),.*/\1/') ||
    die "$KREL: remap dump of the $fs pair failed"
  segs=$(sed -n "s/^FSSEG $fs \([0-9]*\) \([0-9]*\)$/\1 \2/p" "$wd/boot3.log")
  [ -n "$segs" ] || die "$KREL: the guest printed no FSSEG lines for $fs"
  echo "$remapped" | awk -v fs="$fs" -v k="$KREL" -v segs="$segs" '
    BEGIN { n = split(segs, a, /[ \n]/); for (i = 1; i < n; i += 2) { lo[++m] = a[i]; hi[m] = a[i + 1] } }
    NF { hit = 0; for (j = 1; j <= m; j++) if ($1 >= lo[j] && $1 <= hi[j]) { hit = 1; c[j]++ }
         if (!hit) { print "guest-test: " k ": " fs ": block " $1 " remapped outside the failing segments"; bad = 1 }
         total++ }
    END { for (j = 1; j <= m; j++) { printf "guest-test: %s: %s: segment %d-%d: %d remaps\n", k, fs, lo[j], hi[j], c[j] + 0
                                       if (c[j] == 0) bad = 1 }
          printf "guest-test: %s: %s: %d remaps in all\n", k, fs, total; exit bad }' >&2 ||
    die "$KREL: $fs: remap dump does not show remaps in every failing segment and only there"
}

for flav in $flavours; do
  t0=$SECONDS
  benv=$("$here/build.sh" "$flav")
  kenv=$("$here/kernels.sh" "$flav" 2>/dev/null | tail -n1)
  # shellcheck disable=SC1090
  . "$kenv"
  # shellcheck disable=SC1090
  . "$benv"
  wd=$repo/.work/guest/$KREL
  rm -rf "$wd"
  mkdir -p "$wd"
  truncate -s 32M "$wd/main.img"
  truncate -s 8M "$wd/spare.img"
  truncate -s 4M "$wd/blank.img"
  "$REMAP_BIN" create "$wd/main.img" "$wd/spare.img" --block-size 4096 >"$wd/create.log" ||
    die "remap create failed: $(cat "$wd/create.log")"
  # The small spare: 4 spare blocks for a 1 MiB main device (an error target in the guest).
  truncate -s 1M "$wd/main2.img"
  truncate -s 1M "$wd/small.img"
  "$REMAP_BIN" create "$wd/main2.img" "$wd/small.img" --spare-blocks 4 --journal-blocks 4 \
    --json >"$wd/create-small.json" || die "remap create of the small spare failed"
  pool_offset=$(grep -o '"pool_offset": *[0-9]*' "$wd/create-small.json" | grep -o '[0-9]*$')
  [ -n "$pool_offset" ] || die "no pool_offset in $wd/create-small.json"
  echo $((pool_offset / 4096)) >"$wd/small-pool-block"
  # The spare recorded by dm-log-writes, kept as it was before the guest wrote to it.
  truncate -s 1M "$wd/main3.img"
  truncate -s 2M "$wd/logspare.img"
  truncate -s 16M "$wd/log.img"
  "$REMAP_BIN" create "$wd/main3.img" "$wd/logspare.img" --journal-blocks 4 >/dev/null ||
    die "remap create of the logged spare failed"
  cp "$wd/logspare.img" "$wd/logspare-before.img"
  # The filesystem-on-top pairs (guest/fs.sh): 512 MiB main backings, 16 MiB spares.
  for fs in ext4 xfs; do
    truncate -s 512M "$wd/fs-$fs.img"
    truncate -s 16M "$wd/fs-$fs-spare.img"
    "$REMAP_BIN" create "$wd/fs-$fs.img" "$wd/fs-$fs-spare.img" >/dev/null ||
      die "remap create of the $fs spare failed"
  done
  head -c 65536 /dev/urandom >"$wd/pat64k"
  head -c 4194304 /dev/urandom >"$wd/pat4m"
  REMAP_BIN=$REMAP_BIN "$here/mkinitramfs.sh" "$kenv" "$benv" "$wd/initrd.gz" "$wd/pat64k" "$wd/pat4m" \
    "$wd/small-pool-block"

  log "$KREL: boot 1 (qemu TCG)"
  rc=0
  boot 1 "$wd/boot1.log" || rc=$?
  judge 1 "$wd/boot1.log" "$rc"
  # The crash image, before any clean shutdown: the last remap must be in the journal.
  compare_dump "after the forced power-off"
  small=$("$REMAP_BIN" dump "$wd/main2.img" "$wd/small.img" --json) || die "$KREL: remap dump of the small spare failed"
  small_remaps=$(echo "$small" | grep -o '"block":[0-9]*,"state":"remapped","spare_block":[0-9]*' |
    sed 's/"block":\([0-9]*\),"state":"remapped","spare_block":\([0-9]*\)/\1:\2/' | tr '\n' ' ')
  [ "$small_remaps" = "0:2 1:3 " ] || die "$KREL: small spare remaps are '$small_remaps', expected '0:2 1:3 '"
  echo "$small" | grep -q '"retired_spares":\[0,1\]' || die "$KREL: small spare: spare blocks 0 and 1 are not retired: $small"
  log "$KREL: remap dump of the small spare shows the two retired spare blocks and the moves"

  "$LOG_REPLAY" --log "$wd/log.img" --spare "$wd/logspare-before.img" --data "$wd/pat4m" \
    --seeds 3 >&2 || die "$KREL: the kernel's writes to the spare do not survive every crash point"

  log "$KREL: boot 2 (qemu TCG)"
  rc=0
  boot 2 "$wd/boot2.log" || rc=$?
  judge 2 "$wd/boot2.log" "$rc"
  compare_dump "after a clean remove"
  "$REMAP_BIN" check "$wd/main.img" "$wd/spare.img" >"$wd/check.log" 2>&1 ||
    die "$KREL: remap check of the spare the kernel wrote failed: $(cat "$wd/check.log")"
  log "$KREL: remap check passes on the spare the kernel wrote"

  t_fs=$SECONDS
  log "$KREL: boot 3, filesystems on top (qemu TCG)"
  rc=0
  boot 3 "$wd/boot3.log" || rc=$?
  judge 3 "$wd/boot3.log" "$rc"
  log "$KREL: boot 4, after the power-off with writes in flight (qemu TCG)"
  # The data run phase 3 placed under a file (guest/fs.sh), for the same tables after the crash.
  fsdata=$(sed -n 's/^FSSEG \([a-z0-9]*\) \([0-9]*\) \([0-9]*\)$/\1 \2 \3/p' "$wd/boot3.log" |
    awk '$3 - $2 == 63 { printf "remap.fsdata_%s=%d-%d ", $1, $2, $3 }')
  [ "$(echo "$fsdata" | wc -w)" = 2 ] || die "$KREL: phase 3 did not report a 64-block data run for each filesystem"
  rc=0
  boot 4 "$wd/boot4.log" "$fsdata" || rc=$?
  judge 4 "$wd/boot4.log" "$rc"
  for fs in ext4 xfs; do check_fs_remaps "$fs"; done
  log "$KREL: filesystems on top took $((SECONDS - t_fs))s (boots 3 and 4 and the dumps)"
  grep '^PERF' "$wd/boot1.log" >"$wd/perf.txt"
  # Best of the rounds (interference from the host only ever slows a run down) and mean.
  awk -v k="$KREL" '{ key = $2 " " $3; v = $(NF-1); s[key] += v; n[key]++; if (v > b[key]) b[key] = v }
    END {
      split("write read", o, " ")
      for (i = 1; i <= 2; i++) {
        r = o[i] " rmp"; l = o[i] " lin"
        printf "guest-test: %s: dd %s, direct, 1 MiB requests, best of %d: dm-remap-v4 %d KiB/s, linear %d KiB/s (%.0f%%); mean %d vs %d KiB/s\n", k, o[i], n[r], b[r], b[l], 100 * b[r] / b[l], s[r] / n[r], s[l] / n[l]
      }
    }' "$wd/perf.txt" | tee "$wd/perf-summary.txt" >&2
  log "$KREL: passed in $((SECONDS - t0))s"
done
log "all kernels passed: $flavours"
