#!/usr/bin/env bash
# Booting a Debian kernel under qemu TCG with an initramfs and judging its console log:
# shared by remap-kmod/scripts/guest-test.sh (dm-remap-v4) and
# remap-ublk/scripts/guest-test.sh (remap attach over ublk). Sourced; the caller sets
# KIMAGE, KREL, wd (holding initrd.gz), timeout_s, and defines log and die.

# The host tools every guest test needs, and the remap binary it puts in the guest:
# REMAP_BIN, or built here with cargo. Needs repo, log and die.
guest_prerequisites() {
  local tool
  for tool in qemu-system-x86_64 busybox dmsetup cpio xz objcopy; do
    command -v "$tool" >/dev/null || die "$tool is not installed (scripts/install-deps.sh installs it)"
  done
  if [ -z "${REMAP_BIN:-}" ]; then
    log "building the remap CLI"
    (cd "$repo" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target} cargo build -q -p remap-cli --release)
    REMAP_BIN=${CARGO_TARGET_DIR:-$repo/target}/release/remap
  fi
  [ -x "$REMAP_BIN" ] || die "no remap binary at $REMAP_BIN"
}

# One boot with the given disks (virtio, in order: vda, vdb, ...) and $BOOT_APPEND on the
# kernel command line. Returns qemu's status; the console goes to $2. no_timer_check:
# under a loaded host the emulated timer can miss the kernel's IO-APIC check, which then
# panics at boot ("IO-APIC + timer doesn't work"). Two guest CPUs, run by one TCG thread:
# with a thread per vCPU, the kernel's live code patching (int3 + text_poke) races in TCG
# and early boot can oops at random, before anything of ours is loaded.
qemu_boot() { # phase log disk...
  local phase=$1 out=$2 rc=0 disk drives=()
  shift 2
  for disk in "$@"; do drives+=(-drive "file=$disk,if=virtio,format=raw,cache=unsafe"); done
  timeout --foreground "$timeout_s" qemu-system-x86_64 -accel tcg,thread=single -cpu max -m 512 -smp 2 \
    -nographic -no-reboot \
    -kernel "$KIMAGE" -initrd "$wd/initrd.gz" \
    -append "console=ttyS0 no_timer_check panic=-1 oops=panic panic_on_warn=1 loglevel=4 rdinit=/init remap.phase=$phase remap.hang=$((timeout_s - 30)) ${BOOT_APPEND:-}" \
    "${drives[@]}" \
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

# The blocks `remap dump` lists as remapped on a pair (needs REMAP_BIN), sorted, one per
# line. A failed dump is an error of its own, not an empty list.
dump_remapped() { # main spare
  local dump
  dump=$("$REMAP_BIN" dump "$1" "$2" --json) || return 1
  echo "$dump" | { grep -o '"block":[0-9]*,"state":"remapped"' || true; } |
    sed 's/"block":\([0-9]*\),.*/\1/' | sort -n
}

# Every block `remap dump` lists as remapped on a filesystem pair ($wd/fs-FS.img and
# $wd/fs-FS-spare.img; needs REMAP_BIN) lies in one of the failing segments the guest
# printed (FSSEG), and every segment holds at least one: the
# filesystem really wrote over each, and nothing outside them moved.
check_fs_remaps() { # fs [boot log with the FSSEG lines; default boot3.log]
  local fs=$1 seglog=${2:-$wd/boot3.log} remapped segs
  remapped=$(dump_remapped "$wd/fs-$fs.img" "$wd/fs-$fs-spare.img") ||
    die "$KREL: remap dump of the $fs pair failed"
  segs=$(sed -n "s/^FSSEG $fs \([0-9]*\) \([0-9]*\)$/\1 \2/p" "$seglog")
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

# The kernel parameters that hand the 64-block data runs the write step placed under a file
# (guest/fs.sh) to the verify step, for the same tables after the crash.
fs_data_params() { # boot log of the write step
  local fsdata
  fsdata=$(sed -n 's/^FSSEG \([a-z0-9]*\) \([0-9]*\) \([0-9]*\)$/\1 \2 \3/p' "$1" |
    awk '$3 - $2 == 63 { printf "remap.fsdata_%s=%d-%d ", $1, $2, $3 }')
  [ "$(echo "$fsdata" | wc -w)" = "$(sed -n 's/^FSSEG \([a-z0-9]*\) .*/\1/p' "$1" | sort -u | wc -l)" ] ||
    die "$KREL: $1 does not report a 64-block data run for each filesystem"
  echo "$fsdata"
}
