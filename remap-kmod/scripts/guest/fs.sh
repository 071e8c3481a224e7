#!/bin/sh
# Filesystems on top of a remap device, run inside the guest by test.sh: the device is
# dm-remap-v4 (`remap activate`; phases 3 and 4, FS_FRONTEND=dm) or /dev/ublkbN
# (`remap attach` over ublk; phases 6 and 7, FS_FRONTEND=ublk, booted by
# remap-ublk/scripts/guest-test.sh).
#
#   write (3, 6)    ext4 and xfs, made with default options on a remap device whose main
#                   device fails reads and writes in segments under filesystem metadata
#                   and data; files with known checksums, sync, fsck clean; then writes in
#                   flight and an immediate power-off
#   verify (4, 7)   after that power-off: the same tables, the log replayed by a mount,
#                   fsck clean, every synced file verifies; `remap deactivate` / `detach`
#
# Disks: /dev/vdg and /dev/vdi (or $BACKING_ext4, $BACKING_xfs) are 512 MiB backings of the
# two main devices, /dev/vdh and /dev/vdj ($SPARE_ext4, $SPARE_xfs) their spares,
# formatted on the host with `remap create`. The failing segments
# (4 KiB blocks) sit where mke2fs / mkfs.xfs of this size put metadata:
#   ext4: 73-76 inode table (root's inodes), 2121 root directory block, 65600-65615 journal
#   xfs:  16-23 the root inode chunk (the root directory lives in its inode), 65560-65575 log
# and one more under file data, a 64-block run: where the allocator puts a file's data
# differs between kernels and between runs (per-CPU preallocation, the group scan), so
# the write step writes the file "frun" on the healthy device, asks FIEMAP (filefrag) where its
# 64 blocks went, reloads the main table with an error segment there, and then rewrites
# the file in place: every block of it fails on main and is moved. The host hands that
# segment to the verify step on the kernel command line (remap.fsdata_<fs>=first-last).
# The tools are called by path: busybox's applets of the same names come first on PATH.
# Output as test.sh: RESULT/FAIL/PLAN/SUMMARY; "FSSEG <fs> <first> <last>" for the host,
# which checks that `remap dump` lists remaps in every segment and nowhere else.

SEGS_ext4="73-76 2121-2121 65600-65615"
SEGS_xfs="16-23 65560-65575"
BACKING_ext4=${BACKING_ext4:-/dev/vdg} SPARE_ext4=${SPARE_ext4:-/dev/vdh}
BACKING_xfs=${BACKING_xfs:-/dev/vdi} SPARE_xfs=${SPARE_xfs:-/dev/vdj}
FS_FRONTEND=${FS_FRONTEND:-dm}
FS_BLOCKS=131072

