#!/bin/sh
# The boot path, run inside the systemd guest (root made by mkroot.sh + bootroot.sh) by
# remap-boot-check.service once boot is done, through test.sh (phases 8 and 9).
#
#   phase 8   first boot: with no manual step, systemd's remap-generator turned
#             /etc/remaptab into remap-activate@data.service, which brought up
#             /dev/mapper/data (the module loaded by modprobe from /lib/modules/*/updates),
#             and /etc/fstab mounted it on /mnt/data (after systemd-fsck); the enabled
#             remap-serve@served.service (Type=notify: active once it is ready) exported
#             the second pair, nbd@nbd0 connected the kernel's client to it (/etc/nbdtab),
#             and fstab mounted /dev/nbd0 on /mnt/served. Files with known checksums are
#             written on both, over a 64-block run the main disks fail (qemu's blkdebug:
#             the disks themselves fail), synced and verified; the remaps show in the
#             status of both. Then a clean `systemctl poweroff` (ExecStop: deactivate,
#             nbd-client -d, SIGTERM to remap serve).
#   phase 9   the same with the files already there: everything came up again, every file
#             verifies, the remaps were kept. Clean poweroff.
#
# Disks (by id, set by the host): virtio-remap-main / virtio-remap-spare, the pair of
# /etc/remaptab (the spare named by UUID=), and virtio-remap-smain / virtio-remap-sspare,
# the pair of /etc/remap/serve/served.conf. Both mains hold an ext4 made on the host.
# Output as test.sh; "BOOTREMAPS <pair> <n>" for the host, which checks with `remap dump`.

SERVE_CONTROL=/run/remap/served/control

# The number of remapped blocks of each pair, from device-mapper's status and from the
# server's control socket.
remaps_data() { dmsetup status data | awk '{print $11}'; }
remaps_served() {
  remap status --control "$SERVE_CONTROL" --json |
    sed -n 's/^ *"remapped": *\([0-9]*\),*$/\1/p' | head -n1
}
mounted_from() { # mountpoint device
  [ "$(findmnt -n -o SOURCE "$1")" = "$2" ]
}
active() { # unit
  [ "$(systemctl is-active "$1")" = active ]
}
verify() { # dir
  (cd "$1" && md5sum --status -c MANIFEST)
}
has_remaps() { # pair
  count=$(remaps_"$1")
  [ -n "$count" ] && [ "$count" -gt 0 ]
}
no_failed_units() {
  failed=$(systemctl list-units --failed --plain --no-legend)
  [ -z "$failed" ] || { echo "failed units: $failed"; return 1; }
}

if [ "$phase" = 8 ] || [ "$phase" = 9 ]; then
  if [ "$phase" = 8 ]; then echo "PLAN phase=8 checks=24"; else echo "PLAN phase=9 checks=18"; fi
  check generator_wrote_unit test -f /run/systemd/generator/remap-activate@data.service
  check activate_unit_active active remap-activate@data.service
  check module_from_updates sh -c "modinfo -n dm_remap | grep -q /updates/"
  check module_loaded sh -c "grep -q '^dm_remap ' /proc/modules"
  check mapper_node test -b /dev/mapper/data
  check target_is_remap sh -c "dmsetup table data | grep -q ' dm-remap-v4 '"
  check data_mounted mounted_from /mnt/data /dev/mapper/data
  check boot_fsck_ran sh -c "systemctl show -p ActiveState systemd-fsck@dev-mapper-data.service | grep -q =active"
  check serve_unit_active active remap-serve@served.service
  check nbd_unit_active active nbd@nbd0.service
  check served_mounted mounted_from /mnt/served /dev/nbd0
  if [ "$phase" = 8 ]; then
    stage files-data
    check data_files_written write_files data
    stage files-served
    check served_files_written write_files served
    check sync sync
    check data_files_verify verify /mnt/data
    check served_files_verify verify /mnt/served
    # Through the page cache, the writes above reached the disks at the sync: the failing
    # run was written, so the blocks moved.
    check data_remapped has_remaps data
    check served_remapped has_remaps served
    check data_reads_back sh -c "echo 3 > /proc/sys/vm/drop_caches && (cd /mnt/data && md5sum --status -c MANIFEST)"
    check served_reads_back sh -c "(cd /mnt/served && md5sum --status -c MANIFEST)"
    n_data=$(remaps_data)
    n_served=$(remaps_served)
    check remaps_recorded sh -c "echo $n_data >/mnt/data/REMAPS && echo $n_served >/mnt/served/REMAPS && sync"
    expect data_manifest_complete 216 "$(wc -l </mnt/data/MANIFEST)"
    expect served_manifest_complete 216 "$(wc -l </mnt/served/MANIFEST)"
  else
    check data_files_verify verify /mnt/data
    check served_files_verify verify /mnt/served
    expect data_manifest_complete 216 "$(wc -l </mnt/data/MANIFEST)"
    expect served_manifest_complete 216 "$(wc -l </mnt/served/MANIFEST)"
    n_data=$(remaps_data)
    n_served=$(remaps_served)
    # The remaps of boot 8 were loaded from the spares: as many as there were then.
    expect data_remaps_kept "$(cat /mnt/data/REMAPS)" "$n_data"
    expect served_remaps_kept "$(cat /mnt/served/REMAPS)" "$n_served"
  fi
  check no_failed_units no_failed_units
  echo "BOOTREMAPS data $n_data"
  echo "BOOTREMAPS served $n_served"
  summary
fi