# The main device's table: linear over the backing, error over each segment.
fs_table() { # backing "first-last ..."
  pos=0
  for seg in $(for seg in $2; do echo "$seg"; done | sort -n); do
    first=${seg%-*} last=${seg#*-}
    [ "$first" -gt "$pos" ] && echo "$((pos * 8)) $(((first - pos) * 8)) linear $1 $((pos * 8))"
    echo "$((first * 8)) $(((last - first + 1) * 8)) error"
    pos=$((last + 1))
  done
  echo "$((pos * 8)) $(((FS_BLOCKS - pos) * 8)) linear $1 $((pos * 8))"
}

fs_up() { # fs
  eval backing=\$BACKING_$1 spare=\$SPARE_$1 segs=\"\$SEGS_$1 \$DATASEG_$1\"
  fs_table "$backing" "$segs" | dmsetup create --noudevsync "m$1" && dmsetup mknodes "m$1" ||
    return 1
  if [ "$FS_FRONTEND" = ublk ]; then
    ublk_up "$1" "/dev/mapper/m$1" "$spare"
  else
    remap activate "r$1" "/dev/mapper/m$1" "$spare" >/dev/null
  fi
}

# `remap attach` in the background; the device it prints goes to /tmp/ublk-FS.dev.
ublk_up() { # fs main spare
  rm -f "/tmp/ublk-$1.out" "/tmp/ublk-$1.dev"
  remap attach "$2" "$3" --json --control "/tmp/ublk-$1.ctl" >"/tmp/ublk-$1.out" 2>"/tmp/ublk-$1.err" &
  echo $! >"/tmp/ublk-$1.pid"
  i=0
  while [ ! -s "/tmp/ublk-$1.out" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
  d=$(sed -n '1s/.*"device":"\([^"]*\)".*/\1/p' "/tmp/ublk-$1.out")
  [ -n "$d" ] || { cat "/tmp/ublk-$1.err"; return 1; }
  i=0
  while [ ! -b "$d" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  echo "$d" >"/tmp/ublk-$1.dev"
  [ -b "$d" ]
}

# The remap device of a filesystem pair.
rdev() { # fs
  if [ "$FS_FRONTEND" = ublk ]; then cat "/tmp/ublk-$1.dev"; else echo "/dev/mapper/r$1"; fi
}

frontend_ready() {
  if [ "$FS_FRONTEND" = ublk ]; then test -c /dev/ublk-control; else insmod /lib/modules/dm_remap.ko; fi
}

has_remaps() { # fs: the device reports remaps
  if [ "$FS_FRONTEND" = ublk ]; then
    n=$(remap status --control "/tmp/ublk-$1.ctl" --json | grep -o '"remapped": *[0-9]*' | head -n1 | grep -o '[0-9]*$')
  else
    n=$(dmsetup status "r$1" | awk '{print $11}')
  fi
  [ "${n:-0}" -gt 0 ]
}

fs_down() { # fs: deactivate or detach (the daemon drains, flushes, checkpoints, exits 0)
  if [ "$FS_FRONTEND" = ublk ]; then
    remap detach "$(rdev "$1")" >/dev/null && wait "$(cat "/tmp/ublk-$1.pid")"
  else
    remap deactivate "r$1"
  fi
}

mkfs_of() { # fs
  case $1 in
    ext4) /sbin/mke2fs -q -t ext4 "$(rdev "$1")" ;;
    xfs) /sbin/mkfs.xfs -q -f "$(rdev "$1")" ;;
  esac
}

fsck_of() { # fs: read-only, forced; its output goes to the console
  case $1 in
    ext4) /sbin/e2fsck -fn "$(rdev "$1")" ;;
    xfs) /sbin/xfs_repair -n "$(rdev "$1")" ;;
  esac
}

# The 64-block run: "frun" written and synced on the healthy device, its extent found with
# FIEMAP, an error segment put under it (the main device reloaded), the file rewritten in
# place with other data and synced: the writes fail on main and the target moves each block.
data_run() { # fs
  d=/mnt/$1
  dd if=/data/pat4m of="$d/frun" bs=4096 count=64 conv=fsync 2>/dev/null || return 1
  # The first extent must hold logical blocks 0..63 (xfs may report more, allocated ahead).
  ext=$(/sbin/filefrag -v -b4096 "$d/frun" | awk '$1 ~ /^[0-9]+:$/ { gsub(/[.:]/, " "); print $2, $4, $6; exit }')
  set -- "$1" $ext
  [ "$#" = 4 ] && [ "$2" = 0 ] && [ "$4" -ge 64 ] || { echo "frun: no 64-block first extent: '$ext'"; return 1; }
  set -- "$1" "$3" $(($3 + 63))
  eval "DATASEG_$1=$2-$3"
  echo "FSSEG $1 $2 $3"
  eval backing=\$BACKING_$1 segs=\"\$SEGS_$1 \$DATASEG_$1\"
  fs_table "$backing" "$segs" | dmsetup reload "m$1" && dmsetup suspend "m$1" && dmsetup resume "m$1" || return 1
  dd if=/data/pat4m of="$d/frun" bs=4096 count=64 skip=256 conv=notrunc,fsync 2>/dev/null
}

# Files of 4 KiB to 1 MiB cut from pat4m, their checksums in MANIFEST beside them.
write_files() { # fs
  d=/mnt/$1
  i=0
  for kib in 4 8 12 60 64 68 128 252 256 260 512 1020 1024 36 100 4; do
    dd if=/data/pat4m of="$d/f$i" bs=1024 skip=$((i * 97)) count="$kib" 2>/dev/null || return 1
    i=$((i + 1))
  done
  mkdir -p "$d/dir" || return 1
  j=0
  while [ $j -lt 200 ]; do echo "file $j of a directory that spans blocks" >"$d/dir/entry-with-a-long-name-$j" || return 1; j=$((j + 1)); done
  (cd "$d" && md5sum f* dir/* >MANIFEST)
}

if [ "$fs_step" = write ]; then
  echo "PLAN phase=$phase checks=23"
  check frontend_ready frontend_ready
  for fs in ext4 xfs; do
    eval segs=\$SEGS_$fs
    for seg in $segs; do echo "FSSEG $fs ${seg%-*} ${seg#*-}"; done
    check "${fs}_activated" fs_up $fs
    stage "mkfs-$fs"
    check "${fs}_mkfs" mkfs_of $fs
    mkdir -p "/mnt/$fs"
    check "${fs}_mounted" mount "$(rdev $fs)" "/mnt/$fs"
    check "${fs}_data_run_moved" data_run $fs
    check "${fs}_files_written" write_files $fs
    check "${fs}_sync" sync
    check "${fs}_files_verify" sh -c "cd /mnt/$fs && md5sum -c -s MANIFEST"
    check "${fs}_unmounted" umount "/mnt/$fs"
    stage "fsck-$fs"
    check "${fs}_fsck_clean" fsck_of $fs
    check "${fs}_remounted" mount "$(rdev $fs)" "/mnt/$fs"
    check "${fs}_status_has_remaps" has_remaps $fs
  done
  summary
  # Writes in flight on both filesystems, then power off: no sync, no unmount.
  for fs in ext4 xfs; do
    (
      k=0
      while true; do
        dd if=/data/pat4m of="/mnt/$fs/inflight-$k" bs=64k count=16 2>/dev/null
        k=$((k + 1))
      done
    ) &
  done
  sleep 2
  echo "GUEST: power-off with writes in flight"
  poweroff -n -f
fi

if [ "$fs_step" = verify ]; then
  echo "PLAN phase=$phase checks=19"
  for fs in ext4 xfs; do
    eval "DATASEG_$fs=$(sed -n "s/.*remap\.fsdata_$fs=\([0-9]*-[0-9]*\).*/\1/p" /proc/cmdline)"
  done
  check frontend_ready frontend_ready
  for fs in ext4 xfs; do
    check "${fs}_activated_again" fs_up $fs
    # A mount replays the journal/log of the crash; fsck then judges the result.
    check "${fs}_log_replayed" sh -c "mkdir -p /mnt/$fs && mount $(rdev $fs) /mnt/$fs && umount /mnt/$fs"
    stage "fsck-$fs-after-poweroff"
    check "${fs}_fsck_clean_after_poweroff" fsck_of $fs
    check "${fs}_mounted_after_poweroff" mount "$(rdev $fs)" "/mnt/$fs"
    check "${fs}_synced_files_verify" sh -c "cd /mnt/$fs && md5sum -c -s MANIFEST"
    expect "${fs}_all_files_listed" 217 "$(wc -l <"/mnt/$fs/MANIFEST")"
    check "${fs}_unmounted" umount "/mnt/$fs"
    check "${fs}_deactivated" fs_down $fs
    check "${fs}_main_removed" dmsetup remove --noudevsync "m$fs"
  done
  summary
fi
